"""GPU experiment driver (results/gpu/exp2): the kits, the CLAP teacher, 12 ViT-S pretraining runs (the four
variants, seeds, ablations), their HEAR and SUPERB evaluations, the HEAR module benchmark and the two-GPU
checks, in one multi-GPU job.

A daemon (started in a new session, so it outlives the call that starts it) works through a job graph with
done-markers; each call only starts the daemon if it is not running, waits, and packs what exists.
Jobs are placed by CPU units (cores) and GPUs (least loaded), so one machine of several GPUs runs the kits,
the teacher, every pretraining run and every (model, task) evaluation side by side. Run from the
repository root (experiment.sh does):

    python results/gpu/scripts/experiment_driver.py plan           # print the job graph, run nothing
    python results/gpu/scripts/experiment_driver.py start          # start the daemon unless it runs
    python results/gpu/scripts/experiment_driver.py wait SECONDS   # wait for the daemon or SECONDS, print progress
    python results/gpu/scripts/experiment_driver.py pack           # $OUT/exp2.tar.gz: results, logs, loss logs, manifests
    python results/gpu/scripts/experiment_driver.py daemon         # the job graph itself (normally via `start`)

Environment: EXP_WORK (runs, results, logs, done-markers; default $TMPDIR/mamclap-experiment), MAMCLAP_DATA
(kits; default data/), OUT (where `pack` writes; default EXP_WORK/out), CAPTIONS (the small kit's MiniLM
caption embeddings for the teacher; default: embedded by a job of the graph), REFERENCE_SCRIPT (the yardstick
for bench_hear.sh, optional), PRE_STEPS, SUPERB_STEPS, CPU_UNITS, SCALING=0 (no two-GPU checks).
LOCAL=1 is a dry run on a CPU machine (tiny kit, tiny preset, few steps).
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

LOCAL = os.environ.get("LOCAL") == "1"
SCRIPTS = Path(__file__).resolve().parent  # the job scripts beside this driver
W = Path(os.environ.get("EXP_WORK") or Path(os.environ.get("TMPDIR", "/tmp")) / "mamclap-experiment").resolve()
DATA = Path(os.environ.get("MAMCLAP_DATA", "data")).resolve()
os.environ["MAMCLAP_DATA"] = str(DATA)  # the same data root for every job
KIT_HEAR = DATA / ("kit-tiny-s0" if LOCAL else "kit-small-s0")
KIT_PRE = DATA / ("kit-tiny-s0" if LOCAL else "kit-medium-s0")
RES = W / "results"
SIZE = "tiny" if LOCAL else "small"
PRE_STEPS = int(os.environ.get("PRE_STEPS", 20 if LOCAL else 1000))
PRE_BATCH = 8 if LOCAL else 64
SUPERB_STEPS = int(os.environ.get("SUPERB_STEPS", 20 if LOCAL else 500))
NCPU = os.cpu_count() or 2
CPU_UNITS = int(os.environ.get("CPU_UNITS", NCPU + 8))


def n_gpus() -> int:
    if LOCAL:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True).stdout
        return sum(line.startswith("GPU ") for line in out.splitlines())
    except (OSError, subprocess.CalledProcessError):
        return 0


NGPU = n_gpus()
PY = sys.executable
M = [PY, "-m", "training.cli"]

# name: (variant, seed, --set overrides); the order is the priority order of pretraining and evaluation.
RUNS = {
    "mam-s0": ("mam", 0, []), "mam_clap-s0": ("mam_clap", 0, []),
    "supmam-s0": ("supmam", 0, []), "supmam_clap-s0": ("supmam_clap", 0, []),
    "mam-s1": ("mam", 1, []), "supmam_clap-s1": ("supmam_clap", 1, []),
    "mam-s2": ("mam", 2, []), "supmam_clap-s2": ("supmam_clap", 2, []),
    "mam_clap_visible-s0": ("mam_clap", 0, ["distill_masked_weight=0"]),
    "mam_clap_masked-s0": ("mam_clap", 0, ["distill_visible_weight=0"]),
    "supmam_clap_lambda0.1-s0": ("supmam_clap", 0, ["lambda_cls=0.1"]),
    "supmam_clap_lambda1.0-s0": ("supmam_clap", 0, ["lambda_cls=1.0"]),
}
if LOCAL:
    RUNS = {k: RUNS[k] for k in ("mam-s0", "supmam_clap-s0")}
# Longest first, so the long ones do not start last; the event task (frame-level, slow) after all clip tasks.
CLIP_TASKS = ["mini_nsynth_pitch", "mini_esc", "mini_instrument_family", "mini_speaker_id", "mini_language_id",
              "mini_drum_stroke", "mini_speech_commands", "mini_mixtures"]
if LOCAL:
    CLIP_TASKS = ["mini_speech_commands", "mini_mixtures"]
EVENT_TASKS = [] if LOCAL else ["mini_dcase"]
SCALING = NGPU >= 4 and os.environ.get("SCALING", "1") == "1"
SCALING_CORES = set(range(0, 20))


class Job:
    def __init__(self, name, cmd, deps=(), units=1, gpus=0, fixed_gpus=None, resumable_dir=None, shell=False):
        self.name, self.cmd, self.deps, self.units = name, cmd, list(deps), units
        self.gpus, self.fixed_gpus, self.resumable_dir, self.shell = gpus, fixed_gpus, resumable_dir, shell
        self.proc = self.start_time = self.assigned = None

    @property
    def done(self) -> bool:
        return (W / "done" / self.name).exists()

    @property
    def failed(self) -> bool:
        return (W / "done" / (self.name + ".failed")).exists()


def log(msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    with open(W / "driver.log", "a") as f:
        f.write(line + "\n")


def jobs() -> list[Job]:
    out = []
    small_workers, medium_workers = (2, 2) if LOCAL else (16, 40)
    if not (KIT_HEAR / "manifest.json").exists():
        out.append(Job("build_hear_kit", [*M, "data", "build", "--size", KIT_HEAR.name.split("-")[1],
                                          "--workers", str(small_workers)], units=small_workers))
    if KIT_PRE != KIT_HEAR and not (KIT_PRE / "manifest.json").exists():
        out.append(Job("build_pre_kit", [*M, "data", "build", "--size", KIT_PRE.name.split("-")[1],
                                         "--workers", str(medium_workers)], units=medium_workers))
    kit_deps = [j.name for j in out]
    hear_dep = [d for d in kit_deps if d == "build_hear_kit"]
    pre_dep = [d for d in kit_deps if d == "build_pre_kit"] or hear_dep
    random_dir = W / "models" / f"random_init-{SIZE}"
    out.append(Job("random_export", [PY, "-c",
        "import torch; from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder; "
        "from hear_mamclap.checkpoint import export_encoder; torch.manual_seed(0); "
        f"export_encoder(MAMCLAPEncoder(EncoderConfig.preset('{SIZE}')), '{random_dir}', "
        f"metadata={{'variant': 'random_init', 'size': '{SIZE}', 'seed': 0}})"]))
    if NGPU:
        out.append(Job("bench", ["bash", str(SCRIPTS / "bench_hear.sh"), str(RES / "bench")], units=2, gpus=1,
                       fixed_gpus=[1 % NGPU]))
    if SCALING:
        out.append(Job("scaling", ["bash", str(SCRIPTS / "two_gpu_checks.sh"), str(RES / "scaling")], hear_dep, units=20,
                       gpus=2, fixed_gpus=[2, 3]))
    teacher_steps = 20 if LOCAL else 400
    captions, captions_dep = os.environ.get("CAPTIONS"), []
    if not captions:  # MiniLM on the CPU; set CAPTIONS where it cannot run
        captions, captions_dep = str(W / "captions.pt"), ["captions"]
        out.append(Job("captions", [*M, "teacher", "embed-captions", "--data", str(KIT_HEAR / "corpus"),
                                    "--out", captions], hear_dep, units=2))
    out.append(Job("teacher", [*M, "teacher", "train", "--data", str(KIT_HEAR / "corpus"), "--caption-embeddings",
                               captions, "--steps", str(teacher_steps), "--batch-size", "8" if LOCAL else "64",
                               "--workers", "2" if LOCAL else "6", "--out-dir", str(W / "runs" / "clap")],
                   hear_dep + captions_dep, units=6, gpus=1))
    for name, (variant, seed, sets) in RUNS.items():
        run_dir = W / "runs" / name
        cmd = [*M, "pretrain", "--preset", variant, "--size", SIZE, "--data", str(KIT_PRE / "corpus"),
               "--steps", str(PRE_STEPS), "--batch-size", str(PRE_BATCH), "--warmup-steps", "50" if not LOCAL else "2",
               "--seed", str(seed), "--workers", "1" if LOCAL else "4", "--ckpt-every", "250",
               "--log-every", "10", "--out-dir", str(run_dir)]
        deps = list(pre_dep)
        if variant.endswith("_clap"):
            cmd += ["--teacher", str(W / "runs" / "clap" / "clap.pt")]
            deps.append("teacher")
        for s in sets:
            cmd += ["--set", s]
        out.append(Job(f"pretrain_{name}", cmd, deps, units=2 if LOCAL else 5, gpus=1, resumable_dir=run_dir))

    models = [("logmel", "hear_mamclap.baselines.logmel", None, []),
              (f"random_init-{SIZE}", "hear_mamclap.baselines.random_init", random_dir, ["random_export"])]
    models += [(name, "hear_mamclap", W / "runs" / name / "encoder", [f"pretrain_{name}"]) for name in RUNS]
    evals = []
    for name, module, model, deps in models:
        if model is not None and name != "logmel":
            for task in ("speech_commands", "voxceleb1"):
                if name.startswith("random_init") and not LOCAL:
                    continue  # scored in the first GPU experiment with the same export (results/gpu/exp/superb)
                evals.append(Job(f"superb_{name}_{task}", [
                    *M, "superb", "eval", "--model", str(model), "--task", task, "--data-root",
                    str(KIT_PRE / "superb"), "--name", name, "--out", str(RES / "superb" / f"{name}.{task}.json"),
                    "--steps", str(SUPERB_STEPS), "--overwrite", "--expdir", str(W / "superb" / name / task),
                    "-o", "config.downstream_expert.datarc.num_workers=2"], pre_dep + deps, units=3, gpus=1))
        for task in CLIP_TASKS:
            evals.append(hear_job(name, module, model, task, "default", hear_dep + deps))
    for name, module, model, deps in models:
        for task in EVENT_TASKS:
            evals.append(hear_job(name, module, model, task, "fast", hear_dep + deps))
    return out + evals


def hear_job(name, module, model, task, grid, deps) -> Job:
    cmd = [*M, "hear", "eval", "--module", module, "--tasks-dir", str(KIT_HEAR / "hear"), "--tasks", task,
           "--name", name, "--out", str(RES / "hear" / f"{name}.{task}.json"),
           "--work-dir", str(W / "hear" / name / task), "--grid", grid, "--grid-points", "1"]
    if model is not None:
        cmd += ["--model", str(model)]
    return Job(f"hear_{name}_{task}", cmd, deps, units=2, gpus=1)


def daemon() -> None:
    for d in ("done", "logs", "runs", "models"):
        (W / d).mkdir(parents=True, exist_ok=True)
    for d in ("hear", "superb", "bench", "scaling"):
        (RES / d).mkdir(parents=True, exist_ok=True)
    (W / "daemon.pid").write_text(str(os.getpid()))
    graph = jobs()
    log(f"daemon: {len(graph)} jobs, {NCPU} cores ({CPU_UNITS} units), {NGPU} GPUs, scaling={SCALING}")
    running: list[Job] = []
    gpu_load = [0] * max(NGPU, 1)

    def free_gpus() -> list[int]:  # GPUs not held by a benchmark (fixed_gpus jobs have their GPUs alone)
        held = {g for r in running if r.fixed_gpus for g in r.assigned}
        return [g for g in range(NGPU) if g not in held]

    def start(job: Job) -> None:
        env = dict(os.environ)
        threads = str(max(1, job.units if job.units < 8 else 4))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        job.assigned = []
        if NGPU and job.gpus:
            job.assigned = list(job.fixed_gpus) if job.fixed_gpus else \
                sorted(free_gpus(), key=lambda g: (gpu_load[g], g))[:job.gpus]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, job.assigned))
            for g in job.assigned:
                gpu_load[g] += 1
        cmd = list(job.cmd)
        if job.resumable_dir is not None and (job.resumable_dir / "checkpoint.pt").exists():
            cmd.append("--resume")
        scaling_pending = SCALING and not (W / "done" / "scaling").exists()
        cores = None
        if scaling_pending:
            cores = SCALING_CORES if job.name == "scaling" else set(range(NCPU)) - SCALING_CORES
        job.logf = open(W / "logs" / f"{job.name}.log", "a")
        job.start_time = time.time()
        job.proc = subprocess.Popen(cmd, stdout=job.logf, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True,
                                    preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
        running.append(job)
        log(f"start {job.name} gpus={job.assigned} units={job.units}")

    def finish(job: Job, rc: int) -> None:
        running.remove(job)
        job.logf.close()
        for g in job.assigned:
            gpu_load[g] -= 1
        out_json = next((job.cmd[i + 1] for i, a in enumerate(job.cmd) if a == "--out"), None)
        ok = rc == 0 or (out_json is not None and Path(out_json).exists())
        secs = time.time() - job.start_time
        (W / "done" / (job.name if ok else job.name + ".failed")).write_text(json.dumps({"rc": rc, "seconds": secs}))
        log(f"{'done' if ok else 'FAILED'} {job.name} rc={rc} {secs:.0f}s")
        if not ok:
            tail = (W / "logs" / f"{job.name}.log").read_text(errors="replace")[-1200:]
            log("  tail: " + tail.replace("\n", "\n  "))

    while True:
        for job in list(running):
            rc = job.proc.poll()
            if rc is not None:
                finish(job, rc)
        pending = [j for j in graph if not j.done and not j.failed and j not in running]
        if not pending and not running:
            log("daemon: all jobs finished")
            break
        used = sum(j.units for j in running)
        for job in pending:
            if any((W / "done" / (d + ".failed")).exists() for d in job.deps):
                (W / "done" / (job.name + ".failed")).write_text("dependency failed")
                log(f"skip {job.name}: a dependency failed")
                continue
            if not all((W / "done" / d).exists() for d in job.deps):
                continue
            if used + job.units > CPU_UNITS and running:
                break  # strict priority among ready jobs: later, smaller jobs must not starve this one
            if NGPU and job.gpus:
                free = free_gpus()
                if job.fixed_gpus and not (set(job.fixed_gpus) <= set(free)):
                    continue
                if not job.fixed_gpus and len(free) < job.gpus:
                    continue
            start(job)
            used += job.units
        time.sleep(2)
    (W / "daemon.pid").unlink(missing_ok=True)


def daemon_alive() -> bool:
    try:
        os.kill(int((W / "daemon.pid").read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


def start_daemon() -> None:
    W.mkdir(parents=True, exist_ok=True)
    if daemon_alive():
        print("daemon already running")
        return
    with open(W / "daemon.out", "a") as f:
        subprocess.Popen([PY, __file__, "daemon"], stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    time.sleep(2)


def wait(seconds: float) -> None:
    t0, seen = time.time(), 0
    while time.time() - t0 < seconds:
        lines = (W / "driver.log").read_text().splitlines() if (W / "driver.log").exists() else []
        for line in lines[seen:]:
            if not line.startswith("  "):
                print(line, flush=True)
        seen = len(lines)
        if lines and not daemon_alive() and "all jobs finished" in lines[-1]:
            break
        time.sleep(5)
    done = len(list((W / "done").glob("*"))) if (W / "done").exists() else 0
    print(f"wait ended after {time.time() - t0:.0f}s; {done} done markers; daemon alive={daemon_alive()}")


def plan() -> None:
    for job in jobs():
        where = f"units={job.units} gpus={job.fixed_gpus or job.gpus}"
        print(f"{job.name}  [{where}; after: {', '.join(job.deps) or '-'}]\n    {shlex.join(map(str, job.cmd))}")


def pack() -> None:
    out = Path(os.environ.get("OUT") or W / "out")
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "exp2.tar.gz", "w:gz") as tar:
        for p in (RES, W / "driver.log", W / "done"):
            if p.exists():
                tar.add(p, arcname=p.name)
        for f in sorted((W / "logs").glob("*.log")):  # tails only: progress bars make some logs large
            data = f.read_bytes()[-20000:]
            tmp = W / "tail.tmp"
            tmp.write_bytes(data)
            tar.add(tmp, arcname=f"logs/{f.name}")
        for run in sorted((W / "runs").glob("*")):
            for f in ("log.jsonl", "metrics.json", "encoder/encoder.json"):
                if (run / f).exists():
                    tar.add(run / f, arcname=f"runs/{run.name}/{Path(f).name}")
        for kit in (KIT_HEAR, KIT_PRE):
            if (kit / "manifest.json").exists():
                tar.add(kit / "manifest.json", arcname=f"kits/{kit.name}.manifest.json")
    print(f"packed {out / 'exp2.tar.gz'} ({(out / 'exp2.tar.gz').stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "start"
    if what == "daemon":
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        daemon()
    elif what == "start":
        start_daemon()
    elif what == "wait":
        wait(float(sys.argv[2]))
    elif what == "pack":
        pack()
    elif what == "plan":
        plan()
    else:
        sys.exit(f"unknown command {what!r}: plan, daemon, start, wait or pack")
