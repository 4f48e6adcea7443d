"""Augmentation, ontology and the pretraining corpus (WebDataset shards, AudioSet layout, resume).

Corpus tests need the source bank (``mamclap data bank``; $MAMCLAP_DATA/bank, default <repo>/data/bank).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import webdataset as wds

from training.kit import augment, corpus, ontology

REPO = Path(__file__).resolve().parents[1]
BANK = Path(os.environ.get("MAMCLAP_DATA", REPO / "data")) / "bank"
SR = augment.SAMPLE_RATE
CFG = corpus.CorpusConfig(clips=8, clip_seconds=2.0, shard_clips=3)


def tone(freq: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(x * np.hanning(len(x))))) * SR / len(x))


# ---------------------------------------------------------------------------------------------------------
# augment


def test_pitch_speed_and_stretch_do_what_they_say():
    x = tone(440.0)
    assert abs(peak_hz(augment.pitch_shift(x, 12)) - 880) < 5 and len(augment.pitch_shift(x, 12)) == len(x)
    fast = augment.change_speed(x, 2.0)
    assert len(fast) == len(x) // 2 and abs(peak_hz(fast) - 880) < 5
    slow = augment.time_stretch(x, 0.5)
    assert len(slow) == 2 * len(x) and abs(peak_hz(slow) - 440) < 5


def test_vary_is_deterministic_for_a_generator_state():
    x = tone(300.0)
    a, ops_a = augment.vary(x, np.random.default_rng(7))
    b, ops_b = augment.vary(x, np.random.default_rng(7))
    c, _ = augment.vary(x, np.random.default_rng(8))
    assert ops_a == ops_b and np.array_equal(a, b)
    assert not (len(a) == len(c) and np.array_equal(a, c))


def test_reverb_keeps_a_tail_and_mix_never_clips():
    rng = np.random.default_rng(0)
    x = tone(500.0, 0.5)
    wet = augment.reverb(x, rng, rt60=0.8, wet=0.5)
    assert len(wet) > len(x) and np.abs(wet[len(x):]).max() > 1e-4
    loud = [(tone(200.0) * 4, 0, 6.0), (tone(900.0) * 4, 8000, 0.0)]
    out = augment.mix(SR * 2, loud, bed=augment.colored_noise(SR, rng), bed_snr_db=10, rng=rng, peak_db=-1.0)
    assert out.shape == (SR * 2,) and out.dtype == np.float32
    assert np.isclose(np.abs(out).max(), 10 ** (-1 / 20), atol=1e-4)


def test_add_noise_hits_the_snr():
    rng = np.random.default_rng(1)
    x = tone(440.0)
    noise = augment.colored_noise(4000, rng, 1.0)
    y = augment.add_noise(x, noise, 10.0, rng)
    snr = 20 * np.log10(augment.rms(x) / augment.rms(y - x))
    assert abs(snr - 10.0) < 0.1


def test_load_clip_rejects_bad_files_clearly(tmp_path):
    sf.write(tmp_path / "cd.flac", tone(440.0), 44100)
    sf.write(tmp_path / "stereo.flac", np.stack([tone(440.0)] * 2, 1), SR)
    with pytest.raises(ValueError, match="16000 Hz"):
        augment.load_clip(tmp_path / "cd.flac")
    with pytest.raises(ValueError, match="mono"):
        augment.load_clip(tmp_path / "stereo.flac")
    with pytest.raises(ValueError, match="stretch rate"):
        augment.time_stretch(tone(440.0), 0.0)


# ---------------------------------------------------------------------------------------------------------
# ontology

SPEECH = {"id": "speech/x", "kind": "speech", "group": "v", "labels": {
    "text": "stop", "word": "stop", "language": "en", "speaker": "v", "gender": "female",
    "voice_type": "recorded", "accent": "scottish"}}
DOG = {"id": "env/d", "kind": "env", "group": "d", "labels": {"class": "dog", "detail": None}}
RAIN = {"id": "noise/r", "kind": "noise", "group": "r", "labels": {"class": "rain", "detail": None}}


def test_ontology_ids_are_unique_and_labels_carry_ancestors():
    assert len({c.mid for c in ontology.CLASSES}) == len(ontology.CLASSES)
    assert len({c.key for c in ontology.CLASSES}) == len(ontology.CLASSES)
    assert all(c.parent is None or c.parent in ontology.BY_KEY for c in ontology.CLASSES)
    names = {lab["name"] for lab in ontology.labels(DOG)}
    assert {"Bark", "Dog", "Domestic animals, pets", "Animal"} <= names
    mids = {lab["mid"] for lab in ontology.labels(SPEECH)}
    assert {"/m/09x0r", "/m/02zsn", "/mamclap/lang_en"} <= mids


def test_unknown_bank_words_fall_back_to_the_kind_root_and_are_reported():
    rec = {"id": "env/z", "kind": "env", "group": "z", "labels": {"class": "zorblax"}}
    keys, unknown = ontology.leaf_keys(rec)
    assert keys == ["things"] and unknown == ["env:zorblax"]
    with pytest.raises(ValueError, match="kind must be one of"):
        ontology.leaf_keys({"id": "q", "kind": "video", "labels": {}})


def test_caption_names_the_parts_and_is_deterministic():
    parts = [{"kind": "speech", "records": [SPEECH], "onset": 0.0, "end": 1.0},
             {"kind": "env", "records": [DOG], "onset": 2.0, "end": 3.0}]
    texts = {ontology.caption(parts, RAIN, np.random.default_rng(s)) for s in range(20)}
    assert len(texts) > 3, "templates should vary"
    for text in texts:
        assert "'stop'" in text and "dog" in text and "Scottish" in text and text.endswith(".")
        assert any(w in text for w in ("rain", "Rain"))
    assert ontology.caption(parts, RAIN, np.random.default_rng(3)) == ontology.caption(parts, RAIN,
                                                                                          np.random.default_rng(3))


# ---------------------------------------------------------------------------------------------------------
# corpus (needs the bank)


@pytest.fixture
def records(bank_records) -> list[dict]:
    return bank_records  # conftest.py (skips without the bank)


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.tar"))}


def test_corpus_is_deterministic_whatever_the_worker_count_and_excludes(records, tmp_path):
    exclude = {r["id"] for r in records[::2]}
    a = corpus.build_corpus(records, BANK, tmp_path / "a", CFG, 5, exclude, workers=1, progress=False)
    b = corpus.build_corpus(records, BANK, tmp_path / "b", CFG, 5, exclude, workers=2, progress=False)
    c = corpus.build_corpus(records, BANK, tmp_path / "c", CFG, 6, exclude, workers=1, progress=False)
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    assert shard_bytes(tmp_path / "a") != shard_bytes(tmp_path / "c")
    assert a["clips"] == CFG.clips and a["bank_ids"] == b["bank_ids"]
    assert a["bank_ids"] and not set(a["bank_ids"]) & exclude and not set(c["bank_ids"]) & exclude


def test_shards_read_back_with_webdataset(records, tmp_path):
    corpus.build_corpus(records, BANK, tmp_path, CFG, 0, set(), workers=1, progress=False)
    urls = [str(p) for p in sorted(tmp_path.glob("shard-*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert len(samples) == CFG.clips
    vocab = {c.mid for c in ontology.CLASSES}
    for s in samples:
        meta = s["json"]
        audio, sr = sf.read(io.BytesIO(s["flac"]), dtype="float32")
        assert sr == SR and audio.shape == (int(CFG.clip_seconds * SR),) and np.abs(audio).max() <= 1.0
        assert meta["key"] == s["__key__"] and meta["duration"] == CFG.clip_seconds and meta["caption"]
        assert meta["labels"] and {lab["mid"] for lab in meta["labels"]} <= vocab
        assert 0 <= len(meta["parts"]) <= 3 and (meta["parts"] or meta["bed"])
        for part in meta["parts"]:
            assert len(part["bank_ids"]) == len(part["offsets"]) >= 1


def test_interrupted_corpus_leaves_no_half_shard_and_resumes(records, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    corpus.build_corpus(records, BANK, reference, CFG, 0, set(), workers=1, progress=False)
    out = tmp_path / "interrupted"
    calls = {"n": 0}
    real_clip = corpus.ShardWriter.clip

    def clip_then_fail(self, key, rng):
        calls["n"] += 1
        if calls["n"] == CFG.shard_clips + 2:  # in the middle of the second shard
            raise KeyboardInterrupt
        return real_clip(self, key, rng)

    monkeypatch.setattr(corpus.ShardWriter, "clip", clip_then_fail)
    with pytest.raises(KeyboardInterrupt):
        corpus.build_corpus(records, BANK, out, CFG, 0, set(), workers=1, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar", "shard-000000.tar.stats.json"]
    assert not (out / "corpus.json").exists()
    monkeypatch.setattr(corpus.ShardWriter, "clip", real_clip)
    calls["n"] = 0
    corpus.build_corpus(records, BANK, out, CFG, 0, set(), workers=1, progress=False)
    assert shard_bytes(out) == shard_bytes(reference)


def test_audioset_layout_reads_back_with_pandas(records, tmp_path):
    corpus.build_corpus(records, BANK, tmp_path / "corpus", CFG, 0, set(), workers=1, progress=False)
    corpus.write_audioset_layout(tmp_path / "corpus", tmp_path / "audioset", progress=False)
    root = tmp_path / "audioset"
    classes = pd.read_csv(root / "class_labels_indices.csv")
    assert list(classes.columns) == ["index", "mid", "display_name"] and len(classes) == len(ontology.CLASSES)
    segs = pd.read_csv(root / "unbalanced_train_segments.csv", comment="#", header=None, skipinitialspace=True,
                       names=["YTID", "start_seconds", "end_seconds", "positive_labels"])
    assert len(segs) == CFG.clips and (segs.end_seconds - segs.start_seconds == CFG.clip_seconds).all()
    assert all(set(labels.split(",")) <= set(classes.mid) for labels in segs.positive_labels)
    caps = pd.read_csv(root / "captions.csv")
    assert list(caps.YTID) == list(segs.YTID) and caps.caption.str.len().min() > 5
    for ytid in segs.YTID:
        assert sf.info(str(root / "audio" / f"{ytid}.flac")).samplerate == SR
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"
