"""One results JSON per model and harness run, shared by the HEAR and SUPERB harnesses and the tables.

    {"format": "mamclap-results", "version": 1,
     "model": "mam-clap-base", "checkpoint": "/path/to/export" | null,
     "harness": "hear" | "superb" | "finetune",
     "created": "2026-11-25T23:40:00+00:00", "command": "mamclap hear eval ...",
     "environment": {"python": ..., "torch": ..., ...}, "settings": {...} (optional: how the harness ran),
     "pretraining": {"variant": "mam_clap", "seed": 0, "pretrain_config": {...}, ...} (optional: the
                    checkpoint's provenance, hear_mamclap.checkpoint.read_metadata),
     "tasks": {"mini_esc": {"group": "environmental", "metric": "top1_acc", "score": 0.61,
                            "scores": {"top1_acc": 0.61, "mAP": 0.66}, "seed": 0, "n_test": 80,
                            "variant": "full", "extra": {...},
                            "ci95": {"method": "bootstrap", "low": 0.52, "high": 0.70, "half_width": 0.09, ...}},
               "speech_commands-5h": {..., "variant": "5h"},
               "mini_dcase": {..., "score": null, "error": "RuntimeError: ..."}}}

A task that failed keeps its entry with "score": null and an "error" message, so a long run reports what it
could. HEAR tasks come in variants (hearpreprocess's modes: speech_commands 5h and full, nsynth_pitch 5h and
50h), each a task of its own: the key is the task name for the full variant and `<task>-<variant>` for the
others (`task_key`), and "variant" (optional: files written before it, and SUPERB's, have none) says which.
"ci95" (optional, files written before it have none) is the 95 % interval of the test score from that one run
(training.eval.intervals: a bootstrap over test clips, or Wilson's for an accuracy); null when none is known.
`merge_results` gathers several such files of the same model (other seeds, other harnesses) into one
list of runs per task, which is what the tables need for a mean and a 95% confidence interval over seeds
(`summarize`).
"""
from __future__ import annotations

import datetime
import json
import math
import platform
import re
import shlex
import subprocess
import sys
import urllib.parse
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Iterable

from hear_mamclap import atomic

FORMAT = "mamclap-results"
VERSION = 1
MERGED_FORMAT = "mamclap-results-merged"
HARNESSES = ("hear", "superb", "finetune")
GROUPS = ("environmental", "music", "speech")  # the groups of the tables' means
OTHER = "other"  # a task of none of GROUPS (a new or secret HEAR task): scored and tabled, in no group mean
ALL_GROUPS = (*GROUPS, OTHER)
# hearpreprocess's modes, the last part of its folder names <task_name>-<version>-<mode>: "full" is all of a
# task's data, "5h"/"50h" capped training sets, "small" its test-sized sample.
FULL = "full"
MODES = (FULL, "5h", "50h", "small")

# Task -> group, for tasks whose metadata does not name one. Task names are given without the hearpreprocess
# folder suffix ("-v1.0-full"); the mini suite first, then the HEAR 2021 tasks, then SUPERB's.
TASK_GROUPS: dict[str, str] = {
    # mini HEAR suite (training/kit/hear_suite.py)
    "mini_speech_commands": "speech", "mini_speaker_id": "speech", "mini_language_id": "speech",
    "mini_nsynth_pitch": "music", "mini_instrument_family": "music", "mini_drum_stroke": "music",
    "mini_esc": "environmental", "mini_mixtures": "environmental", "mini_dcase": "environmental",
    # HEAR 2021 (hearpreprocess task names)
    "dcase2016_task2": "environmental", "esc50": "environmental", "fsd50k": "environmental",
    "gunshot_triangulation": "environmental", "tfds_crema_d": "speech", "libricount": "speech",
    "speech_commands": "speech", "vocal_imitation": "speech", "vox_lingua_top10": "speech",
    "tfds_gtzan": "music", "tfds_gtzan_music_speech": "music", "beijing_opera": "music",
    "mridangam_stroke": "music", "mridangam_tonic": "music", "nsynth_pitch": "music", "maestro": "music",
    # SUPERB (s3prl downstream names and the benchmark's abbreviations)
    "voxceleb1": "speech", "ks": "speech", "sid": "speech", "superb_ks": "speech", "superb_sid": "speech",
}

