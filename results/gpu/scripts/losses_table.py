"""The markdown table of pretraining runs' final losses beside their trivial floors.

    python results/gpu/scripts/losses_table.py RUNS_DIR FLOORS_JSON [TEACHER_FLOORS_JSON] > losses.md

RUNS_DIR holds <run>/log.jsonl (`mamclap pretrain` logs; a folder whose log has no reconstruction or
classification term, such as the CLAP teacher's, is not a pretraining run and is left out); FLOORS_JSON is
`mamclap diagnose floors` output on the same cache, TEACHER_FLOORS_JSON the same on the CLAP runs' teacher
cache (its distillation floors: training/eval/floors.py). Per run: the last logged step, and each loss as the
mean of its last 10 logged values (the logged values are per-step means, noisy at batch 256). Every number is
read from the files.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

LAST = 10
TERMS = ("recon", "cls", "distill_visible", "distill_masked")


def main(runs_dir: str, floors_path: str, teacher_floors_path: str | None = None) -> None:
    floors = json.loads(Path(floors_path).read_text())
    teacher = json.loads(Path(teacher_floors_path).read_text()) if teacher_floors_path else {}
    line = (f"Floors: reconstruction {floors['recon_zero']:.3f} (predict 0), {floors['recon_position_mean']:.3f} "
            f"(mean patch per position), {floors['recon_row_mean']:.3f} (mean patch per row); classification "
            f"{floors['cls_prior']:.3f} (label priors)")
    if "distill_position_mean" in teacher:
        line += (f"; distillation {teacher['distill_zero']:.3f} (predict 0), {teacher['distill_position_mean']:.3f} "
                 f"(mean teacher target per position); for reference, {teacher['distill_clip_mean']:.3f} with "
                 "each clip's own mean target at every position")
    print(line + ".\n")
    logs = [(log, [json.loads(line) for line in log.read_text().splitlines() if line.strip()])
            for log in sorted(Path(runs_dir).glob("*/log.jsonl"))]
    distilling = bool(teacher) or any("distill_masked" in r for _, rows in logs for r in rows[-1:])
    cols = ["run", "last step", "recon (last 10 logs)", "below best recon floor", "cls (last 10 logs)",
            "below prior BCE"]
    if distilling:
        cols += ["distill visible", "distill masked", "below position-mean floor (masked)"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    best = min(floors["recon_zero"], floors["recon_position_mean"], floors["recon_row_mean"])
    for log, rows in logs:
        tail = rows[-LAST:]
        value = {t: float(np.mean([r[t] for r in tail])) if tail and all(t in r for r in tail) else None
                 for t in TERMS}
        if value["recon"] is None and value["cls"] is None:
            continue
        recon, cls = value["recon"], value["cls"]
        cells = [log.parent.name, str(rows[-1]["step"]),
                 "-" if recon is None else f"{recon:.3f}", "-" if recon is None else f"{best - recon:.3f}",
                 "-" if cls is None else f"{cls:.3f}",
                 "-" if cls is None else f"{100 * (1 - cls / floors['cls_prior']):.0f} %"]
        if distilling:
            masked = value["distill_masked"]
            cells += ["-" if value["distill_visible"] is None else f"{value['distill_visible']:.3f}",
                      "-" if masked is None else f"{masked:.3f}",
                      "-" if masked is None or "distill_position_mean" not in teacher
                      else f"{teacher['distill_position_mean'] - masked:.3f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    main(*sys.argv[1:])
