"""Source bank contract: schema, audio format, determinism, bad sources skipped, clean failures.

Needs the Debian packages unpacked in $MAMCLAP_CACHE (bin/setup / `mamclap data setup` does it); the
banks built here are restricted with limit / sources so the whole file runs in about a minute.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training.kit import bank_sources
from training.kit.bank import KINDS, SR, _batches, _render_batch, build_bank, load_bank, plan, validate_record
from training.kit.build import cache_root
from training.kit.debian import DATA_PACKAGES, SetupError, package_info, package_root, setup

CACHE = cache_root()


def _packages_ready() -> bool:
    try:
        for p in DATA_PACKAGES:
            package_info(p, CACHE)
    except SetupError:
        return False
    return shutil.which("espeak-ng") is not None and shutil.which("flite") is not None


pytestmark = pytest.mark.skipif(not _packages_ready(), reason="Debian sources not set up: run `make setup`")


def _digest(bank: Path) -> str:
    h = hashlib.sha256((bank / "index.jsonl").read_bytes())
    for p in sorted((bank / "audio").rglob("*.flac")):
        h.update(str(p.relative_to(bank)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def small_bank(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bank") / "bank"
    build_bank(out, CACHE, seed=0, workers=2, limit=6, progress=False)
    return out


def test_setup_is_fast_and_offline_when_done():
    info = setup(CACHE, install_tools=False)
    assert info["downloaded_bytes"] == 0 and info["seconds"] < 2.0
    assert set(info["packages"]) == set(DATA_PACKAGES)
    assert all(v["version"] and v["license"] for v in info["packages"].values())


def test_full_plan_covers_the_tasks():
    """The whole bank's plan (no audio rendered) has what the evaluation tasks need."""
    jobs, _ = plan(CACHE, seed=0)
    by = defaultdict(list)
    for j in jobs:
        by[j["kind"]].append(j)
    speech = [j["labels"] for j in by["speech"]]
    kws_voices = {s["speaker"] for s in speech if s["word"] in bank_sources.KWS_WORDS}
    assert len(kws_voices) >= 40
    for w in bank_sources.KWS_WORDS:  # every keyword in (nearly) every keyword voice
        assert sum(s["word"] == w for s in speech) >= 40, w
    assert len({s["word"] for s in speech if s["word"] in bank_sources.UNKNOWN_WORDS}) >= 20
    per_speaker = Counter(s["speaker"] for s in speech)
    assert sum(c >= 10 for c in per_speaker.values()) >= 12
    recorded = Counter(s["language"] for s in speech if s["voice_type"] == "recorded")
    assert sum(c >= 15 for c in recorded.values()) >= 6
    music = [j["labels"] for j in by["music"]]
    assert len({m["soundfont"] for m in music}) >= 3 and len({m["instrument"] for m in music}) >= 8
    assert {m["midi_pitch"] for m in music} == set(range(21, 109))
    for m in music:
        _, _, lo, hi = bank_sources.INSTRUMENTS[m["instrument"]]
        assert lo <= m["midi_pitch"] <= hi
    assert len({j["labels"]["kit"] for j in by["drum"]}) >= 4
    strokes_per_kit = Counter(j["labels"]["stroke"] for j in by["drum"])
    assert all(strokes_per_kit[s] >= 4 for s in ("kick", "snare", "closed_hihat", "tom", "crash"))
    env_files = defaultdict(set)
    for j in by["env"]:
        env_files[j["labels"]["class"]].add(j["group"])
    assert len(env_files) >= 10 and all(len(f) >= 3 for f in env_files.values())
    assert len({j["labels"]["class"] for j in by["noise"]}) >= 4


def test_small_bank_records_and_audio(small_bank: Path):
    records = load_bank(small_bank)
    assert {r["kind"] for r in records} == set(KINDS)
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)
    summary = json.loads((small_bank / "bank.json").read_text())
    assert summary["clips"] == {k: sum(r["kind"] == k for r in records) for k in KINDS}
    assert summary["total_bytes"] == sum(p.stat().st_size for p in small_bank.rglob("*") if p.is_file()) \
        - (small_bank / "bank.json").stat().st_size
    for r in records:
        info = sf.info(str(small_bank / r["path"]))
        assert (info.samplerate, info.channels, info.format, info.subtype) == (SR, 1, "FLAC", "PCM_16"), r["id"]
        assert abs(info.frames / SR - r["duration"]) < 1e-3, r["id"]
        x, _ = sf.read(str(small_bank / r["path"]), dtype="float32")
        assert 0.7 < np.abs(x).max() < 0.9, r["id"]  # scaled to the 0.8 peak, never clipped
        assert r["source"]["version"] and r["source"]["license"], r["id"]
    for bad in ({}, {"id": "speech/x", "path": "audio/music/x.flac", "kind": "speech", "duration": 1.0,
                     "group": "g", "source": {}, "labels": {}}):
        with pytest.raises(ValueError):
            validate_record(bad)


