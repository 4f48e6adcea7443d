"""The markdown table of pretraining runs' final losses beside their trivial floors.

    python results/gpu/scripts/losses_table.py RUNS_DIR FLOORS_JSON > losses.md

RUNS_DIR holds <run>/log.jsonl (`mamclap pretrain` logs); FLOORS_JSON is `mamclap diagnose floors` output on
the same cache. Per run: the last logged step, and each loss as the mean of its last 10 logged values (the
logged values are per-step means, noisy at batch 256). Every number is read from the files.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

LAST = 10


def main(runs_dir: str, floors_path: str) -> None:
    floors = json.loads(Path(floors_path).read_text())
    print(f"Floors: reconstruction {floors['recon_zero']:.3f} (predict 0), {floors['recon_position_mean']:.3f} "
          f"(mean patch per position), {floors['recon_row_mean']:.3f} (mean patch per row); classification "
          f"{floors['cls_prior']:.3f} (label priors).\n")
    print("| run | last step | recon (last 10 logs) | below best recon floor | cls (last 10 logs) | below prior BCE |")
    print("|---|---|---|---|---|---|")
    best = min(floors["recon_zero"], floors["recon_position_mean"], floors["recon_row_mean"])
    for log in sorted(Path(runs_dir).glob("*/log.jsonl")):
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        tail = rows[-LAST:]
        recon = float(np.mean([r["recon"] for r in tail])) if all("recon" in r for r in tail) else None
        cls = float(np.mean([r["cls"] for r in tail])) if all("cls" in r for r in tail) else None
        cells = [log.parent.name, str(rows[-1]["step"]),
                 "-" if recon is None else f"{recon:.3f}", "-" if recon is None else f"{best - recon:.3f}",
                 "-" if cls is None else f"{cls:.3f}",
                 "-" if cls is None else f"{100 * (1 - cls / floors['cls_prior']):.0f} %"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: " + __doc__.splitlines()[2].strip())
    main(sys.argv[1], sys.argv[2])
