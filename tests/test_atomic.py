"""Atomic files and folders (hear_mamclap.atomic): all or nothing, no temporaries left, the umask honoured."""
from __future__ import annotations

import os
import stat

import pytest

from hear_mamclap import atomic


class Boom(RuntimeError):
    pass


@pytest.fixture
def umask_027():
    """A umask that tempfile's private 0600 / 0700 would not give: group may read, others nothing."""
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_text_replaces_the_whole_file(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic.write_text(target, "first")
    atomic.write_text(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]
    atomic.write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"


@pytest.mark.parametrize("how", ["open_write", "file"])
def test_an_exception_leaves_the_old_file_and_no_temporary(tmp_path, how):
    target = tmp_path / "checkpoint.pt"
    target.write_text("old")
    with pytest.raises(Boom):
        if how == "open_write":
            with atomic.open_write(target) as f:
                f.write("half of the new")
                f.flush()
                raise Boom
        else:
            with atomic.file(target) as tmp:
                tmp.write_text("half of the new")
                assert tmp.parent == target.parent and tmp.name.startswith("checkpoint.pt.")
                raise Boom
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_an_exception_before_the_first_write_leaves_nothing(tmp_path):
    target = tmp_path / "new.txt"
    with pytest.raises(Boom), atomic.open_write(target):
        raise Boom
    assert list(tmp_path.iterdir()) == []


def test_only_whole_files_are_opened(tmp_path):
    with pytest.raises(ValueError, match="whole new file"), atomic.open_write(tmp_path / "x", "a"):
        pass


def test_files_and_folders_honour_the_umask(tmp_path, umask_027):
    atomic.write_text(tmp_path / "a.txt", "x")
    with atomic.file(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"x")
    with atomic.directory(tmp_path / "d") as tmp:
        (tmp / "inner").mkdir()
    assert mode(tmp_path / "a.txt") == mode(tmp_path / "b.bin") == 0o640
    assert mode(tmp_path / "d") == 0o750


def test_directory_appears_whole_and_replaces_the_old_one(tmp_path):
    target = tmp_path / "stage"
    with atomic.directory(target) as tmp:
        (tmp / "one.txt").write_text("1")
        assert not target.exists()
    assert [p.name for p in target.iterdir()] == ["one.txt"]
    with atomic.directory(target) as tmp:
        (tmp / "two.txt").write_text("2")
    assert [p.name for p in target.iterdir()] == ["two.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]  # neither the new temporary nor the old copy


def test_directory_failure_keeps_the_old_one_and_cleans_up(tmp_path):
    target = tmp_path / "stage"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(Boom), atomic.directory(target) as tmp:
        (tmp / "half").mkdir()
        (tmp / "half" / "x").write_text("x")
        raise Boom
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]


def test_directory_temporary_can_live_elsewhere(tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    with atomic.directory(tasks / "task-a", temp_parent=tmp_path) as tmp:
        assert tmp.parent == tmp_path and list(tasks.iterdir()) == []
        (tmp / "meta.json").write_text("{}")
    assert (tasks / "task-a" / "meta.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tasks"]


def test_remove_stale_deletes_only_the_targets_temporaries(tmp_path):
    keep = [tmp_path / "checkpoint.pt", tmp_path / "other.pt.1a2b3c4d.tmp", tmp_path / "checkpoint.pt.json"]
    for p in keep:
        p.write_text("keep")
    stale_file = tmp_path / "checkpoint.pt.1a2b3c4d.tmp"
    stale_file.write_text("half")
    stale_dir = tmp_path / "checkpoint.pt.5e6f7a8b.tmp"
    (stale_dir / "x").mkdir(parents=True)
    assert atomic.remove_stale(tmp_path / "checkpoint.pt") == sorted([stale_file, stale_dir])
    assert sorted(tmp_path.iterdir()) == sorted(keep)
    assert atomic.remove_stale(tmp_path / "missing" / "x") == []


def test_remove_stale_takes_a_pattern(tmp_path):
    for name in ("shard-000.tar.aaaa0000.tmp", "shard-001.tar.bbbb1111.tmp", "shard-000.tar", "corpus.json"):
        (tmp_path / name).write_text("")
    removed = atomic.remove_stale(tmp_path / "shard-*.tar")
    assert [p.name for p in removed] == ["shard-000.tar.aaaa0000.tmp", "shard-001.tar.bbbb1111.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.json", "shard-000.tar"]
