"""The mini HEAR suite: hearpreprocess's layout, held-out test material, and heareval reading it.

Needs the source bank (``mamclap data bank``; $MAMCLAP_DATA/bank, default <repo>/data/bank).
"""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training.kit.hear_suite import (NFOLDS, PITCH_RANGE, SAMPLE_RATE, SPLITS, build_hear_suite, specs,
                                     split_units)

TASKS = list(specs("tiny"))


@pytest.fixture
def suite(tiny_hear_suite) -> tuple[Path, dict]:
    """(tasks folder, manifest) of the session's tiny suite (conftest.py)."""
    return tiny_hear_suite


@pytest.fixture
def records(bank_records) -> list[dict]:
    return bank_records


def test_suite_has_every_task_and_nothing_else(suite):
    out, manifest = suite
    # heareval's embeddings runner treats every entry of the tasks folder as a task.
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}-v1.0-full" for t in TASKS)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary folders left behind"
    assert set(TASKS) <= set(manifest)


@pytest.mark.parametrize("task", TASKS)
def test_task_folder_matches_hearpreprocess_layout(suite, task):
    out, _ = suite
    folder = out / f"{task}-v1.0-full"
    meta = json.loads((folder / "task_metadata.json").read_text())
    for key in ("task_name", "version", "embedding_type", "prediction_type", "split_mode", "sample_duration",
                "evaluation", "default_mode", "mode", "splits"):
        assert key in meta, key
    assert meta["task_name"] == task and meta["version"] == "v1.0" and meta["mode"] == "full"
    if meta["split_mode"] == "trainvaltest":
        assert meta["splits"] == SPLITS and "nfolds" not in meta
    else:
        assert meta["split_mode"] == "presplit_kfold"
        assert meta["splits"] == [f"fold{i:02d}" for i in range(NFOLDS)] and meta["nfolds"] == NFOLDS

    with (folder / "labelvocabulary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["idx"]) for r in rows] == list(range(len(rows)))
    vocab = {r["label"] for r in rows}
    assert len(vocab) == len(rows) >= 2

    n = int(meta["sample_duration"] * SAMPLE_RATE)
    for split in meta["splits"]:
        labels = json.loads((folder / f"{split}.json").read_text())
        wavs = sorted(p.name for p in (folder / str(SAMPLE_RATE) / split).glob("*.wav"))
        assert sorted(labels) == wavs and wavs, f"{split}.json and 16000/{split}/ disagree"
        for name in wavs[:5]:
            info = sf.info(str(folder / str(SAMPLE_RATE) / split / name))
            assert (info.samplerate, info.channels, info.frames, info.subtype) == (SAMPLE_RATE, 1, n, "PCM_16")
        for name, lab in labels.items():
            if meta["embedding_type"] == "scene":
                assert {str(x) for x in lab} <= vocab
                if meta["prediction_type"] == "multiclass":
                    assert len(lab) == 1, name
            else:
                assert lab, f"{name} has no events"
                for ev in lab:
                    assert set(ev) == {"label", "start", "end"} and ev["label"] in vocab
                    assert 0 <= ev["start"] < ev["end"] <= 1000 * meta["sample_duration"]


def test_pitch_vocabulary_is_the_contiguous_midi_range(suite):
    out, _ = suite
    with (out / "mini_nsynth_pitch-v1.0-full" / "labelvocabulary.csv").open() as f:
        labels = [int(r["label"]) for r in csv.DictReader(f)]
    # heareval's chroma_acc compares class indices mod 12, so index order must be pitch order with no gaps.
    assert labels == list(range(PITCH_RANGE[0], PITCH_RANGE[1] + 1))


@pytest.mark.parametrize("task", [t for t in TASKS if specs("tiny")[t].split_mode == "trainvaltest"])
def test_every_test_class_is_trained_on(suite, task):
    out, _ = suite
    folder = out / f"{task}-v1.0-full"

    def labels(split: str) -> set[str]:
        data = json.loads((folder / f"{split}.json").read_text())
        if specs("tiny")[task].embedding_type == "event":
            return {ev["label"] for evs in data.values() for ev in evs}
        return {str(x) for lab in data.values() for x in lab}

    assert labels("test") <= labels("train")


def test_keyword_spotting_has_the_twelve_speech_commands_classes(suite):
    out, _ = suite
    with (out / "mini_speech_commands-v1.0-full" / "labelvocabulary.csv").open() as f:
        labels = {r["label"] for r in csv.DictReader(f)}
    assert labels == {"yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_unknown_", "_silence_"}


# The generalisation unit each task holds out, recomputed from bank records.
TEXT_UNITS = {"mini_speaker_id": "speaker", "mini_language_id": "language"}


def unit_of(task: str, rec: dict) -> str:
    if task in TEXT_UNITS:  # held-out words of each speaker or language
        return f"{rec['labels'][TEXT_UNITS[task]]}:{rec['labels']['text']}"
    return rec["group"]  # voice, soundfont, kit or source file


@pytest.mark.parametrize("task", TASKS)
def test_test_material_is_held_out_from_train(suite, records, task):
    """No voice, soundfont, kit, source file or (speaker/language, text) of a test split (or of another fold)
    reaches the same task's train split."""
    _, manifest = suite
    by_id = {r["id"]: r for r in records}
    entry = manifest[task]
    split_mode = specs("tiny")[task].split_mode
    units = {split: {unit_of(task, by_id[i]) for i in ids} for split, ids in entry.items()
             if split in specs("tiny")[task].splits}
    if split_mode == "trainvaltest":
        assert units["test"] and units["train"]
        assert not units["test"] & units["train"], f"{task}: test {entry['held_out_by']} also in train"
    else:
        folds = sorted(units)
        for i, a in enumerate(folds):
            for b in folds[i + 1:]:
                assert not units[a] & units[b], f"{task}: {a} and {b} share source files"


def test_split_units_holds_out_and_rejects_too_few():
    rng = np.random.default_rng(0)
    train, valid, test = split_units([f"v{i}" for i in range(10)], rng, "voices")
    assert len(test) == 2 and len(valid) == 1 and len(train) == 7
    assert not set(train) & set(test) and not set(valid) & set(test)
    with pytest.raises(ValueError, match="at least 2"):
        split_units(["only-one", "only-one"], rng, "voices")


def test_bad_size_is_refused(records, bank_dir, tmp_path):
    with pytest.raises(ValueError, match="size must be one of"):
        build_hear_suite(records, tmp_path / "tasks", "huge", seed=0, bank_dir=bank_dir)


def test_unreadable_clip_is_skipped_and_counted(records, bank_dir, tmp_path):
    drums = [r for r in records if r["kind"] == "drum"]
    broken = dict(drums[0], id="drum/broken-file", path=str(tmp_path / "broken.flac"))
    (tmp_path / "broken.flac").write_bytes(b"not a flac file")
    manifest = build_hear_suite(records + [broken], tmp_path / "tasks", "tiny", seed=0, bank_dir=bank_dir,
                                tasks=["mini_drum_stroke"])
    assert list(manifest["skipped_bank_clips"]) == ["drum/broken-file"]
    assert (tmp_path / "tasks" / "mini_drum_stroke-v1.0-full" / "task_metadata.json").is_file()


def file_digests(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def without_timings(manifest: dict) -> dict:
    return {k: {kk: vv for kk, vv in v.items() if kk != "build_seconds"} if isinstance(v, dict) else v
            for k, v in manifest.items()}


@pytest.mark.slow
def test_workers_render_the_same_files_as_the_serial_build(suite, records, bank_dir, tmp_path):
    """Tasks rendered side by side in 2 processes: byte for byte the session's suite, built in this one."""
    out, manifest = suite
    par = build_hear_suite(records, tmp_path / "tasks", "tiny", seed=0, bank_dir=bank_dir, workers=2)
    serial, parallel = file_digests(out), file_digests(tmp_path / "tasks")
    assert len(serial) > 100 and serial == parallel
    assert without_timings(par) == without_timings(manifest)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]


@pytest.mark.slow
def test_workers_skip_an_unreadable_clip_and_count_it(records, bank_dir, tmp_path):
    drums = [r for r in records if r["kind"] == "drum"]
    broken = dict(drums[0], id="drum/broken-file", path=str(tmp_path / "broken.flac"))
    (tmp_path / "broken.flac").write_bytes(b"not a flac file")
    manifest = build_hear_suite(records + [broken], tmp_path / "tasks", "tiny", seed=0, bank_dir=bank_dir,
                                tasks=["mini_esc", "mini_drum_stroke"], workers=2)
    assert list(manifest["skipped_bank_clips"]) == ["drum/broken-file"]
    assert "broken-file" not in json.dumps(manifest["mini_drum_stroke"])
    for task in ("mini_esc", "mini_drum_stroke"):
        assert (tmp_path / "tasks" / f"{task}-v1.0-full" / "task_metadata.json").is_file()


@pytest.mark.slow
def test_a_failed_task_in_a_worker_is_raised_and_leaves_no_half_written_folder(records, bank_dir, tmp_path):
    speech_only = [r for r in records if r["kind"] == "speech"]
    with pytest.raises(ValueError, match="at least 2"):
        build_hear_suite(speech_only, tmp_path / "tasks", "tiny", seed=0, bank_dir=bank_dir,
                         tasks=["mini_speaker_id", "mini_drum_stroke"], workers=2)
    assert not (tmp_path / "tasks" / "mini_drum_stroke-v1.0-full").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]


