"""The fine-tuning table on one GPU (issue 16's runs; the table: `mamclap tables`, training/eval/tables.py):
the release encoder fine-tuned, the same encoder frozen (head only), and a random-init ViT-S trained from
scratch, on the medium kit's fine-tuning sets in their real layouts (AudioSet-like AS-20K, ESC-50 with its 5
folds, Speech Commands V2 with 35 words), each with SEEDS fine-tuning seeds, many jobs side by side.

Job graph (jobgraph.py runs it in a daemon across calls, with done-markers):

    build_kit                    mamclap data build --size medium --finetune (a small corpus: CORPUS_CLIPS)
    ft_<model>_<task>_s<seed>    mamclap finetune (AudioMAE's recipe for the task; EPOCHS overrides its length)

`pack` brings back every results file, the logs' tails and the driver log; the table is made where they land:

    mamclap tables <folder>/finetune --out <folder>/tables

    python results/gpu/scripts/finetune_driver.py plan | start | wait SECONDS | pack | daemon

Environment: EXP_WORK (default $TMPDIR/mamclap-finetune), MAMCLAP_DATA, OUT, RELEASE (the release encoder's
folder; its jobs wait until RELEASE/encoder.json exists, so it may be copied there in a later call), SEEDS ("0 1 2"), TASKS ("esc50 spcv2 as20k"), KINDS ("finetune frozen scratch"), EPOCHS (unset: the
recipe's), CORPUS_CLIPS (200). LOCAL=1 plans the tiny kit, a tiny encoder and one epoch (a dry run on a CPU).
"""
from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jobgraph import Graph, Job, daemon_main, pack_common, print_plan  # noqa: E402

LOCAL = os.environ.get("LOCAL") == "1"
W = Path(os.environ.get("EXP_WORK") or Path(os.environ.get("TMPDIR", "/tmp")) / "mamclap-finetune").resolve()
DATA = Path(os.environ.get("MAMCLAP_DATA", "data")).resolve()
os.environ["MAMCLAP_DATA"] = str(DATA)
SIZE_KIT = "tiny" if LOCAL else "medium"
CORPUS_CLIPS = os.environ.get("CORPUS_CLIPS", "200")
KIT = DATA / f"kit-{SIZE_KIT}-s0-c{CORPUS_CLIPS}"
RELEASE = Path(os.environ.get("RELEASE", "results/models/mamclap-vits")).resolve()
SEEDS = tuple(int(s) for s in os.environ.get("SEEDS", "0 1 2").split())
TASKS = tuple(os.environ.get("TASKS", "esc50 spcv2 as20k").split())
KINDS = tuple(os.environ.get("KINDS", "finetune frozen scratch").split())
EPOCHS = os.environ.get("EPOCHS", "1" if LOCAL else "")
FOLDERS = {"as20k": "finetune/audioset", "as2m": "finetune/audioset", "esc50": "finetune/esc50",
           "spcv2": "finetune/speech_commands_v2", "spcv2_12": "finetune/speech_commands_v2",
           "spcv1_12": "superb/speech_commands"}
NCPU = os.cpu_count() or 2
PY = sys.executable
M = [PY, "-m", "training.cli"]
RES = W / "results"
GRAPH = Graph(W, cpu_units=NCPU)


def model_args(kind: str) -> tuple[str, list[str]]:
    """(model name in the results, `mamclap finetune` options) for one kind of row."""
    if kind == "finetune":
        return "release", ["--init", str(RELEASE)]
    if kind == "frozen":
        return "release", ["--init", str(RELEASE), "--freeze"]
    if kind == "scratch":
        return "random_init", ["--init", "", "--size", "tiny" if LOCAL else "small"]
    raise SystemExit(f"unknown kind {kind!r} in KINDS: expected finetune, frozen or scratch")


def jobs() -> list[Job]:
    out = []
    if not (KIT / "finetune" / "stage.json").exists():
        out.append(Job("build_kit", [*M, "data", "build", "--size", SIZE_KIT, "--corpus-clips", CORPUS_CLIPS,
                                     "--finetune", "--workers", str(NCPU)], units=NCPU))
    kit_dep = [j.name for j in out]
    for task in TASKS:
        if task not in FOLDERS:
            raise SystemExit(f"unknown task {task!r} in TASKS: expected one of {sorted(FOLDERS)}")
        for seed in SEEDS:
            for kind in KINDS:
                name, args = model_args(kind)
                run = f"{name}-{kind}_{task}_s{seed}"
                result = RES / "finetune" / f"{run}.json"
                cmd = [*M, "finetune", "--task", task, "--data", str(KIT / FOLDERS[task]), *args, "--name", name,
                       "--seed", str(seed), "--out-dir", str(W / "runs" / run), "--results", str(result),
                       "--workers", "2", *(["--epochs", EPOCHS] if EPOCHS else []),
                       *(["--device", "cpu", "--batch-size", "8"] if LOCAL else [])]
                # A job of the release waits for its files: the release may come in a later call than the bank
                # (the two together pass the 64 MiB a call carries), while the from-scratch jobs start.
                wait = [str(RELEASE / "encoder.json")] if kind != "scratch" else []
                out.append(Job(f"ft_{run}", cmd, kit_dep, units=2, gpu=True, out=str(result), files=wait))
    return out


def pack() -> None:
    out = Path(os.environ.get("OUT") or W / "out")
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "finetune.tar.gz", "w:gz") as tar:
        pack_common(tar, W, RES)
        if (KIT / "manifest.json").exists():
            tar.add(KIT / "manifest.json", arcname=f"kits/{KIT.name}.manifest.json")
    print(f"packed {out / 'finetune.tar.gz'} ({(out / 'finetune.tar.gz').stat().st_size / 1e6:.2f} MB)")


def plan() -> None:
    print_plan(jobs())


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "start"
    if what == "daemon":
        (RES / "finetune").mkdir(parents=True, exist_ok=True)
        daemon_main(GRAPH, jobs)
    elif what == "start":
        GRAPH.start(str(Path(__file__).resolve()))
    elif what == "wait":
        GRAPH.wait(float(sys.argv[2]))
    elif what == "pack":
        pack()
    elif what == "plan":
        plan()
    else:
        sys.exit(f"unknown command {what!r}: plan, daemon, start, wait or pack")
