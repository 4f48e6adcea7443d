"""Run heareval 2021.1.3's two steps from this project, each in a work directory of our choosing.

    embed(module, model, tasks_dir, out_dir)    python -m heareval.embeddings.runner, unmodified
    predict(embedding_task_dirs)                heareval.predictions.runner after compat.prepare_heareval()

heareval writes ``embeddings/`` and Lightning's ``logs/`` relative to the current directory, so each step runs
as a subprocess with cwd set to a work directory (by default the parent of the output), never the repository.
The predictions step needs run-time fixes for torch >= 2.6 and Lightning 1.9.5 (hear_mamclap/compat.py), so
its subprocess is ``python -c`` that applies them and then calls heareval's click command.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from hear_mamclap import compat

# The subprocess for predictions: apply our compatibility fixes, then hand argv to heareval's click command.
PREDICT_LAUNCHER = (
    "import sys\n"
    "from hear_mamclap.compat import prepare_heareval\n"
    "prepare_heareval()\n"
    "from heareval.predictions.runner import runner\n"
    "sys.argv[0] = 'heareval.predictions.runner'\n"
    "runner()\n"
)


def _env() -> dict[str, str]:
    """The current environment plus compat's run-time settings, with the repository importable."""
    env = dict(os.environ)
    env.update(compat.runtime_env())
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
    return env


def _run(args: list[str], cwd: Path, what: str) -> None:
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(args, cwd=cwd, env=_env(), text=True, capture_output=True)
    if proc.returncode != 0:
        tail = (proc.stdout[-3000:] + "\n" + proc.stderr[-6000:]).strip()
        raise RuntimeError(f"{what} failed with exit status {proc.returncode} (cwd {cwd}):\n{tail}")


def task_folders(tasks_dir: Path) -> list[Path]:
    """The HEAR task folders of tasks_dir (those holding task_metadata.json), sorted by name."""
    return sorted(p for p in Path(tasks_dir).iterdir() if (p / "task_metadata.json").is_file())


def embed(module: str, model: str | Path | None, tasks_dir: Path, out_dir: Path, tasks: list[str] | None = None,
          model_options: dict | None = None) -> Path:
    """Embed the tasks of tasks_dir (all, or the folder names in tasks) with a HEAR module; returns
    out_dir/<module name>, which holds one folder of embeddings per task.

    heareval takes every entry of --tasks-dir for a task, so it is given a view of symlinks to the task
    folders only (a manifest or stage file beside them would otherwise stop it).
    model: the weights file passed as --model, or None for modules that need none.
    """
    tasks_dir, out_dir = Path(tasks_dir).resolve(), Path(out_dir).resolve()
    if not tasks_dir.is_dir():
        raise ValueError(f"tasks_dir {tasks_dir} is not a folder of HEAR tasks")
    folders = task_folders(tasks_dir)
    if tasks is not None:
        missing = sorted(set(tasks) - {p.name for p in folders})
        if missing:
            raise ValueError(f"no task folders {missing} in {tasks_dir}")
        folders = [p for p in folders if p.name in tasks]
    if not folders:
        raise ValueError(f"{tasks_dir} holds no task folder (a folder with task_metadata.json)")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tasks-view-", dir=out_dir.parent) as view:
        for p in folders:
            (Path(view) / p.name).symlink_to(p, target_is_directory=True)
        args = [sys.executable, "-m", "heareval.embeddings.runner", module, "--tasks-dir", view,
                "--embeddings-dir", str(out_dir)]
        if model is not None:
            args += ["--model", str(Path(model).resolve())]
        if model_options:
            args += ["--model-options", json.dumps(model_options)]
        _run(args, out_dir.parent, f"heareval embeddings of {module} on {tasks_dir}")
    return out_dir / module if not model_options else next(out_dir.glob(f"{module}-*"))


def predict(embedding_task_dirs: list[Path], grid: str = "faster", grid_points: int = 8,
            work_dir: Path | None = None, gpus: list[int] | None = None, deterministic: bool = True) -> dict:
    """Train heareval's downstream predictors on embedded tasks and return {task dir: test scores}.

    Scores are heareval's own test.predicted-scores.json of each task (for k-fold tasks, per fold and
    "aggregated_scores"). A task that already has prediction-done.json is not retrained.
    """
    if grid not in ("default", "fast", "faster"):
        raise ValueError(f"grid must be default, fast or faster, got {grid!r}")
    dirs = [Path(d).resolve() for d in embedding_task_dirs]
    for d in dirs:
        if not (d / "task_metadata.json").is_file():
            raise ValueError(f"{d} is not an embedded task (no task_metadata.json): run embed() first")
    args = [sys.executable, "-c", PREDICT_LAUNCHER, *map(str, dirs), "--grid", grid,
            "--grid-points", str(grid_points), "--deterministic", str(deterministic)]
    if gpus is not None:
        args += ["--gpus", json.dumps(gpus)]
    cwd = Path(work_dir).resolve() if work_dir is not None else dirs[0].parent
    _run(args, cwd, "heareval predictions")
    return {str(d): json.loads((d / "test.predicted-scores.json").read_text()) for d in dirs}
