"""Plots from measured runs: training-loss curves from the trainer's log.jsonl files, and the leaderboard's
scores (training.eval.tables). One colour per pretraining variant (tints of it for other configurations of
the variant), one line style or marker per seed; baselines grey and hatched. Written atomically, as PNG
(for READMEs) and, for the scores, also as SVG and PDF (for papers)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hear_mamclap import atomic

if TYPE_CHECKING:
    from training.eval.tables import Table

# Okabe-Ito colours, told apart with the common colour-vision deficiencies, one per variant.
VARIANT_COLOURS = {"mam": "#0072B2", "mam_clap": "#E69F00", "supmam": "#009E73", "supmam_clap": "#CC79A7"}
BASELINE_COLOUR = "#a0a0a0"
SEED_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
SEED_LINESTYLES = ("-", "--", ":", "-.")
DPI = 110


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


# No creation dates in SVG and PDF, so that an unchanged plot rewrites the same bytes.
_METADATA = {"png": None, "svg": {"Date": None}, "pdf": {"CreationDate": None}}


def _save_and_close(plt, fig, out: Path, formats: tuple[str, ...] = ("png",), **layout) -> list[Path]:
    """Lay out, write out.<format> for each format atomically, and free the figure whatever happens."""
    fig.tight_layout(**layout)
    written = []
    try:
        for fmt in formats:
            path = Path(out).with_suffix(f".{fmt}")
            # SVG text stays text (small, editable); a fixed salt gives its element ids without randomness
            with atomic.file(path) as tmp, plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "mamclap"}):
                fig.savefig(tmp, dpi=DPI, format=fmt, metadata=_METADATA[fmt])
            written.append(path)
        return written
    finally:
        plt.close(fig)


def _tint(colour: str, amount: float) -> tuple[float, float, float]:
    """colour mixed with white (amount 0: the colour itself)."""
    from matplotlib.colors import to_rgb
    return tuple(c + (1 - c) * amount for c in to_rgb(colour))


def _tints(variants: list[str | None], configs: list[str]) -> list:
    """A colour per item: its variant's, lighter for each further configuration of that variant; None for an
    item of no known variant."""
    seen: dict[str, list[str]] = {}
    for variant, config in zip(variants, configs):
        if variant in VARIANT_COLOURS and config not in seen.setdefault(variant, []):
            seen[variant].append(config)
    colours = []
    for variant, config in zip(variants, configs):
        if variant not in VARIANT_COLOURS:
            colours.append(None)
            continue
        k, n = seen[variant].index(config), len(seen[variant])
        colours.append(_tint(VARIANT_COLOURS[variant], 0.55 * k / max(1, n - 1)))
    return colours


def _run_identity(log: Path) -> tuple[str | None, int | None]:
    """(variant, seed) of the pretraining run that wrote log, from the metadata of its encoder export
    (`encoder/encoder.json` in a run folder, or an `encoder.json` beside the log); (None, None) without one."""
    for manifest in (log.parent / "encoder" / "encoder.json", log.parent / "encoder.json"):
        try:
            metadata = json.loads(manifest.read_text())["metadata"]
            variant, seed = metadata.get("variant"), metadata.get("seed")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        return variant, seed if isinstance(seed, int) else None
    return None, None


def plot_losses(logs: list[Path], out_png: Path, title: str = "", labels: list[str] | None = None) -> Path:
    """One panel per loss term (total, recon, distill_visible, distill_masked, cls), one line per run: its
    variant's colour (read from the run's encoder export; a tint per configuration) and a line style per
    seed."""
    plt = _pyplot()
    runs = [read_log(log) for log in logs]
    names = [labels[i] if labels else Path(log).parent.name for i, log in enumerate(logs)]
    terms = [t for t in ("loss", "recon", "distill_visible", "distill_masked", "cls")
             if any(t in r for run in runs for r in run)]
    if not terms:
        raise ValueError(f"no loss values in {', '.join(map(str, logs))}: expected log.jsonl lines "
                         '{"step": ..., "loss": ...}')
    fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 3), squeeze=False)
    # One colour per run in every panel (a panel's own colour cycle would restart where some runs lack the
    # term, and the single legend would then name the wrong runs). A run of no known variant takes the next
    # colour of the cycle.
    identities = [_run_identity(Path(log)) for log in logs]
    seeds = sorted({seed for _, seed in identities if seed is not None})
    configs = [name.removesuffix(f"-s{seed}") if seed is not None else name
               for name, (_, seed) in zip(names, identities)]
    colours = _tints([variant for variant, _ in identities], configs)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(runs) > len(cycle):
        cycle = [plt.get_cmap("tab20")(i) for i in range(20)]
    colours = [c if c is not None else cycle[i % len(cycle)] for i, c in enumerate(colours)]
    styles = [SEED_LINESTYLES[seeds.index(seed) % len(SEED_LINESTYLES)] if seed is not None else "-"
              for _, seed in identities]
    for ax, term in zip(axes[0], terms):
        for i, run in enumerate(runs):
            points = [(r["step"], r[term]) for r in run if isinstance(r.get(term), (int, float))]
            if points:
                ax.plot(*zip(*points), color=colours[i], linestyle=styles[i], linewidth=1.2, label=names[i])
        ax.set_title(term)
        ax.set_xlabel("step")
    # Every run has a total loss, so the first panel's lines name them all; the legend sits beside the panels.
    handles, names = axes[0][0].get_legend_handles_labels()
    axes[0][-1].legend(handles, names, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    if title:
        fig.suptitle(title)
    return _save_and_close(plt, fig, out_png)[0]


def score_panels(table: Table) -> list[int]:
    """The columns plot_scores draws a panel for: the HEAR group means, the overall mean, then SUPERB's tasks."""
    means = [i for i, m in enumerate(table.measures) if m is not None and m.harness == "hear" and not m.task]
    return means + [i for i, m in enumerate(table.measures) if m is not None and m.harness == "superb"]


