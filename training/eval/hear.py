"""Run heareval 2021.1.3's two steps from this project, each in a work directory of our choosing.

    embed(module, model, tasks_dir, out_dir)    heareval.embeddings.runner, unmodified, after
                                                compat.prepare_heareval_embeddings()
    predict(embedding_task_dirs)                heareval.predictions.runner after compat.prepare_heareval()

heareval writes ``embeddings/`` and Lightning's ``logs/`` relative to the current directory, so each step runs
as a subprocess with cwd set to a work directory (by default the parent of the output), never the repository.
The predictions step needs run-time fixes for torch >= 2.6 and Lightning 1.9.5 (training/compat.py), so
its subprocess is ``python -c`` that applies them and then calls heareval's click command.

On top of the two steps, `evaluate` runs both over a suite (all tasks in one heareval run; when that fails,
the unfinished tasks one by one, so a failing task is recorded as an error, not the end of the run), reads
heareval's test scores and writes one results JSON (training/eval/results.py), an entry per task variant:
hearpreprocess's folders <task_name>-<version>-<mode> hold speech_commands 5h and full side by side, each a
task of its own. Command line:

    mamclap hear eval --module hear_mamclap --model CKPT --tasks-dir DIR --name NAME --out results/NAME.json
                      [--readout choice.json]
    mamclap hear readout --module hear_mamclap --model CKPT --tasks-dir DIR --out choice.json
    mamclap hear predict EMB_DIR... [--grid faster|default]
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from training import compat
from training.eval import intervals, results

# The subprocess for predictions: apply our compatibility fixes, then hand argv to heareval's click command.
PREDICT_LAUNCHER = (
    "import sys\n"
    "from training.compat import prepare_heareval\n"
    "prepare_heareval()\n"
    "from heareval.predictions.runner import runner\n"
    "sys.argv[0] = 'heareval.predictions.runner'\n"
    "runner()\n"
)


# The subprocess for embeddings: heareval's runner module as `python -m` would run it, after the fix that
# lets it run a torch module without TensorFlow or with a CPU-only TensorFlow on a GPU machine. The first
# argument says whether the module may need TensorFlow: this package's own modules (torch) do not, and skip
# its import (compat.prepare_heareval_embeddings); any other module gets TensorFlow where it is installed.
EMBED_LAUNCHER = (
    "import runpy, sys\n"
    "from training.compat import prepare_heareval_embeddings\n"
    "prepare_heareval_embeddings(tensorflow=sys.argv.pop(1) == 'tf')\n"
    "sys.argv[0] = 'heareval.embeddings.runner'\n"
    "runpy.run_module('heareval.embeddings.runner', run_name='__main__', alter_sys=True)\n"
)


def _env() -> dict[str, str]:
    """The current environment plus compat's run-time settings. The subprocesses import hear_mamclap and
    training as installed (pip install, editable or not) or from PYTHONPATH, never through this file's path."""
    env = dict(os.environ)
    env.update(compat.runtime_env())
    return env


def _run(args: list[str], cwd: Path, what: str, threads: int | None = None) -> None:
    cwd.mkdir(parents=True, exist_ok=True)
    env = _env()
    if threads is not None:  # several heareval processes side by side: share the cores instead of each taking all
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run(args, cwd=cwd, env=env, text=True, capture_output=True)
    if proc.returncode != 0:
        tail = (proc.stdout[-3000:] + "\n" + proc.stderr[-6000:]).strip()
        # The exception that ended the subprocess: the last "SomeError: message" line of its traceback.
        errors = [line for line in proc.stderr.splitlines() if re.match(r"^[\w.]+(Error|Exception)\b", line)]
        cause = f": {errors[-1]}" if errors else ""
        raise RuntimeError(f"{what} failed with exit status {proc.returncode}{cause} (cwd {cwd})\n{tail}")


def is_torch_module(module: str) -> bool:
    """A HEAR module of this package (hear_mamclap and its baselines): torch, never TensorFlow."""
    return module == "hear_mamclap" or module.startswith("hear_mamclap.")


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
        args = [sys.executable, "-c", EMBED_LAUNCHER, "torch" if is_torch_module(module) else "tf", module,
                "--tasks-dir", view,
                "--embeddings-dir", str(out_dir)]
        if model is not None:
            args += ["--model", str(Path(model).resolve())]
        if model_options:
            args += ["--model-options", json.dumps(model_options)]
        _run(args, out_dir.parent, f"heareval embeddings of {module} on {tasks_dir}")
    return out_dir / embedding_folder_name(module, model_options)


