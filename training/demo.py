"""`mamclap demo`: the whole pipeline on the offline sound kit, at smoke scale, resumable.

    mamclap demo [--work runs/demo] [--kit-size tiny]

Stages, in order, each one `python -m training.cli ...` subprocess whose output goes to WORK/logs/STAGE.log:
build the kit -> caption embeddings -> train the CLAP teacher -> pretrain each variant (tiny encoder preset)
-> HEAR evaluation of each, and of the log-mel baseline, on the kit's mini suite -> SUPERB keyword spotting
and speaker identification of each -> `mamclap tables` into WORK/tables -> a summary with the wall time of
every stage. Its own models show that every piece runs and connects: a few dozen training steps on a 32-clip
corpus measure nothing about the methods themselves. When the repository holds a release encoder
(results/models/NAME, `mamclap export --release`), a HEAR stage also scores it, on one quick task of each
group (RELEASE_HEAR_TASKS, or --hear-tasks), and a random-init encoder of its architecture on the same tasks,
so the final table sets a trained model beside log-mel and the architecture alone; a
ViT-S on two CPU cores takes about a minute there, and four more on the whole mini suite.

Resuming. A stage that succeeds writes WORK/stamps/STAGE.json (atomically, after its outputs exist) with a
fresh run id, its settings (its command line and the run ids of the stages it reads from) and its wall time.
A stage is skipped when its stamp holds the settings it would run with now and its outputs are still there.
So deleting a stamp, or changing an option, redoes that stage and then every later stage that reads from it
(their inputs' run ids changed), and nothing else. Before a stage starts, WORK/stamps/STAGE.attempt.json
records its settings; a run that finds an attempt with the same settings (the stage was interrupted) continues
it where the stage can (pretraining with --resume from its last checkpoint, HEAR evaluation in its work dir,
where heareval skips finished tasks). Otherwise the stage starts over in an emptied folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

from training.eval.results import write_json_atomic
from training.pretrain.mam import VARIANTS, PretrainConfig

CLI = ("-m", "training.cli")  # python arguments that run `mamclap`
SUPERB_TASKS = ("speech_commands", "voxceleb1")
KIT_SEED = 0
BATCH_SIZE = 8  # teacher and pretraining; the tiny corpus has 32 clips
# Pretraining scales its base learning rate by batch / 256 (AudioMAE): at a batch of 8 the default 2e-4 gives a
# peak of 6e-6 and the losses of a few dozen steps stay flat; 0.03 gives a peak near 1e-3, where they fall.
PRETRAIN_BASE_LR = 0.03
TAIL_LINES = 20  # log lines shown when a stage fails
# The release's HEAR tasks: one per group (speech, music, environment), the quickest of each (1 s clips, or
# few of them); the whole mini suite would add ~5 min to the demo for a ViT-S on a 2-core CPU.
RELEASE_HEAR_TASKS = ("mini_speech_commands", "mini_drum_stroke", "mini_mixtures")


@dataclass(frozen=True)
class DemoConfig:
    work: Path = Path("runs/demo")     # stamps, logs, runs, results and tables
    kit_size: str = "tiny"             # training.kit.build.SIZES; the encoder size is always `tiny`
    variants: tuple[str, ...] = VARIANTS
    baseline: bool = True              # also evaluate the log-mel baseline on HEAR
    hear_tasks: tuple[str, ...] = ()   # empty: every task of the kit's mini HEAR suite
    superb_tasks: tuple[str, ...] = SUPERB_TASKS
    teacher_steps: int = 10            # CLAP teacher steps (HTS-AT on 10 s windows, slow on a CPU)
    pretrain_steps: int = 60           # per variant
    superb_steps: int = 40             # s3prl downstream training steps per task
    release: Path | None = None        # a release folder, scored on HEAR (RELEASE_HEAR_TASKS)


@dataclass(frozen=True)
class Stage:
    name: str                          # file-safe id, names the stamp and the log: "pretrain-mam_clap"
    title: str                         # shown in progress lines: "pretrain mam_clap"
    args: tuple[str, ...]              # python arguments (after the interpreter); part of the settings
    deps: tuple[str, ...] = ()         # earlier stages whose outputs this one reads
    outputs: tuple[Path, ...] = ()     # must exist once it succeeds, and still exist for it to count as done
    folder: Path | None = None         # its own folder, emptied before a fresh start
    # Extra arguments that continue an interrupted attempt, or None to start over; None here: never continue.
    resume: Callable[[], tuple[str, ...] | None] | None = None
    # Content identity of outputs that live outside the work dir (the kit): a change redoes the stage.
    fingerprint: Callable[[], str | None] | None = None


class StageFailed(RuntimeError):
    """A stage that exited non-zero or did not write its outputs; the message names it and its log."""


# ---------------------------------------------------------------------------------------------- the plan


def model_name(variant: str) -> str:
    """Model name in results files and tables: mam_clap -> mam-clap."""
    return variant.replace("_", "-")


def _file_digest(path: Path) -> str | None:
    """SHA-256 of a file (a release's encoder.json, which holds its weight files' digests); None if absent."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _kit_digest(kit: Path) -> str | None:
    try:
        return json.loads((kit / "manifest.json").read_text())["digest"]
    except (OSError, ValueError, KeyError):
        return None


