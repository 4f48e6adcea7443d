"""The README's Python quickstart runs as written (on a tiny export in place of the trained one)."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_quickstart_runs(tmp_path, monkeypatch):
    section = README.read_text().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 5  # "in five lines"
    MAMCLAPEncoder(EncoderConfig.preset("small", depth=1)).save_pretrained(tmp_path / "runs/supmam_clap/encoder")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the project's own README
    assert scope["clip"].shape == (2, 384 * 8)
    assert scope["frames"].shape == (2, 63, 384 * 8)
    assert torch.isfinite(scope["frames"]).all()


def test_hear_and_superb_commands_use_the_release_folder():
    from training.release import MODELS_DIR, RELEASE_NAME

    text = README.read_text()
    release = f"{MODELS_DIR}/{RELEASE_NAME}"
    for title in ("## HEAR 2021", "## SUPERB (s3prl)"):
        commands = re.search(r"```bash\n(.*?)```", text.split(title, 1)[1], flags=re.S).group(1)
        models = re.findall(r"(?:--model|-k) (\S+)", commands)
        assert models and all(m == release for m in models), (title, models)