# Packages whose versions a results file records, when installed.
_PACKAGES = ("torch", "torchaudio", "numpy", "heareval", "pytorch-lightning", "s3prl", "scikit-learn")


class ResultsError(ValueError):
    """A results file or dict that does not follow the format above; the message says where and why."""


def parse_folder_name(name: str) -> tuple[str, str | None]:
    """(task, mode) of a hearpreprocess folder name <task_name>-<version>-<mode>, the version holding any
    number of hyphens (`beijing_opera-v1.0-hear2021-full` -> ("beijing_opera", "full")); (name, None) for
    other names. hearpreprocess's task names have no hyphen."""
    name = Path(name).name
    parts = name.split("-")
    if len(parts) >= 3 and parts[-1] in MODES and parts[0]:
        return parts[0], parts[-1]
    return name, None


def task_name(folder_or_task: str) -> str:
    """`mini_esc-v1.0-full` (a hearpreprocess folder name) -> `mini_esc`; other names unchanged."""
    return parse_folder_name(folder_or_task)[0]


def task_key(task: str, variant: str | None = None) -> str:
    """The results key of one variant of a task: the task name for the full variant (and for tasks without
    variants, as SUPERB's), `<task>-<variant>` for the others (`speech_commands-5h`, `nsynth_pitch-50h`)."""
    return task if variant in (None, FULL) else f"{task}-{variant}"


def key_parts(key: str, variant: str | None = None) -> tuple[str, str | None]:
    """(task, variant) of a results key and its entry's "variant". Entries without one were written before
    variants were recorded: their key is the task (the mini suite's, all full) or, in the oldest files, the
    task folder's name, whose mode is the variant."""
    if variant is None:
        return parse_folder_name(key)
    suffix = f"-{variant}"
    return (key[:-len(suffix)] if variant != FULL and key.endswith(suffix) else key), variant


def task_group(task: str, metadata: dict | None = None, default: str | None = None) -> str:
    """The group of a task: metadata["group"] when the task metadata has one, else TASK_GROUPS, else default
    (None: an error naming the ways to give one)."""
    if metadata is not None and metadata.get("group") is not None:
        group = metadata["group"]
    else:
        name = task_name(task)
        if name in TASK_GROUPS:
            group = TASK_GROUPS[name]
        elif default is not None:
            group = default
        else:
            raise ResultsError(f"no group known for task {name!r}: add it to training.eval.results.TASK_GROUPS or "
                               f"give its task_metadata.json a 'group' (one of {ALL_GROUPS})")
    if group not in ALL_GROUPS:
        raise ResultsError(f"task {task!r}: group must be one of {ALL_GROUPS}, got {group!r}")
    return group