def test_same_seed_same_bytes(small_bank: Path, tmp_path: Path):
    again = tmp_path / "bank"
    build_bank(again, CACHE, seed=0, workers=1, limit=6, progress=False)  # other worker count, same bytes
    assert _digest(again) == _digest(small_bank)
    other = tmp_path / "bank1"
    build_bank(other, CACHE, seed=1, workers=2, limit=6, sources=("espeak",), progress=False)
    ids0 = {r["id"] for r in load_bank(small_bank) if r["source"]["synth"] == "espeak-ng"}
    assert {r["id"] for r in load_bank(other)} != ids0  # the seed chooses voices and words


def test_notes_do_not_depend_on_batch_order(tmp_path: Path):
    """Which process renders which batch, in which order, must not change a note's bytes."""
    jobs, _ = plan(CACHE, seed=0, sources=("music",))
    # TimGM6mb loads in milliseconds (the .sf3 fonts take seconds); its piano and organ showed the leak
    jobs = [j for j in jobs if j["labels"]["soundfont"] == "TimGM6mb" and j["labels"]["midi_pitch"] % 6 == 0
            and j["labels"]["instrument"] in ("acoustic_grand_piano", "drawbar_organ", "violin")]
    batches = _batches(jobs)
    assert len(batches) == 3 and min(len(b) for b in batches) > 1

    def render_all(order: list[list[dict]], name: str) -> dict[str, bytes]:
        out = tmp_path / name
        (out / "audio" / "music").mkdir(parents=True)
        for b in order:
            _render_batch(b, str(out))
        return {p.name: p.read_bytes() for p in (out / "audio" / "music").iterdir()}

    assert render_all(batches, "forward") == render_all(batches[::-1], "reverse")


def test_bad_sources_are_skipped_and_counted(tmp_path: Path):
    """An empty, a truncated and a garbage file in a copy of a package: skipped with reasons, build done."""
    cache = tmp_path / "cache"
    (cache / "debroot").mkdir(parents=True)
    for p in DATA_PACKAGES:
        if p != "minetest-data":
            (cache / "debroot" / p).symlink_to(package_root(p, CACHE))
    src = package_root("minetest-data", CACHE)
    shutil.copytree(src, cache / "debroot" / "minetest-data", symlinks=True)
    doors = sorted((cache / "debroot/minetest-data").rglob("doors_*door_*.ogg"))[:3]
    assert len(doors) == 3
    doors[0].write_bytes(b"")
    doors[1].write_bytes(doors[1].read_bytes()[:300])
    doors[2].write_bytes(np.random.default_rng(0).bytes(5000))
    out = tmp_path / "bank"
    summary = build_bank(out, cache, seed=0, workers=2, sources=("env",), progress=False)
    skipped = {s["id"]: s["reason"] for s in summary["skipped"] if "id" in s}
    for d in doors:
        hit = [i for i in skipped if i.endswith(d.stem.replace(".", "_"))]
        assert hit, f"{d.name} was not skipped: {sorted(skipped)}"
    assert sum(summary["skipped_count"].values()) >= 3
    records = load_bank(out)
    assert len(records) == summary["clips"]["env"] > 50
    assert not (tmp_path / ".bank.partial").exists()


def test_missing_package_names_the_setup_step(tmp_path: Path):
    with pytest.raises(SetupError, match="make setup"):
        build_bank(tmp_path / "bank", tmp_path / "empty-cache", seed=0, limit=2, progress=False)
    assert not (tmp_path / "bank").exists()


def test_stale_partial_build_is_replaced(tmp_path: Path):
    out = tmp_path / "bank"
    stale = tmp_path / ".bank.partial"
    (stale / "audio").mkdir(parents=True)
    (stale / "index.jsonl").write_text("half a line")
    build_bank(out, CACHE, seed=0, workers=1, limit=3, sources=("flite", "drums"), progress=False)
    assert not stale.exists()
    assert len(load_bank(out)) == 6
    with pytest.raises(FileNotFoundError, match="mamclap data bank"):
        load_bank(tmp_path / "nowhere")
