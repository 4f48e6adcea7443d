"""GPU experiment driver (issue 6.3; scores for issues 4 and 5): a job graph with done-markers, run with a
deadline, resumable across calls while the machine stays warm. Writes $OUT/exp.tar.gz (results JSONs, logs).

    python3 .bench/exp.py DEADLINE_SECONDS
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

T0 = time.time()
DEADLINE = float(sys.argv[1]) if len(sys.argv) > 1 else 560
W = Path("/tmp/work")
DATA = Path("/tmp/data")
SMALL, MEDIUM = DATA / "kit-small-s0", DATA / "kit-medium-s0"
RES = W / "results"
for d in (W / "done", W / "logs", RES / "hear", RES / "superb", W / "runs"):
    d.mkdir(parents=True, exist_ok=True)
M = [sys.executable, "-m", "training.cli"]
PRE_STEPS, PRE_BATCH = int(os.environ.get("PRE_STEPS", 1000)), 64
SUPERB_STEPS = int(os.environ.get("SUPERB_STEPS", 1000))
GRID = os.environ.get("GRID", "default")

# name: (variant, seed, --set overrides)
RUNS = {
    "mam-s0": ("mam", 0, []), "supmam_clap-s0": ("supmam_clap", 0, []),
    "mam_clap-s0": ("mam_clap", 0, []), "supmam-s0": ("supmam", 0, []),
    "mam-s1": ("mam", 1, []), "supmam_clap-s1": ("supmam_clap", 1, []),
    "mam-s2": ("mam", 2, []), "supmam_clap-s2": ("supmam_clap", 2, []),
    "mam_clap_visible-s0": ("mam_clap", 0, ["distill_masked_weight=0"]),
    "mam_clap_masked-s0": ("mam_clap", 0, ["distill_visible_weight=0"]),
    "supmam_clap_lambda0.1-s0": ("supmam_clap", 0, ["lambda_cls=0.1"]),
    "supmam_clap_lambda1.0-s0": ("supmam_clap", 0, ["lambda_cls=1.0"]),
}


def log(msg: str) -> None:
    line = f"[{time.time() - T0:6.0f}s] {msg}"
    print(line, flush=True)
    with open(W / "driver.log", "a") as f:
        f.write(line + "\n")


class Job:
    def __init__(self, name, cmd, deps=(), kind="cpu", resumable=False):
        self.name, self.cmd, self.deps, self.kind, self.resumable = name, cmd, list(deps), kind, resumable
        self.proc, self.start = None, None

    @property
    def done(self) -> bool:
        return (W / "done" / self.name).exists()

    @property
    def failed(self) -> bool:
        return (W / "done" / (self.name + ".failed")).exists()


def pretrain_cmd(name, variant, seed, sets):
    out = W / "runs" / name
    cmd = [*M, "pretrain", "--preset", variant, "--size", "small", "--data", str(MEDIUM / "corpus"),
           "--steps", str(PRE_STEPS), "--batch-size", str(PRE_BATCH), "--warmup-steps", "50", "--seed", str(seed),
           "--workers", "5", "--ckpt-every", "250", "--log-every", "10", "--out-dir", str(out)]
    if variant.endswith("_clap"):
        cmd += ["--teacher", str(W / "runs" / "clap" / "clap.pt")]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def hear_cmd(name, module, model):
    cmd = [*M, "hear", "eval", "--module", module, "--tasks-dir", str(SMALL / "hear"), "--name", name,
           "--out", str(RES / "hear" / f"{name}.json"), "--work-dir", str(W / "hear" / name), "--grid", GRID]
    return cmd + (["--model", str(model)] if model else [])


def superb_cmd(name, model):
    return [*M, "superb", "eval", "--model", str(model), "--data-root", str(MEDIUM / "superb"), "--name", name,
            "--out", str(RES / "superb" / f"{name}.json"), "--steps", str(SUPERB_STEPS), "--overwrite",
            "--expdir", str(W / "superb" / name), "-o", "config.downstream_expert.datarc.num_workers=2"]


RANDOM = W / "models" / "random_small"
jobs = [
    Job("build_small", [*M, "data", "build", "--size", "small", "--workers", "5"]),
    Job("build_medium", [*M, "data", "build", "--size", "medium", "--workers", "11"]),
    Job("random_export", [sys.executable, "-c",
        "import torch,sys; from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder; "
        "from hear_mamclap.checkpoint import export_encoder; torch.manual_seed(0); "
        f"export_encoder(MAMCLAPEncoder(EncoderConfig.preset('small')), '{RANDOM}', "
        "metadata={'variant': 'random_init', 'size': 'small', 'seed': 0})"]),
    Job("hear_logmel", hear_cmd("logmel", "hear_mamclap.baselines.logmel", None), ["build_small"]),
    Job("hear_random_init", hear_cmd("random_init-small", "hear_mamclap.baselines.random_init", RANDOM),
        ["build_small", "random_export"]),
    Job("teacher", [*M, "teacher", "train", "--data", str(SMALL / "corpus"), "--caption-embeddings",
                    ".bench/captions_small.pt", "--steps", "400", "--batch-size", "64", "--workers", "6",
                    "--out-dir", str(W / "runs" / "clap")], ["build_small"], kind="gpu"),
    Job("superb_random_init", superb_cmd("random_init-small", RANDOM / "encoder.safetensors"),
        ["build_medium", "random_export"]),
]
for name, (variant, seed, sets) in RUNS.items():
    deps = ["build_medium"] + (["teacher"] if variant.endswith("_clap") else [])
    jobs.append(Job(f"pretrain_{name}", pretrain_cmd(name, variant, seed, sets), deps, kind="gpu", resumable=True))
for name in RUNS:  # evaluations after all pretraining is queued: pretraining first
    enc = W / "runs" / name / "encoder"
    jobs.append(Job(f"hear_{name}", hear_cmd(name, "hear_mamclap", enc), [f"pretrain_{name}", "build_small"]))
    jobs.append(Job(f"superb_{name}", superb_cmd(name, enc), [f"pretrain_{name}", "build_medium"]))

# Evaluations that ran before a fix was carried: run again (their results files are replaced).
for name in os.environ.get("REDO", "").split():
    for suffix in ("", ".failed"):
        (W / "done" / (name + suffix)).unlink(missing_ok=True)

LIMITS = {"gpu": int(os.environ.get("GPU_SLOTS", 3)), "cpu": int(os.environ.get("CPU_SLOTS", 4))}
running: list[Job] = []


def start(job: Job) -> None:
    cmd = list(job.cmd)
    if job.resumable and (W / "runs" / job.name.removeprefix("pretrain_") / "checkpoint.pt").exists():
        cmd.append("--resume")
    job.start = time.time()
    job.logf = open(W / "logs" / f"{job.name}.log", "a")
    job.proc = subprocess.Popen(cmd, stdout=job.logf, stderr=subprocess.STDOUT, start_new_session=True)
    running.append(job)
    log(f"start {job.name}")


def finish(job: Job, rc: int) -> None:
    running.remove(job)
    job.logf.close()
    # An evaluation that wrote its results file counts as done even when a task failed (the file says which).
    out_json = next((job.cmd[i + 1] for i, a in enumerate(job.cmd) if a == "--out"), None)
    ok = rc == 0 or (out_json is not None and Path(out_json).exists())
    marker = W / "done" / (job.name if ok else job.name + ".failed")
    marker.write_text(json.dumps({"rc": rc, "seconds": round(time.time() - job.start, 1)}))
    log(f"{'done' if ok else 'FAILED'} {job.name} rc={rc} {time.time() - job.start:.0f}s")
    if not ok:
        tail = (W / "logs" / f"{job.name}.log").read_text()[-1500:]
        log("  tail: " + tail.replace("\n", "\n  "))


while True:
    for job in list(running):
        rc = job.proc.poll()
        if rc is not None:
            finish(job, rc)
    elapsed = time.time() - T0
    pending = [j for j in jobs if not j.done and not j.failed and j not in running]
    if not pending and not running:
        log("all jobs finished")
        break
    if elapsed > DEADLINE:
        for job in list(running):
            log(f"deadline: stopping {job.name}")
            os.killpg(job.proc.pid, 15)
        time.sleep(5)
        for job in list(running):
            if job.proc.poll() is None:
                os.killpg(job.proc.pid, 9)
            job.proc.wait()
            running.remove(job)
            job.logf.close()
        break
    for job in pending:
        blocked = any((W / "done" / (d + ".failed")).exists() for d in job.deps)
        if blocked:
            (W / "done" / (job.name + ".failed")).write_text("dependency failed")
            log(f"skip {job.name}: a dependency failed")
            continue
        if all((W / "done" / d).exists() for d in job.deps) and \
                sum(j.kind == job.kind for j in running) < LIMITS[job.kind]:
            start(job)
    time.sleep(2)

# Bring back: results, logs, pretraining and teacher logs (small files only).
out = Path(os.environ.get("OUT", "/tmp/out"))
out.mkdir(parents=True, exist_ok=True)
with tarfile.open(out / "exp.tar.gz", "w:gz") as tar:
    tar.add(RES, arcname="results")
    tar.add(W / "logs", arcname="logs")
    tar.add(W / "driver.log", arcname="driver.log")
    tar.add(W / "done", arcname="done")
    for run in (W / "runs").iterdir():
        for f in ("log.jsonl", "metrics.json"):
            if (run / f).exists():
                tar.add(run / f, arcname=f"runs/{run.name}/{f}")
        if (run / "encoder" / "encoder.json").exists():
            tar.add(run / "encoder" / "encoder.json", arcname=f"runs/{run.name}/encoder.json")
    for kit in (SMALL, MEDIUM):
        if (kit / "manifest.json").exists():
            tar.add(kit / "manifest.json", arcname=f"kits/{kit.name}.manifest.json")
log(f"packed {out / 'exp.tar.gz'} ({(out / 'exp.tar.gz').stat().st_size / 1e6:.1f} MB)")
