"""The markdown table of `mamclap hear probe` results (the readout's ridge probes scored on test): one row per
model, seeds (names ending in -sN) gathered into one row.

    python results/gpu/scripts/probe_table.py DIR_OF_PROBE_JSONS > table.md

Per task: the mean test score over seeds. "mean": the mean over the scene tasks; its 95 % interval is a t
interval over the seeds' means for n >= 2 seeds, else the one run's interval from the per-task bootstrap ones
(training.eval.intervals.combine_half_widths). Every number is read from the files; nothing is typed in.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
from scipy import stats


def family(name: str) -> tuple[str, int | None]:
    m = re.fullmatch(r"(.+)-s(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else (name, None)


def main(folder: str) -> None:
    docs = {p.stem: json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))}
    rows: dict[str, list[dict]] = {}
    for name, doc in docs.items():
        rows.setdefault(family(name)[0], []).append(doc)
    tasks = sorted({t for doc in docs.values() for t in doc["tasks"]})
    short = [t.replace("mini_", "") for t in tasks]
    print("| model | n | " + " | ".join(short) + " | mean (95 % CI) |")
    print("|---|---|" + "---|" * len(tasks) + "---|")
    for fam, runs in rows.items():
        cells = []
        for t in tasks:
            vals = [r["tasks"][t]["score"] for r in runs if t in r["tasks"]]
            cells.append(f"{np.mean(vals):.3f}" if vals else "-")
        means = [r["mean"] for r in runs if r["mean"] is not None and set(r["tasks"]) == set(tasks)]
        if len(means) >= 2:
            half = stats.t.ppf(0.975, len(means) - 1) * np.std(means, ddof=1) / np.sqrt(len(means))
            mean = f"{np.mean(means):.3f} +- {half:.3f} (t, seeds)"
        elif means:
            one = next(r for r in runs if r["mean"] == means[0])
            mean = f"{means[0]:.3f} +- {one['mean_half_width']:.3f} (bootstrap)"
        else:
            mean = "-"
        print(f"| {fam} | {len(runs)} | " + " | ".join(cells) + f" | {mean} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.splitlines()[2].strip())
    main(sys.argv[1])
