"""Augmentation, ontology and the pretraining corpus (WebDataset shards, AudioSet layout, resume).

Corpus tests need the source bank (``mamclap data bank``; $MAMCLAP_DATA/bank, default <repo>/data/bank).
"""
from __future__ import annotations

import io
import os
import re
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


SEEDS = range(30)
QUIET_WORDS = ("quiet overall", "low volume", "recorded quietly")
LOUD_WORDS = ("loud overall", "high volume", "recorded loudly")
PART_FAINT = ("quietly", "softly", "faintly")
PITCH_WORDS = ("low", "mid", "middle", "high")


def note(midi: int | None, family: str | None = "brass", rid: str = "music/sf-trumpet-060") -> dict:
    labels = {"instrument": "trumpet", "soundfont": "sf", "velocity": 100}
    if midi is not None:
        labels["midi_pitch"] = midi
    if family is not None:
        labels["family"] = family
    return {"id": rid, "kind": "music", "group": "sf", "labels": labels}


def speech(**labels) -> dict:
    base = {"text": "stop", "word": "stop", "speaker": "v", "gender": "unknown", "voice_type": "recorded",
            "accent": None, "language": None}
    return {"id": "speech/y", "kind": "speech", "group": "v", "labels": {**base, **labels}}


STROKE = {"id": "drum/k", "kind": "drum", "group": "k", "labels": {"stroke": "snare", "kit": "k"}}


def captions(parts, bed=None, **kw) -> list[str]:
    return [ontology.caption(parts, bed, np.random.default_rng(s), **kw) for s in SEEDS]


def one(kind: str, records: list[dict], **facts) -> list[dict]:
    return [{"kind": kind, "records": records, "onset": 0.0, "end": 1.0, **facts}]


def has(text: str, words) -> bool:
    return any(w in text for w in words)


def test_caption_gives_the_pitch_register_a_record_carries_and_none_it_lacks():
    assert all("low" in t for t in captions(one("music", [note(36)])))
    assert all("high" in t for t in captions(one("music", [note(84)])))
    assert all("mid" in t for t in captions(one("music", [note(60)])))
    # augmentation moves the pitch: +4 semitones takes a 71 (middle) over 72 (high); the note name, no longer
    # what is heard, is not given
    shifted = captions(one("music", [note(71)], semitones=4.0))
    assert all("high" in t for t in shifted) and not any("B4" in t for t in shifted)
    assert any("B4" in t for t in captions(one("music", [note(71)])))
    spread = captions(one("music", [note(36), note(84)]))
    assert all("low" in t and "high" in t for t in spread)
    phrase = note(40, rid="music/x-FluidR3Mono_GM-trumpet-phrase2")  # a phrase: a melody, not one note
    assert all("low" in t and "note " not in t and "E2" not in t for t in captions(one("music", [phrase])))
    for t in captions(one("music", [note(None, family=None)])):
        assert not has(t.replace("plays", ""), PITCH_WORDS) and "family" not in t and "brass" not in t, t


def test_caption_names_the_instrument_family_only_where_the_record_has_one():
    with_family = captions(one("music", [note(60)]))
    assert any("brass" in t for t in with_family) and all("trumpet" in t for t in with_family)
    assert not any("brass" in t or "family" in t for t in captions(one("music", [note(60, family=None)])))
    effects = note(60, family="sound_effects")
    assert not any("effects" in t for t in captions(one("music", [effects])))


def test_caption_gives_speaker_and_language_facts_only_where_the_record_has_them():
    for t in captions(one("speech", [speech(gender="female", language="fr")])):
        assert "French" in t and has(t, ("woman", "female")) and "'stop'" in t, t
    for t in captions(one("speech", [speech(gender="male", voice_type="synthetic", language="en")])):
        assert "English" in t and "male" in t and has(t, ("synthe", "text-to-speech")), t
    for t in captions(one("speech", [speech(accent="pirate")])):
        assert "pirate's voice" in t and "accent" not in t, t
    for t in captions(one("speech", [speech()])):  # gender unknown, no language, no accent
        assert not has(t.lower(), ("man", "male", "woman", "female", "child", "english", "accent", " in ")), t


