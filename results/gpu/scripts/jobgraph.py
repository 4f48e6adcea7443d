"""A job graph run by a daemon on a lent GPU machine, for the experiment drivers beside this file.

A lent machine answers one command of at most 10 minutes at a time and stays up for 30 s after it, so a job
longer than a call runs in a daemon (a new session: it outlives the call that starts it) that works through a
graph of shell commands with done-markers; each call starts the daemon unless it runs, waits, and packs what
exists. Jobs are placed by CPU units (about one per core) in priority order; a job may ask for the GPUs.
A finished job leaves `done/<name>` (or `done/<name>.failed`), so a job is never run twice; a failed
dependency fails its dependants at once.
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
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Job:
    name: str
    cmd: list[str]
    deps: list[str] = field(default_factory=list)
    units: int = 1  # CPU cores it keeps busy
    gpu: bool = False  # sees the GPUs (CUDA_VISIBLE_DEVICES left as it is); False hides them
    out: str | None = None  # a results file: the job counts as done when it exists, whatever the exit code
    # Files that must exist before the job starts, written while `producer` (a job) still runs: a training
    # run's snapshot is scored while the run goes on. A job waiting for them holds no units; it fails when the
    # producer has finished (done or failed) without writing them.
    files: list[str] = field(default_factory=list)
    producer: str | None = None


class Graph:
    def __init__(self, work: Path, cpu_units: int | None = None) -> None:
        self.work = Path(work)
        self.cpu_units = cpu_units or (os.cpu_count() or 2)

    def log(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with open(self.work / "driver.log", "a") as f:
            f.write(line + "\n")

    def marker(self, name: str, failed: bool = False) -> Path:
        return self.work / "done" / (name + (".failed" if failed else ""))

    def run(self, jobs: list[Job]) -> None:
        """Work through `jobs` (their order is the priority order) until every one has finished or failed."""
        for d in ("done", "logs"):
            (self.work / d).mkdir(parents=True, exist_ok=True)
        (self.work / "daemon.pid").write_text(str(os.getpid()))
        self.log(f"daemon: {len(jobs)} jobs, {self.cpu_units} CPU units")
        running: dict[str, tuple[Job, subprocess.Popen, float, object]] = {}
        while True:
            for name, (job, proc, t0, logf) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del running[name]
                logf.close()
                ok = rc == 0 or (job.out is not None and Path(job.out).exists())
                secs = time.time() - t0
                self.marker(name, failed=not ok).write_text(json.dumps({"rc": rc, "seconds": secs}))
                self.log(f"{'done' if ok else 'FAILED'} {name} rc={rc} {secs:.0f}s")
                if not ok:
                    tail = (self.work / "logs" / f"{name}.log").read_text(errors="replace")[-1500:]
                    self.log("  tail: " + tail.replace("\n", "\n  "))
            pending = [j for j in jobs if j.name not in running and not self.marker(j.name).exists()
                       and not self.marker(j.name, failed=True).exists()]
            if not pending and not running:
                self.log("daemon: all jobs finished")
                break
            used = sum(j.units for j, *_ in running.values())
            for job in pending:
                if any(self.marker(d, failed=True).exists() for d in job.deps):
                    self.marker(job.name, failed=True).write_text("dependency failed")
                    self.log(f"skip {job.name}: a dependency failed")
                    continue
                if not all(self.marker(d).exists() for d in job.deps):
                    continue
                missing = [f for f in job.files if not Path(f).exists()]
                if missing:
                    if job.producer and (self.marker(job.producer).exists()
                                         or self.marker(job.producer, failed=True).exists()):
                        self.marker(job.name, failed=True).write_text(f"{job.producer} did not write {missing[0]}")
                        self.log(f"skip {job.name}: {job.producer} finished without writing {missing[0]}")
                    continue
                if used + job.units > self.cpu_units and running:
                    break  # strict priority: later, smaller jobs must not starve this one
                env = dict(os.environ)
                threads = str(max(1, min(job.units, 8)))
                env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
                if not job.gpu:
                    env["CUDA_VISIBLE_DEVICES"] = ""
                logf = open(self.work / "logs" / f"{job.name}.log", "a")
                proc = subprocess.Popen(job.cmd, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
                running[job.name] = (job, proc, time.time(), logf)
                used += job.units
                self.log(f"start {job.name} units={job.units} gpu={job.gpu}")
            time.sleep(2)
        (self.work / "daemon.pid").unlink(missing_ok=True)

    def alive(self) -> bool:
        try:
            os.kill(int((self.work / "daemon.pid").read_text()), 0)
            return True
        except (OSError, ValueError):
            return False

    def start(self, script: str) -> None:
        """Start `python script daemon` in a new session unless the daemon runs."""
        self.work.mkdir(parents=True, exist_ok=True)
        if self.alive():
            print("daemon already running")
            return
        with open(self.work / "daemon.out", "a") as f:
            subprocess.Popen([sys.executable, script, "daemon"], stdout=f, stderr=subprocess.STDOUT,
                             start_new_session=True)
        time.sleep(2)

    def wait(self, seconds: float) -> None:
        """Print the driver log as it grows, until the daemon has finished or `seconds` have passed."""
        t0, seen = time.time(), 0
        log_path = self.work / "driver.log"
        while time.time() - t0 < seconds:
            lines = log_path.read_text().splitlines() if log_path.exists() else []
            for line in lines[seen:]:
                if not line.startswith("  "):
                    print(line, flush=True)
            seen = len(lines)
            if lines and not self.alive() and "all jobs finished" in lines[-1]:
                break
            time.sleep(5)
        done = len(list((self.work / "done").glob("*"))) if (self.work / "done").exists() else 0
        print(f"wait ended after {time.time() - t0:.0f}s; {done} done markers; daemon alive={self.alive()}")


def daemon_main(graph: Graph, jobs_fn, before=None) -> None:
    """Run the graph of `jobs_fn()`; `before(jobs)` first (e.g. a driver marking jobs done from earlier files)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    jobs = jobs_fn()
    if before is not None:
        before(jobs)
    graph.run(jobs)


def pack_common(tar: tarfile.TarFile, work: Path, results: Path, skip: set[str] = frozenset()) -> None:
    """What every driver's `pack` brings back: the results folder (less the resolved paths in `skip`), the driver
    log, the done-markers, and the last 20 kB of each job's log (progress bars make some logs large)."""
    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        inside = info.name == results.name or info.name.startswith(results.name + "/")
        rel = Path(info.name).relative_to(results.name) if inside else None
        return None if rel is not None and str((results / rel).resolve()) in skip else info
    if results.exists():
        tar.add(results, arcname=results.name, filter=keep)
    for p in (work / "driver.log", work / "done"):
        if p.exists():
            tar.add(p, arcname=p.name)
    for f in sorted((work / "logs").glob("*.log")):
        tmp = work / "tail.tmp"
        tmp.write_bytes(f.read_bytes()[-20000:])
        tar.add(tmp, arcname=f"logs/{f.name}")


def print_plan(jobs: list[Job]) -> None:
    """`plan`: each job with its units, GPU use and dependencies, and its command."""
    for job in jobs:
        files = (f"; files of {job.producer or 'a later call'}: {', '.join(job.files)}" if job.files else "")
        print(f"{job.name}  [units={job.units} gpu={job.gpu}; after: {', '.join(job.deps) or '-'}{files}]\n"
              f"    {shlex.join(map(str, job.cmd))}")
