"""The representations experiment (results/gpu/representations): MAM and SupMAM ViT-S, 3 seeds each, at one
recipe on the medium kit's corpus, scored with the protocol of results/PROTOCOL.md on the same kit's HEAR
suite and SUPERB layouts beside log-mel and random-init ViT-S (3 seeds), on one GPU.

Job graph (jobgraph.py runs it in a daemon across calls, with done-markers):

    build_kit        mamclap data build --size medium (--corpus-clips CORPUS_CLIPS)
    precompute       the corpus's log-mel and labels once, held on the GPU by every run (`mamclap precompute`)
    floors           the losses' trivial floors on that cache (`mamclap diagnose floors`)
    pretrain_<run>   the runs side by side on the GPU (RUNS below; snapshots for the scaling curve)
    readout_<model>  the readout of each task chosen on validation data (`mamclap hear readout`)
    hear_<model>     heareval on every task with that readout, seeded grid points (`mamclap hear eval`)
    superb_<model>_<task>  s3prl speech_commands (KS) and voxceleb1 (SID)
    release          picks the final encoder with the best mean validation score; `pack` brings it back in bf16 shards

    python results/gpu/scripts/representations_driver.py plan | start | wait SECONDS | pack | daemon

Environment: EXP_WORK (default $TMPDIR/mamclap-representations), MAMCLAP_DATA, OUT, PRE_STEPS (1000),
CORPUS_CLIPS (unset: the medium kit's), HEAR_GRID_POINTS (3), SUPERB_STEPS (1000). LOCAL=1 is a dry run
on a CPU machine (tiny kit, tiny encoder, a few steps).
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jobgraph import Graph, Job, daemon_main  # noqa: E402

LOCAL = os.environ.get("LOCAL") == "1"
W = Path(os.environ.get("EXP_WORK") or Path(os.environ.get("TMPDIR", "/tmp")) / "mamclap-representations").resolve()
DATA = Path(os.environ.get("MAMCLAP_DATA", "data")).resolve()
os.environ["MAMCLAP_DATA"] = str(DATA)
SIZE_KIT = "tiny" if LOCAL else "medium"
CORPUS_CLIPS = os.environ.get("CORPUS_CLIPS")
KIT = DATA / (f"kit-{SIZE_KIT}-s0" + (f"-c{CORPUS_CLIPS}" if CORPUS_CLIPS else ""))
SIZE = "tiny" if LOCAL else "small"
PRE_STEPS = int(os.environ.get("PRE_STEPS", 8 if LOCAL else 1000))
SNAPSHOT_EVERY = PRE_STEPS // 4
HEAR_GRID_POINTS = os.environ.get("HEAR_GRID_POINTS", "1" if LOCAL else "3")
SUPERB_STEPS = os.environ.get("SUPERB_STEPS", "20" if LOCAL else "1000")
NCPU = os.cpu_count() or 2
PY = sys.executable
M = [PY, "-m", "training.cli"]
RES = W / "results"
GRAPH = Graph(W, cpu_units=NCPU)

# The recipe (issue 15's check: peak lr 1e-3, weight decay 0.05 trained where 5e-5 did not), the same for
# every run; batch 256 as two micro-batches of 128 so six runs fit one GPU's memory side by side.
RECIPE = ["--batch-size", "4" if LOCAL else "128", "--accum", "2", "--base-lr", "1e-3", "--weight-decay", "0.05",
          "--warmup-steps", str(max(1, PRE_STEPS // 10)), "--mix-p", "0.5", "--mix-gain-db", "10", "--gain-db", "6",
          "--ckpt-every", str(max(1, SNAPSHOT_EVERY)), "--log-every", "10", "--workers", "0"]
if not LOCAL:
    RECIPE += ["--compile"]
RUNS = {f"{v}-s{s}": (v, s) for v in ("supmam", "mam") for s in (0, 1, 2)}
SNAPSHOT_RUN = "supmam-s0"  # its snapshots at 1/4 and 1/2 of the run are scored too (scaling curve)
TASKS = ("speech_commands", "voxceleb1")


def models() -> list[tuple[str, str, Path | None, list[str], dict]]:
    """(name, module, weights, deps, model options) in evaluation priority order."""
    out = [(name, "hear_mamclap", W / "runs" / name / "encoder", [f"pretrain_{name}"], {})
           for name in RUNS]
    out += [("logmel", "hear_mamclap.baselines.logmel", None, [], {"scene_pooling": "mean"}),
            ("logmel_meanstd", "hear_mamclap.baselines.logmel", None, [], {"scene_pooling": "meanstd"})]
    out += [(f"random_init-s{s}", "hear_mamclap.baselines.random_init", None, [], {"preset": SIZE, "seed": s})
            for s in (0, 1, 2)]
    for frac in (1, 2):
        step = frac * SNAPSHOT_EVERY
        out.append((f"{SNAPSHOT_RUN}-step{step}", "hear_mamclap",
                    W / "runs" / SNAPSHOT_RUN / f"encoder-step{step:06d}", [f"pretrain_{SNAPSHOT_RUN}"], {}))
    return out


def jobs() -> list[Job]:
    out = []
    build = [*M, "data", "build", "--size", SIZE_KIT, "--workers", str(NCPU)]
    if CORPUS_CLIPS:
        build += ["--corpus-clips", CORPUS_CLIPS]
    if not (KIT / "manifest.json").exists():
        out.append(Job("build_kit", build, units=NCPU))
    kit_dep = [j.name for j in out]
    cache = W / "cache"
    out.append(Job("precompute", [*M, "precompute", "--data", str(KIT / "corpus"), "--variant", "mam", "--size", SIZE,
                                  "--out", str(cache), "--workers", str(max(1, NCPU - 4)), "--batch-size", "64"], kit_dep, units=NCPU,
                   gpu=True))
    out.append(Job("floors", [*M, "diagnose", "floors", "--cache", str(cache), "--size", SIZE,
                              "--out", str(RES / "floors.json")], ["precompute"]))
    for name, (variant, seed) in RUNS.items():
        out.append(Job(f"pretrain_{name}", [*M, "pretrain", "--variant", variant, "--size", SIZE, "--data",
                                            str(KIT / "corpus"), "--cache", str(cache), "--steps", str(PRE_STEPS),
                                            "--seed", str(seed), "--export-every", str(max(1, SNAPSHOT_EVERY)),
                                            *RECIPE, "--out-dir", str(W / "runs" / name)],
                       ["precompute"], units=1, gpu=True))
    hear_jobs, superb_jobs = [], []
    for name, module, weights, deps, options in models():
        model_args = ["--module", module, "--model-options", json.dumps(options)]
        if weights is not None:
            model_args += ["--model", str(weights)]
        choice = RES / "readout" / f"{name}.json"
        hear_jobs.append(Job(f"readout_{name}", [*M, "hear", "readout", *model_args, "--tasks-dir", str(KIT / "hear"),
                                                  "--out", str(choice)], kit_dep + deps, units=2, gpu=True,
                             out=str(choice)))
        result = RES / "hear" / f"{name}.json"
        hear_jobs.append(Job(f"hear_{name}", [*M, "hear", "eval", *model_args, "--readout", str(choice),
                                              "--tasks-dir", str(KIT / "hear"), "--name", name, "--out", str(result),
                                              "--work-dir", str(W / "hear" / name), "--grid", "default",
                                              "--grid-points", HEAR_GRID_POINTS, "--seed", "0", "--jobs", "3"],
                             kit_dep + deps + [f"readout_{name}"], units=3, gpu=True, out=str(result)))
        if module.startswith("hear_mamclap.baselines.logmel"):
            continue
        export = weights
        if weights is None:  # random init: an export of the same seeded weights for the s3prl upstream
            export = W / "models" / name
            seed = options["seed"]
            hear_jobs.append(Job(f"export_{name}", [PY, "-c",
                "import torch; from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder; "
                "from hear_mamclap.checkpoint import export_encoder; "
                f"torch.manual_seed({seed}); "
                f"export_encoder(MAMCLAPEncoder(EncoderConfig.preset('{SIZE}')), '{export}', "
                f"metadata={{'variant': 'random_init', 'size': '{SIZE}', 'seed': {seed}}})"]))
            deps = deps + [f"export_{name}"]
        for task in TASKS:
            res = RES / "superb" / f"{name}.{task}.json"
            superb_jobs.append(Job(f"superb_{name}_{task}", [
                *M, "superb", "eval", "--model", str(export), "--task", task, "--data-root", str(KIT / "superb"),
                "--name", name, "--out", str(res), "--steps", SUPERB_STEPS, "--overwrite",
                "--expdir", str(W / "superb" / name / task), "-o", "config.downstream_expert.datarc.num_workers=2"],
                kit_dep + deps, units=2, gpu=True, out=str(res)))
    out += hear_jobs + superb_jobs
    finals = [f"hear_{name}" for name in RUNS]
    out.append(Job("release", [PY, str(Path(__file__).resolve()), "release"], finals))
    return out


def release() -> None:
    """Choose the final encoder whose mean heareval validation score over the tasks is highest (the choice
    never looks at test scores); `pack` brings its weights back as bf16 shards."""
    best, best_score = None, None
    for name in RUNS:
        path = RES / "hear" / f"{name}.json"
        if not path.exists():
            continue
        tasks = json.loads(path.read_text())["tasks"]
        vals = [t.get("validation_score") for t in tasks.values()]
        vals = [v if not isinstance(v, list) else sum(v) / len(v) for v in vals if v is not None]
        if vals and (best_score is None or sum(vals) / len(vals) > best_score):
            best, best_score = name, sum(vals) / len(vals)
    if best is None:
        sys.exit("no final run has HEAR results")
    GRAPH.log(f"release: {best} (mean validation score {best_score:.4f})")
    (RES / "release_choice.json").write_text(json.dumps({"run": best, "mean_validation_score": best_score}))


def pack() -> None:
    out = Path(os.environ.get("OUT") or W / "out")
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "representations.tar.gz", "w:gz") as tar:
        for p in (RES, W / "driver.log", W / "done"):
            if p.exists():
                tar.add(p, arcname=p.name)
        for f in sorted((W / "logs").glob("*.log")):  # tails only: progress bars make some logs large
            tmp = W / "tail.tmp"
            tmp.write_bytes(f.read_bytes()[-20000:])
            tar.add(tmp, arcname=f"logs/{f.name}")
        for run in sorted((W / "runs").glob("*")):
            for f in ["log.jsonl", "encoder/encoder.json", *[str(p.relative_to(run)) for p in run.glob("encoder-step*/encoder.json")]]:
                if (run / f).exists():
                    tar.add(run / f, arcname=f"runs/{run.name}/{f}")
        if (KIT / "manifest.json").exists():
            tar.add(KIT / "manifest.json", arcname=f"kits/{KIT.name}.manifest.json")
        for card in sorted((KIT / "cards").glob("*.md")) if (KIT / "cards").exists() else []:
            tar.add(card, arcname=f"kits/cards/{card.name}")
    choice = RES / "release_choice.json"  # the chosen encoder's weights in bf16 shards beside the tarball
    big = bf16_shards(W / "runs" / json.loads(choice.read_text())["run"] / "encoder", W / "shards") \
        if choice.exists() else []
    for f in big[:7]:  # the weight shards, each under 16 MiB, beside the tarball
        (out / f.name).write_bytes(f.read_bytes())
    print(f"packed {out / 'representations.tar.gz'} ({(out / 'representations.tar.gz').stat().st_size / 1e6:.2f} MB)"
          f" and {len(big[:7])} weight files")


def bf16_shards(export: Path, out: Path, limit: int = 15 << 20) -> list[Path]:
    """An encoder export's weights as bf16 safetensors files of at most `limit` bytes (with its encoder.json)."""
    import torch
    from safetensors.torch import save_file
    from hear_mamclap.checkpoint import load_encoder
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in load_encoder(export).state_dict().items()}
    shards, current, size = [], {}, 0
    for k, v in state.items():
        n = v.numel() * 2
        if current and size + n > limit:
            shards.append(current)
            current, size = {}, 0
        current[k], size = v, size + n
    shards.append(current)
    files = []
    for i, shard in enumerate(shards):
        files.append(out / f"{export.parent.name}.bf16-{i + 1:05d}-of-{len(shards):05d}.safetensors")
        save_file(shard, str(files[-1]))
    return files


def plan() -> None:
    for job in jobs():
        print(f"{job.name}  [units={job.units} gpu={job.gpu}; after: {', '.join(job.deps) or '-'}]\n"
              f"    {shlex.join(map(str, job.cmd))}")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "start"
    if what == "daemon":
        for d in ("hear", "superb", "readout"):
            (RES / d).mkdir(parents=True, exist_ok=True)
        daemon_main(GRAPH, jobs)
    elif what == "start":
        GRAPH.start(str(Path(__file__).resolve()))
    elif what == "wait":
        GRAPH.wait(float(sys.argv[2]))
    elif what == "pack":
        pack()
    elif what == "plan":
        plan()
    elif what == "release":
        release()
    else:
        sys.exit(f"unknown command {what!r}: plan, daemon, start, wait, pack or release")