def test_caption_gives_a_drum_pattern_its_tempo_only_where_the_mixer_knows_it():
    fast = captions(one("drum", [STROKE, STROKE, STROKE], bpm=150.0))
    assert all(has(t, ("fast tempo", "150 BPM")) for t in fast)
    assert all(has(t, ("slow tempo", "85 BPM")) for t in captions(one("drum", [STROKE] * 3, bpm=86.0)))
    assert not any(has(t, ("tempo", "BPM")) for t in captions(one("drum", [STROKE] * 3)))
    assert not any(has(t, ("tempo", "BPM")) for t in captions(one("drum", [STROKE], bpm=150.0)))  # one hit


def test_caption_says_how_loud_the_clip_its_parts_and_its_bed_are():
    dog = one("env", [DOG])
    assert all(has(t, QUIET_WORDS) for t in captions(dog, level_dbfs=-40.0))
    assert all(has(t, LOUD_WORDS) for t in captions(dog, level_dbfs=-12.0))
    for level in (-25.0, None):
        assert not any(has(t, QUIET_WORDS + LOUD_WORDS) for t in captions(dog, level_dbfs=level))
    two = [{"kind": "env", "records": [DOG], "onset": 0.0, "end": 1.0, "level_dbfs": -20.0},
           {"kind": "speech", "records": [SPEECH], "onset": 0.5, "end": 1.5, "level_dbfs": -27.0}]
    for t in captions(two):  # the speech part, 7 dB under the dog, is the faint one
        assert re.search(r"(quietly|softly|faintly) (says|speaks|utters) 'stop'", t), t
        assert sum(t.count(w) for w in PART_FAINT) == 1, t
    two[1]["level_dbfs"] = -22.0  # 2 dB apart: neither is faint
    assert not any(has(t, PART_FAINT) for t in captions(two))
    assert all("faint" in t or "barely" in t for t in captions(dog, RAIN, bed_snr_db=22.0))
    assert all(has(t, ("loud rain", "rain loud", "heavy rain")) for t in captions(dog, RAIN, bed_snr_db=4.0))
    assert not any(has(t, ("faint", "barely", "loud", "heavy")) for t in captions(dog, RAIN, bed_snr_db=12.0))


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


def test_pcm16_is_what_the_flac_holds():
    x = augment.normalize_peak(np.random.default_rng(0).standard_normal(SR).astype(np.float32), -0.5)
    written, _ = sf.read(io.BytesIO(corpus._flac_bytes(x)), dtype="int16")
    assert np.array_equal(corpus.pcm16(x), written)


def test_caption_levels_come_from_the_written_samples(records, monkeypatch):
    """The clip level the caption gets is the active level of the FLAC's samples; a mix peak-normalised to
    -40 dBFS is called quiet."""
    quiet = corpus.CorpusConfig(clips=4, clip_seconds=2.0, shard_clips=4, peak_db=(-40.0, -40.0))
    seen = []
    real = ontology.caption
    monkeypatch.setattr(ontology, "caption", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    writer, rng = corpus.ShardWriter(records, BANK, quiet, 0), np.random.default_rng(3)
    for i in range(4):
        audio, meta = writer.clip(f"c{i}", rng)
        written, _ = sf.read(io.BytesIO(corpus._flac_bytes(audio)), dtype="int16")
        if meta["parts"]:
            assert seen[-1]["level_dbfs"] == pytest.approx(corpus.active_level_dbfs(written), abs=1e-9)
            assert seen[-1]["level_dbfs"] < ontology.QUIET_DBFS
        assert any(w in meta["caption"] for w in QUIET_WORDS), meta["caption"]


def test_audio_does_not_depend_on_the_caption_code(records, monkeypatch):
    """The same clips, samples and metadata but the caption, with the caption code swapped for one that draws
    heavily from its generator: a caption that drew from the clip's stream would shift every later clip."""
    def render(n=6):
        writer, rng = corpus.ShardWriter(records, BANK, CFG, 11), np.random.default_rng([11, 0])
        return [writer.clip(f"c{i}", rng) for i in range(n)]

    reference = render()

    def greedy(parts, bed_rec, bed_meta, reverberant, canvas, audio, cap_rng):
        cap_rng.random(1000)
        canvas_copy = canvas.copy()
        return f"stub {len(parts)} {float(np.abs(canvas_copy).max()):.3f}"

    monkeypatch.setattr(corpus, "caption_text", greedy)
    swapped = render()
    assert any(m["caption"] != s["caption"] for (_, m), (_, s) in zip(reference, swapped))
    for (a, ma), (b, mb) in zip(reference, swapped):
        assert np.array_equal(a, b) and a.dtype == b.dtype
        assert {k: v for k, v in ma.items() if k != "caption"} == {k: v for k, v in mb.items() if k != "caption"}
