"""`mamclap superb eval`: train an s3prl downstream on the mamclap upstream, score the test split, and write
the test accuracies into a results JSON (training.eval.results, the format of the HEAR harness).

    mamclap superb eval --model CKPT --task speech_commands voxceleb1 --data-root DATA/superb \\
        --name mam-clap-base --out results/mam-clap-base.superb.json [--steps N]

Per task: `python -m superb_upstream.run_downstream -m train` with our config (superb_upstream/configs), then
`-m evaluate` on the checkpoint with the best dev accuracy (the last checkpoint when dev never improved on
zero), and top-1 accuracy from s3prl's test_predict.txt / test_truth.txt. A task that fails keeps an entry
with its error, and the other tasks still run. s3prl's output and logs stay in --expdir/<task>.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from superb_upstream.run_downstream import default_config

TASKS = ("speech_commands", "voxceleb1")
METRIC = "top1_acc"


def data_overrides(task: str, root: Path) -> list[str]:
    """s3prl -o assignments pointing our config at a task's data (the layout training.kit.superb_layouts
    writes, which is the original datasets' layout)."""
    datarc = "config.downstream_expert.datarc"
    if task == "speech_commands":
        for sub in ("train", "test"):
            if not (root / sub).is_dir():
                raise FileNotFoundError(f"speech_commands: expected {root}/train and {root}/test (Speech Commands "
                                        f"v0.01 and its test set), no {root / sub}")
        return [f"{datarc}.speech_commands_root='{root / 'train'}'",
                f"{datarc}.speech_commands_test_root='{root / 'test'}'"]
    if task == "voxceleb1":
        if not (root / "iden_split.txt").is_file():
            raise FileNotFoundError(f"voxceleb1: expected {root}/iden_split.txt and {root}/*/wav/idXXXXX/...")
        return [f"{datarc}.file_path='{root}'", f"{datarc}.meta_data='{root / 'iden_split.txt'}'"]
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def task_root(data_root: Path, task: str) -> Path:
    """data_root/<task> when it exists (a folder of several layouts), else data_root itself."""
    return data_root / task if (data_root / task).is_dir() else data_root


def step_overrides(task: str, steps: int) -> list[str]:
    """Train for `steps` updates, evaluating dev and saving no less often than at the end."""
    runner = yaml.safe_load(default_config(task).read_text())["runner"]
    return [f"config.runner.total_steps={steps}",
            *(f"config.runner.{k}={min(int(runner[k]), steps)}" for k in ("eval_step", "save_step", "log_step"))]


def best_checkpoint(expdir: Path) -> Path:
    """dev-best.ckpt, else the latest states-<step>.ckpt."""
    best = expdir / "dev-best.ckpt"
    if best.is_file():
        return best
    states = sorted(expdir.glob("states-*.ckpt"), key=lambda p: int(p.stem.split("-")[-1]))
    if not states:
        raise FileNotFoundError(f"{expdir}: training saved no checkpoint (no dev-best.ckpt or states-*.ckpt)")
    return states[-1]


def read_test_accuracy(expdir: Path) -> tuple[float, int]:
    """Top-1 accuracy and the number of test utterances from s3prl's test_predict.txt and test_truth.txt."""
    def read(name: str) -> dict[str, str]:
        path = expdir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: s3prl's evaluation wrote no {name}")
        pairs = (line.rsplit(" ", 1) for line in path.read_text().splitlines() if line.strip())
        return {utt: label for utt, label in pairs}

    predicted, truth = read("test_predict.txt"), read("test_truth.txt")
    if not truth or set(predicted) != set(truth):
        raise ValueError(f"{expdir}: test_predict.txt and test_truth.txt list different utterances "
                         f"({len(predicted)} vs {len(truth)})")
    return sum(predicted[u] == truth[u] for u in truth) / len(truth), len(truth)


def run_s3prl(argv: list[str], log: Path) -> None:
    """One `python -m superb_upstream.run_downstream` process, its output in log; CalledProcessError-like
    RuntimeError with the log's tail when it fails. It runs in the current directory and imports
    superb_upstream as installed (or from PYTHONPATH)."""
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "superb_upstream.run_downstream", *argv],
                              stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"s3prl {argv[1]} exited with {proc.returncode}; see {log}:\n{tail}")


