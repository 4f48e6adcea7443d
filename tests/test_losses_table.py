"""results/gpu/scripts/losses_table.py: the final losses beside their floors, read from the files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "results" / "gpu" / "scripts" / "losses_table.py"


def test_distilling_runs_get_their_floors_and_the_teachers_own_log_is_left_out(tmp_path):
    runs = tmp_path / "runs"
    logs = {"supmam-s0": {"recon": 0.5, "cls": 0.045},
            "mam_clap-s0": {"recon": 0.6, "distill_visible": 0.2, "distill_masked": 0.3},
            "clap_teacher": {"loss": 1.5}}  # the CLAP teacher's training log: not a pretraining run
    for name, terms in logs.items():
        (runs / name).mkdir(parents=True)
        (runs / name / "log.jsonl").write_text("".join(json.dumps({"step": s, **terms}) + "\n" for s in (10, 20)))
    floors = tmp_path / "floors.json"
    floors.write_text(json.dumps({"recon_zero": 0.8, "recon_position_mean": 0.75, "recon_row_mean": 0.76,
                                  "cls_prior": 0.09}))
    teacher = tmp_path / "floors_teacher.json"
    teacher.write_text(json.dumps({"distill_zero": 1.0, "distill_position_mean": 0.7, "distill_clip_mean": 0.4}))
    out = subprocess.run([sys.executable, str(SCRIPT), str(runs), str(floors), str(teacher)], text=True,
                         capture_output=True, check=True).stdout
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in out.splitlines() if line.startswith("| ")}
    assert "clap_teacher" not in rows and "0.700 (mean teacher target per position)" in out
    assert rows["mam_clap-s0"][2:4] == ["0.600", "0.150"] and rows["mam_clap-s0"][-3:] == ["0.200", "0.300", "0.400 |"]
    assert rows["supmam-s0"][4:6] == ["0.045", "50 %"] and rows["supmam-s0"][-1] == "- |"