def environment() -> dict[str, str]:
    """Versions of Python, the platform, the packages in _PACKAGES that are installed, and the git commit
    (source_commit) when there is one."""
    env = {"python": platform.python_version(), "platform": platform.platform()}
    for package in _PACKAGES:
        try:
            env[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            continue
    commit = source_commit()
    if commit is not None:
        env["git_commit"] = commit
    return env


def _git(folder: Path, *args: str) -> str | None:
    """`git -C folder ARGS` output, or None when git is missing or folder is not in a checkout."""
    try:
        proc = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _is_mamclap_checkout(folder: Path) -> bool:
    pyproject = folder / "pyproject.toml"
    return pyproject.is_file() and re.search(r'^name\s*=\s*"mamclap"', pyproject.read_text(), re.M) is not None


def _editable_source() -> Path | None:
    """The source folder of an editable install of mamclap (pip's direct_url.json), if that is how it is installed."""
    try:
        direct_url = importlib_metadata.distribution("mamclap").read_text("direct_url.json")
    except importlib_metadata.PackageNotFoundError:
        return None
    info = json.loads(direct_url) if direct_url else {}
    url = urllib.parse.urlparse(info.get("url", ""))
    if not info.get("dir_info", {}).get("editable") or url.scheme != "file":
        return None
    return Path(urllib.parse.unquote(url.path))


def source_commit(cwd: Path | None = None) -> str | None:
    """The git commit of this project's code: that of the current directory's checkout when it is a checkout of
    mamclap (tests and scripts run from one), else that of an editable install's source folder; None for a
    wheel install or a folder outside git (the package versions then identify the code)."""
    top = _git(Path.cwd() if cwd is None else cwd, "rev-parse", "--show-toplevel")
    folders = [Path(top)] if top is not None and _is_mamclap_checkout(Path(top)) else []
    editable = _editable_source()
    folders += [editable] if editable is not None else []
    for folder in folders:
        commit = _git(folder, "rev-parse", "HEAD")
        if commit is not None:
            return commit
    return None


def _finite_or_none(value: Any) -> float | None:
    """A JSON-safe score: NaN and infinities (heareval's d_prime on one class, say) become null."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def json_safe(obj: Any) -> Any:
    """obj with every non-finite float (at any depth of dicts, lists and tuples) replaced by None, so it
    can be written as strict JSON; other values unchanged."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def task_entry(group: str, metric: str, score: float | None, scores: dict[str, Any], n_test: int,
               seed: int | None = None, extra: dict | None = None, error: str | None = None,
               variant: str | None = None, ci95: dict | None = None) -> dict:
    """One task's entry. score is the primary metric's test score; with error given, score may be None.
    variant: the HEAR task's variant (hearpreprocess's mode), None for tasks without variants. ci95: the
    score's 95 % interval from this run ({"method", "low", "high", "half_width", ...}), when known."""
    entry = {"group": group, "metric": metric, "score": _finite_or_none(score),
             "scores": {k: _finite_or_none(v) for k, v in scores.items()}, "seed": seed, "n_test": int(n_test),
             "extra": json_safe(dict(extra or {}))}
    if variant is not None:
        entry["variant"] = variant
    if error is not None:
        entry["error"] = str(error)
    if ci95 is not None:
        entry["ci95"] = json_safe(dict(ci95))
    _check_task(entry, "<task entry>")
    return entry


def error_entry(group: str, metric: str, error: BaseException | str, n_test: int = 0, seed: int | None = None,
                extra: dict | None = None, variant: str | None = None) -> dict:
    """The entry of a task that failed: no score, and the error's type and message."""
    message = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    return task_entry(group, metric, None, {}, n_test, seed=seed, extra=extra, error=message, variant=variant)


