"""Worker processes for the kit's stages: the HEAR tasks and SUPERB layouts render side by side on them.

Workers are spawned, not forked (a forked child can inherit a held lock of torch's or OpenMP's thread pools),
and run one torch thread each: one process per core already, and augment's many small torch ops only contend
with more (results/perf.md, "Kit builds: one torch thread").
"""
from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed, wait
from contextlib import contextmanager
from typing import Callable, Iterator


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


@contextmanager
def process_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of `workers` spawned processes, shut down (after their jobs) when the block ends."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_one_torch_thread) as ex:
        yield ex


def run_all(executor: Executor, fn: Callable, jobs: list[tuple],
            on_done: Callable[[int, object], None] | None = None) -> list:
    """[fn(*args) for args in jobs] on the executor, submitted in the order given (put the longest first);
    on_done(index, result) is called here as each finishes. On the first failure the jobs not yet started are
    cancelled, the running ones are left to finish (each writes its output atomically) and it is raised."""
    futures = [executor.submit(fn, *args) for args in jobs]
    index = {f: i for i, f in enumerate(futures)}
    try:
        for f in as_completed(futures):
            if on_done is not None:
                on_done(index[f], f.result())
        return [f.result() for f in futures]
    except BaseException:
        for f in futures:
            f.cancel()
        wait(futures)
        raise