def embedding_folder_name(module: str, model_options: dict | None = None) -> str:
    """The folder heareval's embeddings runner writes a module's tasks to: the module name, plus
    "-key=value" per model option, each part slugified as heareval does."""
    from slugify import slugify  # python-slugify, a run-time need of heareval

    options = "".join(f"-{slugify(k)}={slugify(str(v))}" for k, v in (model_options or {}).items())
    return module + options


def predict(embedding_task_dirs: list[Path], grid: str = "faster", grid_points: int = 8,
            work_dir: Path | None = None, gpus: list[int] | None = None, deterministic: bool = True,
            threads: int | None = None) -> dict:
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
    _run(args, cwd, "heareval predictions", threads=threads)
    return {str(d): json.loads((d / "test.predicted-scores.json").read_text()) for d in dirs}


# ------------------------------------------------------------------------------------------- test scores


# heareval's split modes (heareval.predictions.task_predictions.get_splits_from_metadata): trainvaltest trains on
# "train", selects on "valid" and tests on "test"; the two k-fold modes (folds given by the dataset, or made by
# hearpreprocess) test on every fold in turn, each with its own model.
SPLIT_MODES = ("trainvaltest", "presplit_kfold", "new_split_kfold")


def scored_splits(metadata: dict) -> list[str]:
    """The splits heareval scores a task on, in its order: ["test"], or every fold of metadata["splits"]
    sorted. These are the keys of its test.predicted-scores.json."""
    mode = metadata.get("split_mode")
    if mode == "trainvaltest":
        return ["test"]
    if mode in ("presplit_kfold", "new_split_kfold"):
        return sorted(metadata["splits"])
    raise ValueError(f"split_mode {mode!r} is not one of heareval's {SPLIT_MODES}")


def check_metadata(folder: Path, metadata: dict) -> None:
    """Refuse, before any work, a task_metadata.json that heareval would fail on only after embedding."""
    def bad(what: str) -> ValueError:
        return ValueError(f"{folder / 'task_metadata.json'}: {what}")

    if not isinstance(metadata.get("task_name"), str) or not metadata["task_name"]:
        raise bad("'task_name' must be a non-empty string")
    evaluation = metadata.get("evaluation")
    if not isinstance(evaluation, list) or not evaluation or not all(isinstance(e, str) for e in evaluation):
        raise bad("'evaluation' must be a non-empty list of heareval score names (the first selects models)")
    if metadata.get("split_mode") not in SPLIT_MODES:
        raise bad(f"'split_mode' must be one of heareval's {SPLIT_MODES}, got {metadata.get('split_mode')!r}")
    splits = metadata.get("splits")
    if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
        raise bad("'splits' must be a list of split names (heareval embeds each <split>.json)")
    if metadata["split_mode"] == "trainvaltest" and not {"train", "valid", "test"} <= set(splits):
        raise bad(f"a trainvaltest task needs the splits train, valid and test, got {splits}")
    if metadata["split_mode"] != "trainvaltest" and len(set(splits)) < 3:
        raise bad(f"a k-fold task needs at least 3 folds (heareval tests on one, selects on the next and trains on "
                  f"the others), got {splits}")


def task_variant(folder: Path, metadata: dict) -> tuple[str, str | None]:
    """(task, variant) of a task folder: task_metadata's task_name and mode (hearpreprocess names the folder
    <task_name>-<version>-<mode>); the mode from the folder's name when the metadata has none."""
    variant = metadata.get("mode")
    if not isinstance(variant, str) or not variant:
        variant = results.parse_folder_name(Path(folder).name)[1]
    return metadata["task_name"], variant


def task_key(folder: Path, metadata: dict) -> str:
    """The results key of a task folder: its task and variant (results.task_key), not its version."""
    return results.task_key(*task_variant(folder, metadata))


