"""Training checkpoints: plain dicts of tensors and Python values, written atomically.

A checkpoint holds model, optimizer and scheduler state, the step, every RNG state the run uses, and the
configs as dicts, so `torch.load(path, weights_only=True)` reads it and `--resume` continues exactly.
It is written to a temporary file in the same folder, flushed, and renamed over the old one: a run killed
at any moment leaves either the previous checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch


def rng_state() -> dict:
    """Every RNG state a run draws from, as weights_only-loadable values."""
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_version": random.getstate()[0], "python_gauss": random.getstate()[2],
             "numpy": np.random.get_state()[1].astype(np.int64).tolist(),
             "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        # The process's own device only: a rank uses one GPU, and a state per visible device would not
        # restore where fewer devices are visible (a 2-GPU checkpoint resumed in a 1-GPU process).
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # older checkpoints: one state per device visible when saved
            current = torch.cuda.current_device()
            cuda = cuda[current] if current < len(cuda) else cuda[0]
        torch.cuda.set_rng_state(cuda)


def save_atomic(obj: dict, path: str | Path) -> None:
    """torch.save to a temp file beside `path`, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path) -> dict:
    """Load a training checkpoint safely (weights_only=True: no pickled code)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def clean_stale_tmp(path: str | Path) -> list[Path]:
    """Remove the temp files a writer killed mid-save (kill -9 runs no cleanup) left beside `path`
    (`<name>.<random>.tmp`, as save_atomic names them); returns those removed. Call it when no other process
    is saving to `path`, e.g. as a run starts."""
    path = Path(path)
    stale = sorted(path.parent.glob(f"{path.name}.*.tmp")) if path.parent.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
