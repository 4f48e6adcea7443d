"""Plots from measured runs: training-loss curves from the trainer's log.jsonl files."""
from __future__ import annotations

import json
from pathlib import Path


def plot_losses(logs: list[Path], out_png: Path, title: str = "", labels: list[str] | None = None) -> Path:
    """One panel per loss term (total, recon, distill_visible, distill_masked, cls), one line per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for log in logs:
        by_step: dict[int, dict] = {}
        for line in Path(log).read_text().splitlines():
            rec = json.loads(line)
            by_step[rec["step"]] = rec  # a resumed run re-logs steps after its checkpoint: keep the last
        runs.append([by_step[s] for s in sorted(by_step)])
    terms = [t for t in ("loss", "recon", "distill_visible", "distill_masked", "cls")
             if any(t in r for run in runs for r in run)]
    fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 3), squeeze=False)
    for ax, term in zip(axes[0], terms):
        for i, run in enumerate(runs):
            points = [(r["step"], r[term]) for r in run if term in r]
            if points:
                ax.plot(*zip(*points), label=(labels[i] if labels else Path(logs[i]).parent.name))
        ax.set_title(term)
        ax.set_xlabel("step")
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