def evaluate_task(task: str, model: Path, data_root: Path, expdir: Path, steps: int | None, device: str | None,
                  seed: int, overrides: list[str], pretraining_seed: int | None = None) -> dict:
    """Train then evaluate one task; returns its results entry."""
    from training.eval.results import task_entry, task_group

    expdir.mkdir(parents=True, exist_ok=True)
    assignments = data_overrides(task, task_root(data_root, task))
    if steps is not None:
        assignments += step_overrides(task, steps)
    assignments += overrides
    common = [*(["--device", device] if device else [])]
    print(f"[superb] {task}: training ({'config steps' if steps is None else f'{steps} steps'}), log {expdir}/train.log",
          flush=True)
    run_s3prl(["-m", "train", "-u", "mamclap", "-k", str(model), "-d", task, "-c", str(default_config(task)),
               "-p", str(expdir), "--seed", str(seed), "-o", ",,".join(assignments), *common], expdir / "train.log")
    ckpt = best_checkpoint(expdir)
    print(f"[superb] {task}: evaluating {ckpt.name} on test, log {expdir}/evaluate.log", flush=True)
    run_s3prl(["-m", "evaluate", "-e", str(ckpt), *common], expdir / "evaluate.log")
    accuracy, n_test = read_test_accuracy(expdir)
    print(f"[superb] {task}: test {METRIC} {accuracy:.4f} on {n_test} utterances", flush=True)
    # The entry's seed is the pretraining run's (tables average over those); s3prl's own seed goes to extra.
    return task_entry(task_group(task), METRIC, accuracy, {METRIC: accuracy}, n_test, seed=pretraining_seed,
                      extra={"checkpoint_evaluated": ckpt.name, "steps": steps, "expdir": str(expdir),
                             "s3prl_seed": seed})


def superb_eval(args) -> int:
    from training.eval.results import error_entry, new_results, save_results, task_group

    model = Path(args.model)
    if not model.exists():
        print(f"no model at {model}: expected an encoder export folder, its encoder.safetensors, or a "
              "pretraining checkpoint", file=sys.stderr)
        return 2
    if args.steps is not None and args.steps < 1:
        print(f"--steps must be >= 1, got {args.steps}", file=sys.stderr)
        return 2
    expdir = (args.expdir or Path("runs") / "superb" / args.name).resolve()  # runs/ under the current directory
    from hear_mamclap.checkpoint import read_metadata
    try:
        provenance = read_metadata(model)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"mamclap superb eval: --model: {err}", file=sys.stderr)
        return 2
    pretraining_seed = provenance.get("seed") if isinstance(provenance.get("seed"), int) else None
    tasks = {}
    for task in args.task:
        task_dir = expdir / task
        if task_dir.exists() and any(task_dir.iterdir()):
            if not args.overwrite:
                print(f"{task_dir} holds an earlier run; pass --overwrite to replace it", file=sys.stderr)
                return 2
            shutil.rmtree(task_dir)
        try:
            tasks[task] = evaluate_task(task, model, args.data_root, task_dir, args.steps, args.device, args.seed,
                                        args.override, pretraining_seed=pretraining_seed)
        except (RuntimeError, OSError, ValueError) as err:
            print(f"[superb] {task}: FAILED: {err}", file=sys.stderr, flush=True)
            tasks[task] = error_entry(task_group(task), METRIC, err, seed=pretraining_seed)
    doc = new_results(args.name, "superb", tasks, checkpoint=str(model.resolve()), pretraining=provenance)
    save_results(doc, args.out)
    print(f"[superb] wrote {args.out}")
    return 0 if all("error" not in entry for entry in tasks.values()) else 1


def register(subparsers) -> None:
    from training.args import DEVICE_HELP, device, existing_dir, existing_path, out_dir, out_file, positive_int, seed
    p = subparsers.add_parser("superb", help="SUPERB downstreams (s3prl) over a mamclap encoder",
                              description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="superb_command", required=True, metavar="STEP")
    e = sub.add_parser("eval", help="train and test s3prl downstreams, write a results JSON")
    e.add_argument("--model", required=True, type=existing_path,
                   help="encoder export folder, its encoder.safetensors, or a pretraining checkpoint")
    e.add_argument("--task", nargs="+", choices=TASKS, default=list(TASKS), help="downstream tasks to run")
    e.add_argument("--data-root", required=True, type=existing_dir,
                   help="a task's layout (speech_commands: train/ and test/; voxceleb1: iden_split.txt and "
                        "*/wav/), or a folder holding speech_commands/ and voxceleb1/")
    e.add_argument("--name", required=True, help="model name recorded in the results")
    e.add_argument("--out", required=True, type=out_file, help="results JSON to write")
    e.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the config's)")
    e.add_argument("--expdir", type=out_dir, default=None, help="s3prl experiment folders (default runs/superb/NAME)")
    e.add_argument("--overwrite", action="store_true", help="replace earlier runs in the experiment folders")
    e.add_argument("--device", type=device, default=None, help=f"{DEVICE_HELP} (default: s3prl's, cuda when visible)")
    e.add_argument("--seed", type=seed, default=1337, help="s3prl's seed (its default)")
    e.add_argument("-o", "--override", action="append", default=[],
                   help="extra s3prl -o assignment, e.g. config.downstream_expert.datarc.num_workers=0 (repeatable)")
    e.set_defaults(func=superb_eval)
