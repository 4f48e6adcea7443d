"""Plots from measured runs: training-loss curves from the trainer's log.jsonl files, and scores per task
group from the results tables (training.eval.tables). PNGs are written atomically."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from hear_mamclap import atomic


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def read_log(log: Path) -> list[dict]:
    """The records of a log.jsonl by step. A resumed run re-logs steps after its checkpoint: the last record
    of a step wins. Lines that are not JSON objects with an integer step (a line cut short when a run was
    killed) are skipped and counted on stderr."""
    by_step: dict[int, dict] = {}
    bad = 0
    for line in Path(log).read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            bad += 1
            continue
        by_step[rec["step"]] = rec
    if bad:
        print(f"{log}: skipped {bad} line(s) that are not JSON records with a step", file=sys.stderr)
    return [by_step[s] for s in sorted(by_step)]


def _save_and_close(plt, fig, out_png: Path) -> Path:
    """Lay out, write atomically, and free the figure whatever happens."""
    fig.tight_layout()
    try:
        with atomic.file(out_png) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        return Path(out_png)
    finally:
        plt.close(fig)


def plot_losses(logs: list[Path], out_png: Path, title: str = "", labels: list[str] | None = None) -> Path:
    """One panel per loss term (total, recon, distill_visible, distill_masked, cls), one line per run."""
    plt = _pyplot()
    runs = [read_log(log) for log in logs]
    terms = [t for t in ("loss", "recon", "distill_visible", "distill_masked", "cls")
             if any(t in r for run in runs for r in run)]
    if not terms:
        raise ValueError(f"no loss values in {', '.join(map(str, logs))}: expected log.jsonl lines "
                         '{"step": ..., "loss": ...}')
    fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 3), squeeze=False)
    # One colour per run in every panel (a panel's own colour cycle would restart where some runs lack the
    # term, and the single legend would then name the wrong runs).
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(runs) > len(cycle):
        cycle = [plt.get_cmap("tab20")(i) for i in range(20)]
    for ax, term in zip(axes[0], terms):
        for i, run in enumerate(runs):
            points = [(r["step"], r[term]) for r in run if isinstance(r.get(term), (int, float))]
            if points:
                ax.plot(*zip(*points), color=cycle[i % len(cycle)],
                        label=(labels[i] if labels else Path(logs[i]).parent.name))
        ax.set_title(term)
        ax.set_xlabel("step")
    # Every run has a total loss, so the first panel's lines name them all; the legend sits beside the panels.
    handles, names = axes[0][0].get_legend_handles_labels()
    axes[0][-1].legend(handles, names, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    if title:
        fig.suptitle(title)
    return _save_and_close(plt, fig, out_png)


def plot_group_scores(summaries: dict[str, list[dict]], groups: list[str], out_png: Path,
                      title: str = "") -> Path:
    """A grouped bar chart: task groups on the x axis, one bar per model at its mean score, error bars the
    half-width of the 95% interval over seeds. summaries[model][i] is training.eval.results.summarize's dict for
    groups[i]; a group without a mean gets no bar."""
    plt = _pyplot()
    models = list(summaries)
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(5.0, 2.5 + 0.35 * len(models) * len(groups)), 3.4))
    for i, model in enumerate(models):
        means = [s["mean"] if s["mean"] is not None else math.nan for s in summaries[model]]
        errors = [s["ci95"] if s["ci95"] is not None else math.nan for s in summaries[model]]  # nan: no bar
        xs = [g + (i - (len(models) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, means, width, yerr=errors, capsize=3, label=model)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("mean primary score")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        ax.set_title(title)
    return _save_and_close(plt, fig, out_png)