def _panel_title(measure) -> str:
    if measure.harness == "superb":
        return f"{measure.name} ({measure.metric})"
    return f"HEAR {measure.group}" + (" (mean of groups)" if measure.group == "overall" else " mean")


def plot_scores(table: Table, out: Path, title: str = "") -> list[Path]:
    """The leaderboard at a glance: a panel per score_panels column, a horizontal bar per leaderboard row
    at its mean, the 95 % t interval as a whisker and each seed's score as a marker (one shape per seed);
    the value at the end of each bar; baselines grey and hatched below a rule, the best baseline also as a
    dotted line across the panel. Writes out.png, out.svg and out.pdf; returns their paths."""
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    panels = score_panels(table)
    if not panels:
        raise ValueError("no HEAR group mean or SUPERB column to plot")
    names = [row[0] for row in table.rows]
    baseline = [kind == "baseline" for kind in table.kinds]
    variants = [next((r.pretraining.get("variant") for r in runs if r.pretraining), None) for runs in table.row_runs]
    colours = [BASELINE_COLOUR if b else c for b, c in
               zip(baseline, _tints([None if b else v for b, v in zip(baseline, variants)], names))]
    colours = [c if c is not None else BASELINE_COLOUR for c in colours]
    seeds = sorted({p["seed"] for values in table.values for i in panels if values[i]
                    and len(values[i].get("points", [])) > 1 for p in values[i]["points"] if p["seed"] is not None})
    n = len(names)
    fig, axes = plt.subplots(1, len(panels), sharey=True, squeeze=False,
                             figsize=(1.2 + max(len(x) for x in names) * 0.06 + 2.05 * len(panels), 1.5 + 0.27 * n))
    for ax, col in zip(axes[0], panels):
        tops = [0.0]
        for y, values in enumerate(table.values):
            v = values[col]
            if v is None or v["mean"] is None:
                ax.text(0, y, " —", va="center", fontsize=7, color="#777")
                continue
            ax.barh(y, v["mean"], height=0.72, color=colours[y], hatch="////" if baseline[y] else None,
                    edgecolor="#6b6b6b" if baseline[y] else "none", linewidth=0.4 if baseline[y] else 0)
            top = v["mean"] + (v["ci95"] or 0)
            if v["ci95"] is not None:
                ax.errorbar(v["mean"], y, xerr=v["ci95"], fmt="none", ecolor="#222", elinewidth=0.9, capsize=2.2)
            points = v.get("points", [])
            if len(points) > 1:
                for p in points:
                    marker = SEED_MARKERS[seeds.index(p["seed"]) % len(SEED_MARKERS)] if p["seed"] in seeds else "o"
                    ax.scatter(p["score"], y, marker=marker, s=13, facecolor="white", edgecolor="#222",
                               linewidths=0.7, zorder=3)
                top = max([top] + [p["score"] for p in points])
            tops.append(top)
            ax.text(top, y, f" {v['mean']:.3f}", va="center", fontsize=7,
                    color="#444" if baseline[y] else "#111")
        base_means = [values[col]["mean"] for y, values in enumerate(table.values)
                      if baseline[y] and values[col] and values[col]["mean"] is not None]
        if base_means:
            ax.axvline(max(base_means), color="#777", linestyle=":", linewidth=1, zorder=0)
        if any(baseline) and not all(baseline):
            ax.axhline(baseline.index(True) - 0.5, color="#999", linewidth=0.8)
        ax.set_xlim(0, max(tops) * 1.3 or 1)
        ax.set_title(_panel_title(table.measures[col]), fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[0][0].set_yticks(range(n), names, fontsize=8)
    axes[0][0].set_ylim(n - 0.5, -0.5)  # the leaderboard's order, top down
    handles = [Patch(color=VARIANT_COLOURS[v], label=v) for v in VARIANT_COLOURS if v in variants]
    if any(baseline):
        handles.append(Patch(facecolor=BASELINE_COLOUR, edgecolor="#6b6b6b", hatch="////", label="baseline"))
        handles.append(Line2D([], [], color="#777", linestyle=":", linewidth=1, label="best baseline"))
    handles += [Line2D([], [], marker=SEED_MARKERS[i % len(SEED_MARKERS)], linestyle="none", markerfacecolor="white",
                       markeredgecolor="#222", label=f"seed {s}") for i, s in enumerate(seeds)]
    handles.append(Line2D([], [], color="#222", linewidth=0.9, marker="|", label="95% t interval"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7.5, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    legend_height = 0.3 / fig.get_figheight()  # inches kept free for the legend row
    return _save_and_close(plt, fig, out, ("png", "svg", "pdf"), rect=(0, legend_height, 1, 1))
