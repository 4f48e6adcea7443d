"""The corpus bank (training/kit/corpus_bank.py): pretraining-only sources that never touch evaluation.

Plans on the real unpacked packages and the tiny kit's holdout; renders a few clips of each source into
Ogg Opus; builds a kit's corpus from it (corpus only, then the full build with its checks).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training.kit import bank as bank_mod
from training.kit import build
from training.kit import corpus_bank as cb
from training.kit.debian import DATA_PACKAGES, SetupError, package_info

CACHE = build.cache_root()


def _packages_ready() -> bool:
    try:
        for p in DATA_PACKAGES:
            package_info(p, CACHE)
    except SetupError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _packages_ready(), reason="Debian sources not set up: run `make setup`")


@pytest.fixture(scope="module")
def holdout(tiny_hear_suite, tiny_superb, bank_records) -> dict:
    _, hear = tiny_hear_suite
    _, superb = tiny_superb
    return build.evaluation_holdout(hear, superb, bank_records)


@pytest.fixture(scope="module")
def planned(bank_records, bank_dir, holdout):
    return cb.plan(CACHE, bank_records, bank_dir, holdout, seed=0)


def test_plan_never_reuses_an_evaluation_file_or_a_held_out_unit(planned, bank_records, holdout):
    jobs, _, counts = planned
    used = cb._used_files(bank_records)
    base_ids = {r["id"] for r in bank_records}
    excluded = holdout["test_ids"] | holdout["heldout_ids"]
    new = [j for j in jobs if j["id"] not in base_ids]
    assert len({j["id"] for j in jobs}) == len(jobs)
    assert not [j["id"] for j in new if (j["source"]["package"], j["source"]["file"]) in used and not j["source"]["synth"]]
    assert not [j["id"] for j in jobs if cb.unit_values(j) & holdout["heldout_units"]]
    assert not {j["id"] for j in jobs} & excluded
    # The base part is every clip the holdout allows, transcoded from the bank's files.
    assert {j["id"] for j in jobs if j["id"] in base_ids} == base_ids - excluded
    assert counts["base"]["eligible"] == len(base_ids - excluded)
    # More distinct sound than the base part, in every foreground kind, and >= 200 environmental recordings.
    by_kind = {k: sum(1 for j in new if j["kind"] == k) for k in ("speech", "music", "drum", "env")}
    assert by_kind["env"] >= 200 and by_kind["speech"] >= 1000 and by_kind["drum"] > 0
    assert by_kind["music"] == 128 * cb.PHRASES_PER_PROGRAM
    assert {j["render"]["program"] for j in new if j["kind"] == "music"} == set(range(128))
    assert {j["labels"]["soundfont"] for j in new if j["kind"] == "music"} == {cb.CORPUS_SOUNDFONT}
    assert not [j for j in new if j["kind"] == "env" and cb.NOT_ENV.search(j["render"]["path"])]


def test_the_plan_is_seeded(bank_records, bank_dir, holdout, planned):
    again, _, _ = cb.plan(CACHE, bank_records, bank_dir, holdout, seed=0)
    other, _, _ = cb.plan(CACHE, bank_records, bank_dir, holdout, seed=1)
    assert again == planned[0]
    assert other != planned[0]


def test_a_held_out_unit_drops_its_new_records(bank_records, bank_dir, holdout):
    """A voice the kit holds out takes its corpus-bank utterances with it (the rule, not the tiny kit's luck)."""
    speaker = "tuxpaint-fr"
    more = dict(holdout, heldout_units=holdout["heldout_units"] | {speaker})
    jobs, _, counts = cb.plan(CACHE, bank_records, bank_dir, more, seed=0)
    assert not [j for j in jobs if j["labels"].get("speaker") == speaker]
    assert counts["speech"]["held_out_unit"] > 0


def test_phrase_renders_the_same_twice_and_lasts_its_notes():
    pkg, rel = cb.bs.SOUNDFONTS[cb.CORPUS_SOUNDFONT]
    notes, _ = cb.phrase_notes(np.random.default_rng(3))
    job = {"render": {"op": "phrase", "soundfont": str(build.cache_root() / "debroot" / pkg / rel), "program": 40,
                      "notes": notes}}
    a, b = bank_mod.render(job, {}), bank_mod.render(job, {})
    assert np.array_equal(a, b)
    end = max(on + d for on, d, _, _ in notes)
    assert 0.5 * end < len(a) / bank_mod.SR <= end + cb.bs.NOTE_RELEASE_S + 0.01
    assert abs(np.abs(a).max() - bank_mod.PEAK) < 1e-3


def test_corpus_bank_builds_in_opus_and_a_kit_mixes_its_corpus_from_it(tmp_path, bank_dir, tiny_hear_suite,
                                                                        tiny_superb):
    # A kit folder holding the tiny kit's evaluation stages (what the corpus bank reads its holdout from).
    data = tmp_path / "data"
    kit = build.kit_dir("tiny", 0, data)
    (kit / "hear").mkdir(parents=True)
    (kit / "superb").mkdir(parents=True)
    (kit / "hear" / "stage.json").write_text(json.dumps(tiny_hear_suite[1]))
    (kit / "superb" / "stage.json").write_text(json.dumps(tiny_superb[1]))
    out = data / "corpus-bank-tiny-s0"
    summary = cb.build_corpus_bank(out, kit, bank_dir, CACHE, seed=0, workers=1, limit=6, progress=False)
    assert summary["kind"] == "corpus bank" and summary["codec"] == "opus" and summary["kit"] == kit.name
    records = bank_mod.load_bank(out)  # validates every record and finds every file
    assert records and all(r["path"].endswith(".opus") for r in records)
    assert {r["kind"] for r in records} >= {"speech", "music", "drum", "env"}
    x, sr = sf.read(str(out / records[0]["path"]), dtype="float32")
    assert sr == 16000 and abs(len(x) / sr - records[0]["duration"]) < 1e-3
    shutil.rmtree(kit)  # the kit build renders its own evaluation stages

    # Corpus only (no bank needed), then the full build reuses it and checks it against the holdout.
    only = build.build_kit("tiny", 0, data, CACHE, workers=1, bank_dir=tmp_path / "no-bank", corpus_bank=out,
                           corpus_only=True, progress=False)
    cb_ids = {r["id"] for r in records}
    assert only["clips"] == build.SIZES["tiny"].corpus.clips and set(only["bank_ids"]) <= cb_ids
    kit_cb = build.kit_dir("tiny", 0, data, corpus_bank=True)
    assert kit_cb.name.endswith("-cb") and not (kit_cb / "manifest.json").exists()
    manifest = build.build_kit("tiny", 0, data, CACHE, workers=1, bank_dir=bank_dir, corpus_bank=out, progress=False)
    assert manifest["timings_s"]["corpus"] == "cached"
    assert manifest["corpus_bank"]["clips"] == len(records)
    assert manifest["no_overlap"]["intersection"] == []
    assert manifest["datasets"]["corpus"]["bank_ids"] == len(set(only["bank_ids"]))
    assert build.check_kit(kit_cb)["no_overlap"]["intersection"] == []

    # A corpus bank made for another holdout is refused with one line.
    meta = json.loads((out / "bank.json").read_text())
    (out / "bank.json").write_text(json.dumps(dict(meta, holdout_digest="0" * 64)))
    shutil.rmtree(kit_cb / "hear")
    with pytest.raises(ValueError, match="another holdout"):
        build.build_kit("tiny", 0, data, CACHE, workers=1, bank_dir=bank_dir, corpus_bank=out, progress=False)
    (out / "bank.json").write_text(json.dumps(dict(meta, kit="kit-medium-s0")))
    with pytest.raises(ValueError, match="expected a corpus bank made for kit-tiny-s0"):
        build.build_kit("tiny", 0, data, CACHE, workers=1, bank_dir=bank_dir, corpus_bank=out, progress=False)


def test_corpus_bank_needs_a_built_kit(tmp_path, bank_dir):
    with pytest.raises(FileNotFoundError, match="expected a built kit's hear stage"):
        cb.build_corpus_bank(tmp_path / "cb", tmp_path / "kit-none", bank_dir, CACHE)