def plan(cfg: DemoConfig) -> list[Stage]:
    """The demo's stages in the order they run."""
    from training.kit.build import data_root, kit_dir

    work = cfg.work.resolve()
    kit = kit_dir(cfg.kit_size, KIT_SEED, data_root()).resolve()
    stages = [Stage("data", f"data: build the {cfg.kit_size} kit", (*CLI, "data", "build", "--size", cfg.kit_size,
                                                                "--seed", str(KIT_SEED)),
                    outputs=(kit / "manifest.json",), fingerprint=lambda: _kit_digest(kit))]
    corpus = str(kit / "corpus")

    teacher = work / "teacher" / "clap.pt"
    distils = {v: PretrainConfig.preset(v).uses_teacher for v in cfg.variants}
    if any(distils.values()):
        captions = work / "captions.pt"
        stages.append(Stage("captions", "teacher: caption embeddings (MiniLM)",
                            (*CLI, "teacher", "embed-captions", "--data", corpus, "--out", str(captions)),
                            deps=("data",), outputs=(captions,)))
        stages.append(Stage("teacher", "teacher: train the CLAP teacher",
                            (*CLI, "teacher", "train", "--data", corpus, "--caption-embeddings", str(captions),
                             "--out-dir", str(teacher.parent), "--steps", str(cfg.teacher_steps),
                             "--batch-size", str(BATCH_SIZE), "--warmup-steps", str(max(1, cfg.teacher_steps // 5)),
                             "--log-every", "1"),
                            deps=("data", "captions"), outputs=(teacher, teacher.parent / "metrics.json"),
                            folder=teacher.parent))

    def continue_pretraining(run: Path) -> Callable[[], tuple[str, ...] | None]:
        return lambda: ("--resume",) if (run / "checkpoint.pt").is_file() else None

    for v in cfg.variants:
        run = work / "pretrain" / v
        args = [*CLI, "pretrain", "--variant", v, "--size", "tiny", "--data", corpus, "--out-dir", str(run),
                "--steps", str(cfg.pretrain_steps), "--batch-size", str(BATCH_SIZE),
                "--base-lr", str(PRETRAIN_BASE_LR), "--warmup-steps", str(max(1, cfg.pretrain_steps // 10)),
                "--log-every", "2",
                "--ckpt-every", str(max(1, cfg.pretrain_steps // 4)),
                # The corpus is a few MiB: loader processes would only compete for the two cores.
                "--workers", "0", "--seed", "0"]
        deps = ["data"]
        if distils[v]:
            args += ["--teacher", str(teacher)]
            deps.append("teacher")
        stages.append(Stage(f"pretrain-{v}", f"pretrain {v}", tuple(args), deps=tuple(deps),
                            outputs=(run / "encoder" / "encoder.safetensors", run / "log.jsonl"), folder=run,
                            resume=continue_pretraining(run)))

    hear_models = [(model_name(v), ("--module", "hear_mamclap", "--model", str(work / "pretrain" / v / "encoder")),
                    (f"pretrain-{v}",), cfg.hear_tasks) for v in cfg.variants]
    release = cfg.release.resolve() if cfg.release is not None else None
    if release is not None:
        hear_models.append((release.name, ("--module", "hear_mamclap", "--model", str(release)), (),
                            cfg.hear_tasks or RELEASE_HEAR_TASKS))
        if cfg.baseline:  # the same architecture with random weights (seed 0), on the same tasks: what the
            # release's pretraining adds over the architecture alone (the random-init module reads the
            # release's config and discards its weights)
            hear_models.append(("random_init", ("--module", "hear_mamclap.baselines.random_init", "--model",
                                                str(release)), (), cfg.hear_tasks or RELEASE_HEAR_TASKS))
    if cfg.baseline:
        hear_models.append(("logmel", ("--module", "hear_mamclap.baselines.logmel"), (), cfg.hear_tasks))
    results = []
    for name, model_args, deps, tasks in hear_models:
        out = work / "results" / f"{name}.hear.json"
        results.append(out)
        # A replaced release (its encoder.json holds its weights' digests) redoes the stages that read it.
        fingerprint = ((lambda: _file_digest(release / "encoder.json")) if release is not None
                       and str(release) in model_args else None)
        stages.append(Stage(
            f"hear-{name}", f"HEAR {name}",
            (*CLI, "hear", "eval", *model_args, "--tasks-dir", str(kit / "hear"), "--name", name, "--out", str(out),
             "--work-dir", str(work / "hear" / name), "--grid", "faster",
             *(("--tasks", *tasks) if tasks else ())),
            deps=("data", *deps), outputs=(out,), folder=work / "hear" / name, resume=lambda: (),
            fingerprint=fingerprint))

    if cfg.superb_tasks:
        for v in cfg.variants:
            name = model_name(v)
            out = work / "results" / f"{name}.superb.json"
            results.append(out)
            stages.append(Stage(
                f"superb-{name}", f"SUPERB {name}",
                (*CLI, "superb", "eval", "--model", str(work / "pretrain" / v / "encoder"),
                 "--data-root", str(kit / "superb"), "--task", *cfg.superb_tasks, "--name", name, "--out", str(out),
                 "--steps", str(cfg.superb_steps), "--expdir", str(work / "superb" / name),
                 # s3prl's 4 loader processes per task only add start-up time with a few dozen clips.
                 "-o", "config.downstream_expert.datarc.num_workers=0"),
                deps=(f"pretrain-{v}",), outputs=(out,), folder=work / "superb" / name))

    tables = work / "tables"
    stages.append(Stage(
        "tables", "tables and plots",
        (*CLI, "tables", *map(str, results), "--out", str(tables),
         *(("--runs", *(str(work / "pretrain" / v) for v in cfg.variants)) if cfg.variants else ())),
        deps=tuple(s.name for s in stages if s.name.startswith(("pretrain-", "hear-", "superb-"))),
        outputs=(tables / "leaderboard.md",), folder=tables))
    return stages


# -------------------------------------------------------------------------------------------- the runner


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _last_line(path: Path) -> str:
    """The last non-empty line of a log (progress bars end lines with \\r), for the live status line."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 2048))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [s.strip() for s in text.replace("\r", "\n").split("\n") if s.strip()]
    return lines[-1] if lines else ""


def _tail(path: Path, n: int = TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").replace("\r", "\n").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join([line for line in lines if line.strip()][-n:])


def _stop(proc: subprocess.Popen) -> None:
    """End an interrupted stage: its whole process group (heareval and s3prl start subprocesses of their own)."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _execute(argv: list[str], log: Path, append: bool, env: dict[str, str], console: TextIO) -> int:
    """Run argv with its output in log; on a terminal, a status line with the elapsed time and the log's last
    line. Returns the exit status; an interrupt stops the stage's process group and propagates."""
    live = console.isatty()
    start = time.perf_counter()
    with open(log, "a" if append else "w") as f:
        if append:
            f.write("\n")  # the interrupted run may have stopped mid-line (a progress bar)
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        # Its own session: Ctrl-C reaches the demo only, which then stops the stage's whole group.
        proc = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            while True:
                try:
                    rc = proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    if live:
                        width = shutil.get_terminal_size().columns
                        status = f"      {time.perf_counter() - start:5.0f} s  {_last_line(log)}"
                        console.write("\r" + status[:width - 1].ljust(width - 1))
                        console.flush()
        except BaseException:
            _stop(proc)
            raise
        finally:
            if live:
                console.write("\r" + " " * (shutil.get_terminal_size().columns - 1) + "\r")
                console.flush()
    return rc


def _check_plan(stages: list[Stage]) -> None:
    seen = set()
    for s in stages:
        if s.name in seen:
            raise ValueError(f"two stages named {s.name!r}")
        missing = [d for d in s.deps if d not in seen]
        if missing:
            raise ValueError(f"stage {s.name!r} reads from {missing}, which are not earlier stages")
        seen.add(s.name)


def run_stages(stages: list[Stage], work: Path, console: TextIO = sys.stdout) -> list[dict]:
    """Run the stages in order, skipping those done (see the module docstring); returns one record per stage
    ({"stage", "title", "status": "ran" | "skipped", "seconds"}). Raises StageFailed on the first failure."""
    _check_plan(stages)
    work = Path(work).resolve()
    stamps, logs = work / "stamps", work / "logs"
    stamps.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    lock = open(work / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise StageFailed(f"another `mamclap demo` is running in {work} (it holds {work / '.lock'})") from None
    try:
        return _run_locked(stages, stamps, logs, console)
    finally:
        lock.close()


def _run_locked(stages: list[Stage], stamps: Path, logs: Path, console: TextIO) -> list[dict]:
    from training.compat import runtime_env  # imports torch: a few seconds, so before any stage's clock

    env = {**runtime_env(), **os.environ}  # offline, TensorFlow-free, unless the caller set otherwise
    run_ids: dict[str, str] = {}
    report = []

    def say(text: str) -> None:
        console.write(text + "\n")
        console.flush()

    for i, stage in enumerate(stages, 1):
        head = f"[{i}/{len(stages)}] {stage.title}"
        settings = {"args": list(stage.args), "inputs": {d: run_ids[d] for d in stage.deps}}
        stamp_path, attempt_path = stamps / f"{stage.name}.json", stamps / f"{stage.name}.attempt.json"
        stamp = _read_json(stamp_path)
        if (stamp is not None and stamp.get("settings") == settings and all(p.exists() for p in stage.outputs)
                and (stage.fingerprint is None or stamp.get("fingerprint") == stage.fingerprint())):
            run_ids[stage.name] = stamp["run_id"]
            say(f"{head}: skipped: done ({stamp['seconds']:.0f} s when it ran)")
            report.append({"stage": stage.name, "title": stage.title, "status": "skipped", "seconds": 0.0})
            continue

        stamp_path.unlink(missing_ok=True)  # from here on, a stale stamp must not pass for this run's work
        extra = stage.resume() if stage.resume is not None and _read_json(attempt_path) == settings else None
        if extra is None and stage.folder is not None and stage.folder.exists():
            shutil.rmtree(stage.folder)
        write_json_atomic(settings, attempt_path)
        log = logs / f"{stage.name}.log"
        say(f"{head} ... {'continuing the interrupted run' if extra is not None else 'running'}, log {log}")
        start = time.perf_counter()
        rc = _execute([sys.executable, *stage.args, *(extra or ())], log, append=extra is not None, env=env,
                      console=console)
        seconds = time.perf_counter() - start
        if rc != 0:
            how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"failed (exit status {rc})"
            raise StageFailed(f"stage [{i}/{len(stages)}] {stage.title!r} {how} after {seconds:.0f} s; its log is "
                              f"{log}. Last lines:\n{_tail(log)}")
        missing = [str(p) for p in stage.outputs if not p.exists()]
        if missing:
            raise StageFailed(f"stage [{i}/{len(stages)}] {stage.title!r} exited 0 but did not write {missing}; "
                              f"its log is {log}. Last lines:\n{_tail(log)}")
        run_ids[stage.name] = uuid.uuid4().hex
        write_json_atomic({"stage": stage.name, "title": stage.title, "run_id": run_ids[stage.name],
                           "settings": settings,
                           "fingerprint": stage.fingerprint() if stage.fingerprint is not None else None,
                           "seconds": round(seconds, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "log": str(log)}, stamp_path)
        attempt_path.unlink(missing_ok=True)
        say(f"{head}: done in {seconds:.0f} s")
        report.append({"stage": stage.name, "title": stage.title, "status": "ran", "seconds": round(seconds, 2)})
    return report


# ------------------------------------------------------------------------------------------ the command


def leaderboard(tables: Path) -> Path | None:
    """The leaderboard Markdown file `mamclap tables` wrote, if any."""
    found = sorted(tables.glob("leaderboard*.md"))
    return found[0] if found else None


def summarize(report: list[dict], total_s: float, work: Path, console: TextIO = sys.stdout) -> None:
    """Print the wall time of every stage and the leaderboard; write WORK/summary.json."""
    lines = ["", f"demo finished in {total_s / 60:.1f} min ({total_s:.0f} s); work dir {work}",
             f"  {'stage':36s} {'this run':>10s}"]
    for r in report:
        took = f"{r['seconds']:.0f} s" if r["status"] == "ran" else "skipped"
        lines.append(f"  {r['title']:36s} {took:>10s}")
    lines.append(f"  {'total':36s} {f'{total_s:.0f} s':>10s}")
    board = leaderboard(work / "tables")
    if board is not None:
        lines += ["", f"leaderboard: {board}  (all tables and plots in {work / 'tables'})", "",
                  board.read_text().rstrip()]
    else:
        lines += ["", f"tables and plots: {work / 'tables'}"]
    console.write("\n".join(lines) + "\n")
    write_json_atomic({"work": str(work), "total_s": round(total_s, 2), "stages": report,
                       "leaderboard": str(board) if board else None}, work / "summary.json")


def register(subparsers) -> None:
    from training.args import out_dir, positive_int
    from training.kit.build import SIZES
    d = DemoConfig()
    p = subparsers.add_parser("demo", help="the whole pipeline on the offline kit at smoke scale (resumable)",
                              description=__doc__.split("\n\n")[0] + " Finished stages are skipped on a re-run.")
    p.add_argument("--work", type=out_dir, default=d.work, help="work dir: stamps, logs, runs, results, tables")
    p.add_argument("--kit-size", "--size", default=d.kit_size, choices=list(SIZES),
                   help="kit size (see `mamclap data build`); --size is the old name")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(d.variants), help="variants to pretrain")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=d.baseline,
                   help="evaluate the log-mel baseline on HEAR too")
    p.add_argument("--hear-tasks", nargs="+", default=list(d.hear_tasks), metavar="TASK",
                   help="only these HEAR tasks (default: the whole mini suite)")
    p.add_argument("--superb-tasks", nargs="*", choices=SUPERB_TASKS, default=list(d.superb_tasks), metavar="TASK",
                   help=f"SUPERB tasks, of {list(SUPERB_TASKS)} (none: no SUPERB stages)")
    p.add_argument("--teacher-steps", type=positive_int, default=d.teacher_steps, help="CLAP teacher training steps")
    p.add_argument("--pretrain-steps", type=positive_int, default=d.pretrain_steps,
                   help="pretraining steps per variant")
    p.add_argument("--superb-steps", type=positive_int, default=d.superb_steps, help="SUPERB downstream steps per task")
    release = p.add_mutually_exclusive_group()
    release.add_argument("--release", type=Path, metavar="DIR",
                         help="a release encoder to score on HEAR beside the baselines (default: the release in "
                              "results/models/, if there is one)")
    release.add_argument("--no-release", action="store_true", help="score no release encoder")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from training.kit.build import SIZES

    if args.kit_size not in SIZES:
        raise SystemExit(f"--kit-size must be one of {list(SIZES)}, got {args.kit_size!r}")
    for flag in ("teacher_steps", "pretrain_steps", "superb_steps"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.no_release:
        args.release = None
    elif args.release is None:
        from training.release import find_release
        args.release = find_release()
    if args.release is not None and not (args.release / "encoder.json").is_file():
        raise SystemExit(f"--release {args.release}: not an encoder export (no encoder.json in it)")
    # Lists become tuples (a frozen config), without repeats (a variant named twice is one stage).
    cfg = DemoConfig(**{f.name: tuple(dict.fromkeys(v)) if isinstance(v := getattr(args, f.name), list) else v
                        for f in dataclasses.fields(DemoConfig)})
    work = cfg.work.resolve()
    print(f"mamclap demo: work dir {work}; a smoke-scale run of the whole pipeline, not a benchmark", flush=True)
    if cfg.release is not None:
        print(f"mamclap demo: scoring the release {cfg.release} on HEAR beside the baselines", flush=True)
    # SIGTERM (a scheduler, `kill`) is handled like Ctrl-C: the running stage's processes are stopped too.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    start = time.perf_counter()
    try:
        report = run_stages(plan(cfg), work)
    except StageFailed as err:
        print(f"\nmamclap demo stopped: {err}\nFix the cause and run the same command again: finished stages are "
              "skipped.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nmamclap demo interrupted: run the same command again to resume (finished stages are skipped, "
              "an interrupted one is continued or redone).", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    summarize(report, time.perf_counter() - start, work)
    return 0
