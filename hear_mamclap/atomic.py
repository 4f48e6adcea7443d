"""Atomic files and folders: a reader finds the old version or the new one, never half of one.

Everything is written under a temporary name beside the target, `<name>.<random>.tmp` (the same folder, so
the rename stays on one file system), flushed to disk and renamed over the target with os.replace; a failure
removes the temporary. Only a process killed mid-write (kill -9, power loss) leaves a `<name>.*.tmp` behind,
and `remove_stale` deletes those of a target before it is written again.

New files get mode 0666 & ~umask and folders 0777 & ~umask, as open() and mkdir() give; tempfile's
mkstemp and mkdtemp would make them 0600 and 0700, private to their owner, which would hide checkpoints,
results and kits from the rest of a group that shares them.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def _reserve(target: Path, parent: Path, make) -> Path:
    """Create a fresh temporary beside `target` in `parent` with make(path); a name taken is drawn again."""
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = parent / f"{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            make(tmp)
            return tmp
        except FileExistsError:
            continue


def _new_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextmanager
def file(path: str | Path) -> Iterator[Path]:
    """A new empty temporary file beside `path`, for writers that take a file name (torch.save, safetensors,
    savefig, tarfile); on a clean exit it is fsynced and renamed to `path`, on an exception removed."""
    path = Path(path)
    tmp = _reserve(path, path.parent, _new_file)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def open_write(path: str | Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """open(path, mode, **kwargs) for writing ("w" or "wb"), where the file appears at `path` only when the
    block ends without an exception."""
    if mode not in ("w", "wt", "wb"):
        raise ValueError(f"open_write writes a whole new file: mode 'w' or 'wb', got {mode!r}")
    with file(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
        f.flush()


def write_text(path: str | Path, text: str) -> Path:
    """Write text (locale encoding, as Path.write_text) atomically; returns path."""
    with open_write(path) as f:
        f.write(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write bytes atomically; returns path."""
    with open_write(path, "wb") as f:
        f.write(data)
    return Path(path)


@contextmanager
def directory(path: str | Path, temp_parent: str | Path | None = None) -> Iterator[Path]:
    """A new empty temporary folder, renamed to `path` when the block ends without an exception (an older
    `path` is moved aside first and deleted after) and deleted when it raises.

    temp_parent: where the temporary lives, by default beside `path`; another folder of the same file system
    where `path`'s own folder must hold nothing else (heareval takes every entry of its tasks folder for a
    task). The files inside are not fsynced one by one: a kit folder holds thousands, and its checksums
    (`mamclap data check`) find a torn one.
    """
    path = Path(path)
    parent = Path(temp_parent) if temp_parent is not None else path.parent
    tmp, old = _reserve(path, parent, os.mkdir), None
    try:
        yield tmp
        if path.exists() or path.is_symlink():
            # A folder can be renamed over an empty folder only: reserve one of the old's kind, move it there.
            old = _reserve(path, parent, os.mkdir if path.is_dir() and not path.is_symlink() else _new_file)
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        if old is not None and not (path.exists() or path.is_symlink()):
            os.replace(old, path)  # the rename in failed: the old version stays
        raise
    if old is not None:
        _remove(old)


def remove_stale(path: str | Path, temp_parent: str | Path | None = None) -> list[Path]:
    """Delete the temporaries an interrupted write of `path` left (`<name>.*.tmp`, files or folders, in
    temp_parent or beside path); returns them. The name may be a glob pattern (`shard-*.tar`) to clean
    several targets at once. Call it only where no other process is writing the same target."""
    path = Path(path)
    parent = Path(temp_parent) if temp_parent is not None else path.parent
    stale = sorted(parent.glob(f"{path.name}.*.tmp")) if parent.is_dir() else []
    for p in stale:
        _remove(p)
    return stale


def sha256_file(path: str | Path) -> str:
    """The SHA-256 hex digest of a file's bytes, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