def test_same_seed_same_suite_other_seed_other_suite(records, bank_dir, tmp_path):
    def build(seed: int, name: str) -> tuple[str, bytes]:
        build_hear_suite(records, tmp_path / name, "tiny", seed=seed, bank_dir=bank_dir, tasks=["mini_drum_stroke"])
        folder = tmp_path / name / "mini_drum_stroke-v1.0-full"
        first = sorted((folder / "16000" / "test").glob("*.wav"))[0]
        return (folder / "test.json").read_text(), first.read_bytes()

    assert build(0, "a") == build(0, "b")
    assert build(0, "a") != build(1, "c")


def test_a_failed_task_leaves_no_half_written_folder(records, bank_dir, tmp_path):
    speech_only = [r for r in records if r["kind"] == "speech"]
    with pytest.raises(ValueError):
        build_hear_suite(speech_only, tmp_path / "tasks", "tiny", seed=0, bank_dir=bank_dir, tasks=["mini_drum_stroke"])
    assert not (tmp_path / "tasks" / "mini_drum_stroke-v1.0-full").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_heareval_embeds_every_task_and_predicts_scene_and_event_tasks(suite, tmp_path):
    """heareval's own runners: embeddings of the log-mel baseline for all nine tasks, then downstream
    training and test scores for a scene task, the k-fold task and the event task."""
    pytest.importorskip("heareval")
    from training.eval.hear import embed, predict

    out, _ = suite
    # A kit keeps a stage file beside its tasks; heareval alone would take it for a task.
    tasks = tmp_path / "hear"
    tasks.mkdir()
    for folder in out.iterdir():
        (tasks / folder.name).symlink_to(folder)
    (tasks / "stage.json").write_text("{}")
    emb_dir = embed("hear_mamclap.baselines.logmel", None, tasks, tmp_path / "embeddings")
    for task in TASKS:
        task_dir = emb_dir / f"{task}-v1.0-full"
        assert (task_dir / ".done.embeddings").exists(), task
        meta = json.loads((task_dir / "task_metadata.json").read_text())
        for split in meta["splits"]:
            rows, dim = json.loads((task_dir / f"{split}.embedding-dimensions.json").read_text())
            assert rows > 0 and dim in (128, 256)

    chosen = ["mini_drum_stroke", "mini_esc", "mini_dcase"]
    scores = predict([emb_dir / f"{t}-v1.0-full" for t in chosen], grid="faster", grid_points=1,
                     work_dir=tmp_path / "work")
    drum = scores[str((emb_dir / "mini_drum_stroke-v1.0-full").resolve())]
    assert 0.0 <= drum["test"]["test_top1_acc"] <= 1.0
    esc = scores[str((emb_dir / "mini_esc-v1.0-full").resolve())]
    assert "test_top1_acc_mean" in esc["aggregated_scores"] and len([k for k in esc if k.startswith("fold")]) == NFOLDS
    dcase = scores[str((emb_dir / "mini_dcase-v1.0-full").resolve())]
    assert 0.0 <= dcase["test"]["test_event_onset_200ms_fms"] <= 1.0
    assert "test_segment_1s_er" in dcase["test"]