def n_test_clips(task_dir: Path, metadata: dict) -> int:
    """Clips scored at test time: those of the test split, or of every fold for k-fold tasks (each fold is
    the test set of one model). Read from the <split>.json files heareval copies beside the embeddings."""
    return sum(len(json.loads((Path(task_dir) / f"{split}.json").read_text())) for split in scored_splits(metadata))


def scores_entry(task_dir: Path, scores: dict, seed: int | None = None, extra: dict | None = None,
                 group: str | None = None) -> dict:
    """A results task entry from heareval's test.predicted-scores.json of an embedded task, in group (by
    default the task's known group, else results.OTHER).

    Primary metric: the first of task_metadata's "evaluation" (heareval selects models by it). Scores are
    heareval's test_* values without the prefix: the test split's, or for k-fold tasks heareval's own mean
    over folds, "aggregated_scores" (each fold's scores and the standard deviations go to extra). "ci95": the
    primary score's 95 % interval from the test predictions heareval leaves beside it (training.eval.intervals)."""
    task_dir = Path(task_dir)
    metadata = json.loads((task_dir / "task_metadata.json").read_text())
    metric = metadata["evaluation"][0]
    splits = scored_splits(metadata)
    missing = [s for s in splits if s not in scores]
    if missing:
        raise ValueError(f"{task_dir}: test.predicted-scores.json has no scores for {missing} (split_mode "
                         f"{metadata['split_mode']!r} tests on {splits}; keys {sorted(scores)})")
    if len(splits) > 1:  # k-fold: {"fold00": {...}, ..., "aggregated_scores": {name_mean, name_std}}
        if "aggregated_scores" not in scores:
            raise ValueError(f"{task_dir}: test.predicted-scores.json of a k-fold task has no 'aggregated_scores'")
        agg = scores["aggregated_scores"]
        values = {k[len("test_"):-len("_mean")]: v for k, v in agg.items()
                  if k.startswith("test_") and k.endswith("_mean")}
        folds = {s: scores[s] for s in splits}
        more = {"std_over_folds": {k[len("test_"):-len("_std")]: v for k, v in agg.items()
                                   if k.startswith("test_") and k.endswith("_std")},
                "folds": {f: {k[len("test_"):]: v for k, v in s.items() if k.startswith("test_")}
                          for f, s in folds.items()},
                "validation_score": [s.get("validation_score") for s in folds.values()],
                "epoch": [s.get("epoch") for s in folds.values()]}
    else:
        test = scores[splits[0]]
        values = {k[len("test_"):]: v for k, v in test.items() if k.startswith("test_")}
        more = {"validation_score": test.get("validation_score"), "epoch": test.get("epoch")}
    # "score" repeats the primary metric and "loss" is the predictor's training loss, not a task metric.
    more["loss"] = values.pop("loss", None)
    values.pop("score", None)
    if metric not in values:
        raise ValueError(f"{task_dir}: no test score for the primary metric {metric!r} (have {sorted(values)})")
    more.update(hparams=scores.get("hparams"), postprocessing=scores.get("postprocessing"))
    more.update(extra or {})
    task, variant = task_variant(task_dir, metadata)
    group = group or results.task_group(task, metadata, default=results.OTHER)
    n_test = n_test_clips(task_dir, metadata)
    ci95 = None if values[metric] is None else intervals.task_interval(task_dir, metadata, splits, values[metric],
                                                                       n_test)
    return results.task_entry(group, metric, values[metric], values, n_test, seed=seed, extra=more, variant=variant,
                              ci95=ci95)


# ---------------------------------------------------------------------------------------------- evaluate


def _stamp_or_refuse(work_dir: Path, stamp: dict) -> None:
    """heareval skips tasks already embedded or predicted, so a work dir must belong to one model and one
    set of options: write run.json the first time, refuse a later run that differs."""
    path = work_dir / "run.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != stamp:
            raise ValueError(f"{work_dir} holds embeddings of another run ({old}); this run is {stamp}. Remove it "
                             "or choose another --work-dir")
        return
    results.write_json_atomic(stamp, path)