def new_results(model: str, harness: str, tasks: dict[str, dict], checkpoint: str | Path | None = None,
                command: str | list[str] | None = None, created: str | None = None,
                settings: dict | None = None, pretraining: dict | None = None) -> dict:
    """A results document (validated). command defaults to this process's command line; settings (optional)
    records how the harness ran (module, options, grid, ...); pretraining (optional) is the checkpoint's
    provenance (hear_mamclap.checkpoint.read_metadata: variant, seed, loss weights), which the tables group by."""
    if command is None:
        command = [Path(sys.argv[0]).name, *sys.argv[1:]]
    if not isinstance(command, str):
        command = shlex.join(str(c) for c in command)
    doc = {"format": FORMAT, "version": VERSION, "model": model,
           "checkpoint": str(checkpoint) if checkpoint is not None else None, "harness": harness,
           "created": created or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": command, "environment": environment(), "tasks": dict(tasks)}
    if settings is not None:
        doc["settings"] = dict(settings)
    if pretraining:
        doc["pretraining"] = json_safe(dict(pretraining))
    return validate_results(doc)


# ------------------------------------------------------------------------------------------------ checking


def _require(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise ResultsError(f"{where}: {message}")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_task(entry: Any, where: str) -> None:
    _require(isinstance(entry, dict), where, f"expected a task object, got {type(entry).__name__}")
    missing = sorted({"group", "metric", "score", "scores", "seed", "n_test", "extra"} - set(entry))
    _require(not missing, where, f"missing keys {missing}")
    _require(entry["group"] in ALL_GROUPS, where, f"group must be one of {ALL_GROUPS}, got {entry['group']!r}")
    _require(isinstance(entry["metric"], str) and entry["metric"], where, "metric must be a non-empty string")
    _require(isinstance(entry["scores"], dict), where, "scores must be an object {metric: number or null}")
    for k, v in entry["scores"].items():
        _require(v is None or (_is_number(v) and math.isfinite(v)), where,
                 f"scores[{k!r}] must be a finite number or null, got {v!r}")
    error = entry.get("error")
    _require(error is None or (isinstance(error, str) and error), where, "error must be a non-empty string")
    if error is None:
        _require(_is_number(entry["score"]) and math.isfinite(entry["score"]), where,
                 f"score must be a finite number (or null with an 'error'), got {entry['score']!r}")
    else:
        _require(entry["score"] is None, where, "a task with an error has score null")
    _require(entry["seed"] is None or (isinstance(entry["seed"], int) and not isinstance(entry["seed"], bool)),
             where, f"seed must be an integer or null, got {entry['seed']!r}")
    _require(isinstance(entry["n_test"], int) and not isinstance(entry["n_test"], bool) and entry["n_test"] >= 0,
             where, f"n_test must be a non-negative integer, got {entry['n_test']!r}")
    _require(isinstance(entry["extra"], dict), where, "extra must be an object")
    variant = entry.get("variant")
    _require(variant is None or (isinstance(variant, str) and variant and "-" not in variant), where,
             f"variant, when present, must be a mode name such as {MODES}, got {variant!r}")
    ci95 = entry.get("ci95")
    if ci95 is not None:
        _require(isinstance(ci95, dict) and isinstance(ci95.get("method"), str), where,
                 "ci95, when present, must be an object with a 'method'")
        bounds = [ci95.get(k) for k in ("low", "high", "half_width")]
        _require(all(_is_number(b) and math.isfinite(b) for b in bounds) and bounds[0] <= bounds[1]
                 and bounds[2] >= 0, where, f"ci95 needs finite low <= high and half_width >= 0, got {ci95!r}")


def validate_results(doc: Any, source: str = "<results>") -> dict:
    """doc itself when it follows the format; else ResultsError naming the first problem."""
    _require(isinstance(doc, dict), source, f"expected a JSON object, got {type(doc).__name__}")
    _require(doc.get("format") == FORMAT, source,
             f"not a {FORMAT} file (format={doc.get('format')!r}); merged documents come from merge_results")
    _require(doc.get("version") == VERSION, source,
             f"format version {doc.get('version')!r}, this code reads version {VERSION}")
    for key in ("model", "created", "command"):
        _require(isinstance(doc.get(key), str) and doc[key], source, f"{key!r} must be a non-empty string")
    _require("checkpoint" in doc and (doc["checkpoint"] is None or isinstance(doc["checkpoint"], str)), source,
             "'checkpoint' must be a path string or null")
    _require(doc.get("harness") in HARNESSES, source,
             f"harness must be one of {HARNESSES}, got {doc.get('harness')!r}")
    try:
        datetime.datetime.fromisoformat(doc["created"])
    except ValueError:
        raise ResultsError(f"{source}: 'created' must be an ISO 8601 time, got {doc['created']!r}") from None
    _require(isinstance(doc.get("environment"), dict), source, "'environment' must be an object of versions")
    _require(isinstance(doc.get("settings", {}), dict), source, "'settings', when present, must be an object")
    _require(isinstance(doc.get("pretraining", {}), dict), source,
             "'pretraining', when present, must be an object")
    _require(isinstance(doc.get("tasks"), dict), source, "'tasks' must be an object {task: entry}")
    for name, entry in doc["tasks"].items():
        _check_task(entry, f"{source}: tasks[{name!r}]")
        variant = entry.get("variant")
        _require(variant in (None, FULL) or name.endswith(f"-{variant}"), f"{source}: tasks[{name!r}]",
                 f"the key of a {variant!r} variant is <task>-{variant} (task_key)")
    return doc


# ---------------------------------------------------------------------------------------------- files


def write_json_atomic(obj: Any, path: str | Path) -> Path:
    """Write obj as the results files' JSON (indent 2, no NaN) atomically: never a half-written file."""
    return atomic.write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def save_results(doc: dict, path: str | Path) -> Path:
    """Validate doc and write it atomically to path."""
    return write_json_atomic(validate_results(doc, str(path)), path)


def _read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path}: no such results file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResultsError(f"{path}: not valid JSON ({err})") from None


def load_results(path: str | Path) -> dict:
    """A results document read from path and validated; ResultsError says what is wrong with a bad file."""
    return validate_results(_read_json(path), str(path))


# -------------------------------------------------------------------------------------------- merging


def merge_results(docs: Iterable[dict | str | Path]) -> dict:
    """Several results documents (or paths) of one model -> one list of runs per task:

        {"format": "mamclap-results-merged", "version": 1, "model": name,
         "sources": [{"harness", "checkpoint", "created", "command", "path"}, ...],
         "tasks": {task: {"group", "metric", "variant", "runs": [{"score", "scores", "seed", "n_test", "extra",
                                                                 "ci95", "harness", "checkpoint", "source",
                                                                 ("error")}]}}}

    A task's variant is the one its entries record (None when none does). Refuses documents of different
    models, a task whose group, primary metric or variant differ between documents,
    and the same document twice (same harness, checkpoint, creation time and tasks: evaluations of one model
    run task by task in parallel can finish in the same second)."""
    loaded = []
    for d in docs:
        if isinstance(d, (str, Path)):
            loaded.append((load_results(d), str(d)))
        else:
            loaded.append((validate_results(d), None))
    if not loaded:
        raise ResultsError("merge_results: no results documents given")
    models = sorted({doc["model"] for doc, _ in loaded})
    if len(models) != 1:
        raise ResultsError(f"merge_results: documents of different models {models}; merge one model at a time")
    sources, seen, tasks = [], set(), {}
    for i, (doc, path) in enumerate(loaded):
        key = (doc["harness"], doc["checkpoint"], doc["created"], tuple(sorted(doc["tasks"])))
        if key in seen:
            raise ResultsError(f"merge_results: document {path or i} repeats harness/checkpoint/created/tasks {key}")
        seen.add(key)
        sources.append({"harness": doc["harness"], "checkpoint": doc["checkpoint"], "created": doc["created"],
                        "command": doc["command"], "path": path})
        for name, entry in doc["tasks"].items():
            merged = tasks.setdefault(name, {"group": entry["group"], "metric": entry["metric"], "variant": None,
                                             "runs": []})
            if merged["variant"] is None:
                merged["variant"] = entry.get("variant")
            elif entry.get("variant") not in (None, merged["variant"]):
                raise ResultsError(f"merge_results: task {name!r} is variant {merged['variant']!r} in one document "
                                   f"and {entry['variant']!r} in {path or f'document {i}'}")
            for field in ("group", "metric"):
                if merged[field] != entry[field]:
                    raise ResultsError(f"merge_results: task {name!r} has {field} {merged[field]!r} in one "
                                       f"document and {entry[field]!r} in {path or f'document {i}'}")
            run = {k: entry[k] for k in ("score", "scores", "seed", "n_test", "extra")}
            run.update(ci95=entry.get("ci95"), harness=doc["harness"], checkpoint=doc["checkpoint"], source=i)
            if "error" in entry:
                run["error"] = entry["error"]
            merged["runs"].append(run)
    return {"format": MERGED_FORMAT, "version": VERSION, "model": models[0], "sources": sources, "tasks": tasks}


def summarize(runs: list[dict]) -> dict:
    """Mean, sample standard deviation and the half-width of a 95% t confidence interval of the primary
    scores of runs (errored runs are counted, not averaged). std and ci95 are None for fewer than 2 scores."""
    scores = [r["score"] for r in runs if r.get("error") is None and r.get("score") is not None]
    n = len(scores)
    out = {"n": n, "n_errors": len(runs) - n, "mean": None, "std": None, "ci95": None,
           "seeds": sorted({r["seed"] for r in runs if r.get("seed") is not None})}
    if n == 0:
        return out
    mean = sum(scores) / n
    out["mean"] = mean
    if n >= 2:
        std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1))
        from scipy import stats  # here, not at the top: it takes longer to import than all of this module

        t = float(stats.t.ppf(0.975, n - 1))  # two-sided 95% quantile, n - 1 degrees of freedom
        out.update(std=std, ci95=t * std / math.sqrt(n))
    return out