def _batch_then_singly(items: list[str], run: Callable[[list[str]], object], done: Callable[[str], bool],
                       what: str, log: Callable[[str], None],
                       started: Callable[[str], bool] | None = None) -> dict[str, str]:
    """run(items) in one go (one heareval start-up); if that fails, run([item]) for each item not yet done(),
    so each error lands on the task that caused it. Returns {item: error message} of the items that failed.

    started(item), when given, tells whether an item has been begun (heareval makes a task's folder first):
    when the failed run began exactly one unfinished item, the error is that item's and the other unfinished
    items run again as one batch, since a heareval start-up costs more than a tiny task."""
    errors, pending = {}, list(items)
    while True:
        begun_before = {i for i in pending if started is not None and started(i)}
        try:
            run(pending)
            return errors
        except Exception as err:  # find out which task failed: the others must still be scored
            failed = [i for i in pending if not done(i) and i not in begun_before
                      and started is not None and started(i)]
            if len(failed) != 1:
                log(f"{what} failed for the batch ({str(err).splitlines()[0]}); retrying unfinished tasks one by one")
                break
            errors[failed[0]] = f"{what}: {type(err).__name__}: {err}"
            pending = [i for i in pending if not done(i) and i != failed[0]]
            if not pending:
                return errors
            log(f"{what} failed on {failed[0]}; running the other {len(pending)} unfinished tasks again")
    for item in pending:
        if done(item):
            continue
        try:
            run([item])
        except Exception as err:
            errors[item] = f"{what}: {type(err).__name__}: {err}"
    return errors


def _predict_in_parallel(names: list[str], emb_dir: dict[str, Path], jobs: int, **kwargs) -> dict[str, str]:
    """predict() for each task (embedded in emb_dir[task]) in its own heareval process, `jobs` at a time;
    {task: error} of the failed."""
    # The cores this process may use (OMP_NUM_THREADS when a scheduler set it), shared by the processes.
    cores = int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1
    threads = max(1, cores // min(jobs, len(names)))

    def one(name: str) -> str | None:
        if (emb_dir[name] / "prediction-done.json").exists():
            return None
        try:
            predict([emb_dir[name]], threads=threads, **kwargs)
            return None
        except Exception as err:  # this task fails alone
            return f"predictions: {type(err).__name__}: {err}"

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # threads only wait on the subprocesses
        outcomes = list(pool.map(one, names))
    return {name: err for name, err in zip(names, outcomes) if err is not None}


def _seconds(path: Path, key: str) -> float | None:
    """A duration heareval records in one of its JSON files (profile.embeddings.json, prediction-done.json)."""
    try:
        return round(float(json.loads(path.read_text())[key]), 2)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _matching(folders: list[Path], name: str) -> list[Path]:
    """The folders a name given on the command line means: the folder of that name, else those whose results
    key (speech_commands-5h) is name, else those of task name (every variant)."""
    def aliases(p: Path) -> tuple[str, str, str]:
        task, variant = results.parse_folder_name(p.name)
        return p.name, results.task_key(task, variant), task

    for level in range(3):
        matches = [p for p in folders if aliases(p)[level] == name]
        if matches:
            return matches
    return []


def _select(folders: list[Path], names: list[str], tasks_dir: Path) -> list[Path]:
    """The folders named in names, each by its folder name, its results key or its task name when that
    names one folder only."""
    chosen = []
    for name in names:
        matches = _matching(folders, name)
        if not matches:
            raise ValueError(f"no task folders {[name]} in {tasks_dir} (have {[p.name for p in folders]})")
        if len(matches) > 1:
            raise ValueError(f"{name!r} names several task folders {[p.name for p in matches]}: give one of them")
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return chosen


def _groups(folders: list[Path], metadata: dict[str, dict], overrides: dict[str, str],
            log: Callable[[str], None]) -> dict[str, str]:
    """{folder name: group}: from overrides ({folder, key or task name: group}, --group), else the task
    metadata's "group", else results.TASK_GROUPS, else results.OTHER, said in one line: heareval needs no
    group, and the tables keep such a task out of every group mean."""
    groups = {}
    for name, group in overrides.items():
        if group not in results.ALL_GROUPS:
            raise ValueError(f"--group {name}={group}: the group must be one of {results.ALL_GROUPS}")
        matches = _matching(folders, name)
        if not matches:
            raise ValueError(f"--group {name}={group}: no task folder of that name (have {[p.name for p in folders]})")
        groups.update({p.name: group for p in matches})
    for f in folders:
        if f.name in groups:
            continue
        meta = metadata[f.name]
        groups[f.name] = results.task_group(meta["task_name"], meta, default=results.OTHER)
        if meta.get("group") is None and meta["task_name"] not in results.TASK_GROUPS:
            log(f"{task_key(f, meta)}: no group known (none in its task_metadata.json or results.TASK_GROUPS): "
                f"scored as '{results.OTHER}', outside the group means; --group {meta['task_name']}=GROUP places it")
    return groups


def evaluate(module: str, model: str | Path | None, tasks_dir: Path, work_dir: Path, name: str,
             tasks: list[str] | None = None, model_options: dict | None = None, grid: str = "faster",
             grid_points: int = 8, seed: int | None = None, gpus: list[int] | None = None,
             command: str | None = None, log: Callable[[str], None] = print, jobs: int = 1,
             groups: dict[str, str] | None = None, readout: dict[str, dict] | None = None) -> dict:
    """Embeddings and predictions for the tasks of tasks_dir (or those named in tasks), and a results document
    (training.eval.results, harness "hear") with every task's test scores.

    Each step runs heareval once for all tasks; when that fails, the unfinished tasks are run one by one, so a
    task that fails gets an error entry and the others are still scored. Work (embeddings, Lightning logs)
    stays in work_dir, stamped with the module, model, options and grid: a second run there reuses the
    finished steps, and a run of anything else there is refused.

    jobs > 1 trains the predictors of up to `jobs` tasks at once (one heareval process per task, the cores
    shared between them); the predictions step is most of the time of an evaluation, and the scores are the
    same as with jobs=1.

    groups: {task: group} for tasks whose group is not known or should be another (task: a folder name,
    results key or task name); a task of no known group is scored in results.OTHER.

    readout: {results key: load_model options} chosen per task on validation data (training.eval.readout,
    load_choice), each merged over model_options for its task; tasks of the same options share a heareval
    embeddings run. Every task's options are recorded in its entry's extra["model_options"]."""
    tasks_dir, work_dir = Path(tasks_dir).resolve(), Path(work_dir).resolve()
    folders = task_folders(tasks_dir) if tasks_dir.is_dir() else []
    if tasks is not None:
        folders = _select(folders, tasks, tasks_dir)
    if not folders:
        raise ValueError(f"{tasks_dir} holds no HEAR task folder (a folder with task_metadata.json)")
    if grid_points < 1:
        raise ValueError(f"grid_points must be >= 1, got {grid_points}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    # Checked before any work: metadata heareval cannot use, two folders of one task variant or a bad --group
    # would only fail after the embeddings, or when the results are written, hours later.
    metadata = {f.name: json.loads((f / "task_metadata.json").read_text()) for f in folders}
    for f in folders:
        check_metadata(f, metadata[f.name])
    keys = {f.name: task_key(f, metadata[f.name]) for f in folders}
    for key in sorted(set(keys.values())):
        same = sorted(name for name, k in keys.items() if k == key)
        if len(same) > 1:
            raise ValueError(f"{tasks_dir}: folders {same} hold the same task variant {key!r} (other versions?): "
                             "keep one, or choose with --tasks")
    group_of = _groups(folders, metadata, groups or {}, log)
    model_path = str(Path(model).resolve()) if model is not None else None
    # Each task's load_model options: --model-options, with the readout chosen for the task over them.
    options_of = {f.name: dict(model_options or {}) for f in folders}
    if readout is not None:
        missing = sorted(keys[f.name] for f in folders if keys[f.name] not in readout)
        if missing:
            raise ValueError(f"the readout file has no choice for the tasks {missing}: run `mamclap hear readout` "
                             "on them too")
        for f in folders:
            options_of[f.name].update(readout[keys[f.name]])
    stamp = {"module": module, "model": model_path, "model_options": model_options or {}, "grid": grid,
             "grid_points": grid_points}
    if readout is not None:
        stamp["readout"] = options_of
    work_dir.mkdir(parents=True, exist_ok=True)
    _stamp_or_refuse(work_dir, stamp)
    emb_root = work_dir / "embeddings"
    emb_dir = {n: emb_root / embedding_folder_name(module, o) / n for n, o in options_of.items()}

    names = [f.name for f in folders]
    errors: dict[str, str] = {}
    by_options: dict[str, list[str]] = {}  # one heareval embeddings run per set of options
    for n in names:
        by_options.setdefault(json.dumps(options_of[n], sort_keys=True), []).append(n)
    for same in by_options.values():
        options = options_of[same[0]]
        log(f"embedding {len(same)} tasks with {module}" + (f" {json.dumps(options)}" if options else "") + " ...")
        errors |= _batch_then_singly(
            same, lambda ns, options=options: embed(module, model, tasks_dir, emb_root, tasks=ns,
                                                    model_options=options),
            lambda n: (emb_dir[n] / ".done.embeddings").exists(), "embeddings", log,
            started=lambda n: emb_dir[n].is_dir())
    embedded = [n for n in names if n not in errors]
    if embedded:
        log(f"training heareval's predictors on {len(embedded)} tasks (grid {grid}, {grid_points} points"
            + (f", {min(jobs, len(embedded))} at a time" if jobs > 1 else "") + ") ...")
        if jobs > 1 and len(embedded) > 1:
            errors |= _predict_in_parallel(embedded, emb_dir, jobs, grid=grid, grid_points=grid_points,
                                           work_dir=work_dir, gpus=gpus)
        else:
            errors |= _batch_then_singly(
                embedded, lambda ns: predict([emb_dir[n] for n in ns], grid=grid, grid_points=grid_points,
                                             work_dir=work_dir, gpus=gpus),
                lambda n: (emb_dir[n] / "prediction-done.json").exists(), "predictions", log)

    entries = {}
    for i, folder in enumerate(folders, 1):
        meta, key = metadata[folder.name], keys[folder.name]
        variant, metric = task_variant(folder, meta)[1], meta["evaluation"][0]
        task_dir = emb_dir[folder.name]
        times = {"task_folder": folder.name, "model_options": options_of[folder.name],
                 **({"readout": readout[key]} if readout is not None else {}),
                 "embedding_seconds": _seconds(task_dir / "profile.embeddings.json", "time_elapsed"),
                 "prediction_seconds": _seconds(task_dir / "prediction-done.json", "time")}
        group = group_of[folder.name]
        if folder.name in errors:
            entry = results.error_entry(group, metric, errors[folder.name], seed=seed, extra=times, variant=variant)
        else:
            try:
                scores = json.loads((task_dir / "test.predicted-scores.json").read_text())
                entry = scores_entry(task_dir, scores, seed=seed, group=group,
                                     extra={**times, "grid": grid, "grid_points": grid_points})
            except Exception as err:  # an unreadable score file fails this task only
                entry = results.error_entry(group, metric, err, seed=seed, extra=times, variant=variant)
        if "error" in entry:
            log(f"[{i}/{len(folders)}] {key}: FAILED: {entry['error'].splitlines()[0]}")
        else:
            log(f"[{i}/{len(folders)}] {key}: {metric} = {entry['score']:.4f} (n_test {entry['n_test']}, "
                f"embeddings {times['embedding_seconds']} s, predictions {times['prediction_seconds']} s)")
        entries[key] = entry
    settings = {"module": module, "model_options": model_options or {}, "tasks_dir": str(tasks_dir),
                "work_dir": str(work_dir), "grid": grid, "grid_points": grid_points}
    if groups:
        settings["groups"] = dict(groups)
    if readout is not None:
        settings["readout"] = {keys[f.name]: readout[keys[f.name]] for f in folders}
    return results.new_results(name, "hear", entries, checkpoint=model_path, command=command, settings=settings,
                               pretraining=_provenance(model))


def _provenance(model: str | Path | None) -> dict:
    """The pretraining provenance of a mamclap export or checkpoint; {} for anything else (baselines)."""
    if model is None:
        return {}
    from hear_mamclap.checkpoint import read_metadata

    try:
        return read_metadata(model)
    except (OSError, ValueError, RuntimeError):  # not a mamclap checkpoint (another module's weights)
        return {}


def _seed_of_export(model: str | Path | None) -> int | None:
    """The pretraining seed a mamclap export or checkpoint records, if any."""
    seed = _provenance(model).get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


# ---------------------------------------------------------------------------------------------- commands


def _embedding_task_dirs(paths: list[Path]) -> list[Path]:
    """Embedded task folders from the arguments: each is one, or a module folder holding several, of which
    those whose embeddings finished (heareval's .done.embeddings) are taken and the others named."""
    dirs = []
    for p in paths:
        if (p / "task_metadata.json").is_file():
            dirs.append(p)
        elif p.is_dir() and task_folders(p):
            for d in task_folders(p):
                if (d / ".done.embeddings").exists():
                    dirs.append(d)
                else:
                    print(f"skipping {d.name}: its embeddings did not finish", file=sys.stderr, flush=True)
        else:
            raise ValueError(f"{p} is neither an embedded task folder (with task_metadata.json) nor a folder of them")
    if not dirs:
        raise ValueError(f"no finished embeddings in {[str(p) for p in paths]}")
    return dirs


def _predict_command(args) -> int:
    try:
        dirs = _embedding_task_dirs(args.emb_dirs)
    except ValueError as err:
        raise SystemExit(f"mamclap hear predict: {err}") from None
    failed = 0
    for i, d in enumerate(dirs, 1):
        start = time.perf_counter()
        try:
            scores = predict([d], grid=args.grid, grid_points=args.grid_points, work_dir=args.work_dir or Path.cwd())
            entry = scores_entry(d, scores[str(d.resolve())])
            print(f"[{i}/{len(dirs)}] {d.name}: {entry['metric']} = {entry['score']:.4f} "
                  f"({time.perf_counter() - start:.0f} s)  {json.dumps(entry['scores'])}", flush=True)
        except Exception as err:  # report and go on with the other tasks
            failed += 1
            print(f"[{i}/{len(dirs)}] {d.name}: FAILED: {err}", file=sys.stderr, flush=True)
    return 1 if failed else 0


def parse_model_options(text: str) -> dict:
    """--model-options: a JSON object of load_model keyword arguments, or one line saying what is wrong."""
    try:
        options = json.loads(text)
    except json.JSONDecodeError as err:
        raise SystemExit(f"--model-options must be a JSON object, got {text!r} ({err})")
    if not isinstance(options, dict):
        raise SystemExit(f"--model-options must be a JSON object, got {text!r}")
    return options


def _eval_command(args) -> int:
    options = parse_model_options(args.model_options)
    if args.model is not None and not args.model.exists():
        raise SystemExit(f"--model {args.model} does not exist")
    groups = {}
    for item in args.group or []:
        task, sep, group = item.partition("=")
        if not sep or not task or group not in results.ALL_GROUPS:
            raise SystemExit(f"--group takes TASK=GROUP, GROUP one of {', '.join(results.ALL_GROUPS)}; got {item!r}")
        groups[task] = group
    out = args.out or Path("results") / f"{args.name}.json"
    work_dir = args.work_dir or Path("runs") / "hear" / args.name
    seed = args.seed if args.seed is not None else _seed_of_export(args.model)
    readout = None
    if args.readout is not None:
        from training.eval.readout import load_choice
        try:
            readout = load_choice(args.readout, args.module, args.model, options)
        except ValueError as err:
            raise SystemExit(f"mamclap hear eval: {err}") from None
    # The command as it ran, every setting explicit (defaults included), so the results file says how to redo it.
    command = ["mamclap", "hear", "eval", "--module", args.module, "--tasks-dir", str(args.tasks_dir),
               "--name", args.name, "--out", str(out), "--work-dir", str(work_dir), "--grid", args.grid,
               "--grid-points", str(args.grid_points)]
    command += ["--model", str(args.model)] if args.model is not None else []
    command += ["--model-options", args.model_options] if options else []
    command += ["--tasks", *args.tasks] if args.tasks else []
    command += ["--seed", str(seed)] if seed is not None else []
    command += ["--jobs", str(args.jobs)] if args.jobs != 1 else []
    command += ["--group", *(f"{t}={g}" for t, g in groups.items())] if groups else []
    command += ["--readout", str(args.readout)] if args.readout is not None else []
    try:
        doc = evaluate(args.module, args.model, args.tasks_dir, work_dir, args.name, tasks=args.tasks,
                       model_options=options, grid=args.grid, grid_points=args.grid_points, seed=seed,
                       command=shlex.join(command), log=lambda line: print(line, flush=True), jobs=args.jobs,
                       groups=groups, readout=readout)
    except ValueError as err:  # bad arguments, found before any work: a message, not a traceback
        raise SystemExit(f"mamclap hear eval: {err}") from None
    results.save_results(doc, out)
    failed = [t for t, e in doc["tasks"].items() if "error" in e]
    print(f"wrote {out}: {len(doc['tasks']) - len(failed)} tasks scored"
          + (f", {len(failed)} failed: {failed}" if failed else ""))
    overall = None if failed else intervals.mean_of_group_means(
        [(e["group"], e["score"], (e.get("ci95") or {}).get("half_width")) for e in doc["tasks"].values()],
        results.GROUPS)
    if overall is not None:
        print(f"overall (mean of the group means) = {overall[0]:.4f}"
              + (f" ± {overall[1]:.4f} (95 %, tasks' intervals combined as independent)" if overall[1] is not None
                 else ""))
    return 1 if failed else 0


def register(subparsers) -> None:
    from training.args import existing_dir, existing_path, out_dir, out_file, positive_int, seed
    p = subparsers.add_parser("hear", help="HEAR evaluation: heareval embeddings, predictions and a results JSON",
                              description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="hear_command", required=True, metavar="STEP")

    s = sub.add_parser("predict", help="heareval's predictions runner with this project's compatibility fixes")
    s.add_argument("emb_dirs", nargs="+", type=existing_dir, metavar="EMB_DIR",
                   help="embedded task folders (embeddings/MODULE/TASK), or a module folder holding them")
    s.add_argument("--grid", choices=["default", "fast", "faster"], default="default",
                   help="heareval's hyperparameter grid (default: heareval's own default)")
    s.add_argument("--grid-points", type=positive_int, default=8, help="grid points tried per task")
    s.add_argument("--work-dir", type=out_dir, default=None, help="where Lightning writes logs/ (default: here)")
    s.set_defaults(func=_predict_command)

    from training.eval import readout
    readout.register(sub)

    s = sub.add_parser("eval", help="embeddings + predictions for every task, test scores into one results JSON")
    s.add_argument("--module", default="hear_mamclap",
                   help="HEAR module: hear_mamclap, hear_mamclap.baselines.logmel, .random_init, .crepe, .clap")
    s.add_argument("--model", type=existing_path, default=None, help="weights passed to load_model (none for baselines)")
    s.add_argument("--model-options", default="{}", help="JSON object of load_model keyword arguments")
    s.add_argument("--tasks-dir", type=existing_dir, required=True, help="folder of HEAR task folders")
    s.add_argument("--tasks", nargs="+", default=None, help="only these tasks (names or folder names)")
    s.add_argument("--name", required=True, help="model name recorded in the results JSON")
    s.add_argument("--out", type=out_file, default=None, help="results JSON (default results/NAME.json)")
    s.add_argument("--work-dir", type=out_dir, default=None, help="embeddings and logs (default runs/hear/NAME)")
    s.add_argument("--grid", choices=["default", "fast", "faster"], default="default",
                   help="heareval's hyperparameter grid (faster for quick runs)")
    s.add_argument("--grid-points", type=positive_int, default=8, help="grid points tried per task")
    s.add_argument("--seed", type=seed, default=None,
                   help="seed of the model's pretraining run, for means over seeds (default: the export's metadata)")
    s.add_argument("--jobs", type=positive_int, default=1,
                   help="tasks whose predictors train at once, one heareval process each (same scores; default 1)")
    s.add_argument("--group", nargs="+", default=None, metavar="TASK=GROUP",
                   help=f"the group of a task ({', '.join(results.ALL_GROUPS)}); a task of no known group is "
                        f"scored as {results.OTHER!r}, outside the group means")
    s.add_argument("--readout", type=existing_path, default=None, metavar="CHOICE_JSON",
                   help="per-task readout options chosen on validation data by `mamclap hear readout` (merged "
                        "over --model-options)")
    s.set_defaults(func=_eval_command)
