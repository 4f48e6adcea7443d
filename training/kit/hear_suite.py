"""The mini HEAR suite: nine tasks built from the source bank, in the layout hearpreprocess writes.

Each task is a folder ``<task>-v1.0-full/`` that heareval 2021.1.3 reads unchanged:

    task_metadata.json      hearpreprocess's task config (task_name, version, embedding_type, prediction_type,
                            split_mode, sample_duration, evaluation, default_mode, mode, splits, nfolds, ...)
    labelvocabulary.csv     idx,label (labels sorted, as hearpreprocess writes them; pitch: all of 21-108)
    <split>.json            scene: {"file.wav": [label, ...]}; event: {"file.wav": [{"label", "start", "end"}]}
                            with start and end in milliseconds
    16000/<split>/*.wav     16 kHz mono 16-bit PCM, every clip exactly sample_duration long

Tasks (speech, music, environment), and what their test material holds out:

    mini_speech_commands    10 words + _unknown_ + _silence_, 1 s        held-out voices
    mini_speaker_id         one class per speaker, 2 s                   held-out words of each speaker
    mini_language_id        one class per language, 2 s                  held-out words of each language
    mini_nsynth_pitch       MIDI 21-108, 4 s, pitch_acc and chroma_acc   held-out soundfonts
    mini_instrument_family  instrument family, 4 s                       held-out soundfonts
    mini_drum_stroke        kick, snare, hi-hat, ..., 1 s                held-out kits
    mini_esc                environmental classes, 5 s, 5 folds          held-out source files per fold
    mini_mixtures           multilabel mixtures of 1-3 sources, 5 s, mAP held-out source files
    mini_dcase              events over a background bed, onsets in ms   held-out source files

Sources are varied by augment.py (gain, speed, pitch shift, time stretch, reverb, noise) in ways that keep
each task's label, and laid over background beds that are themselves held out between splits, so a size can
hold more clips than the bank has. Test classes always have training material (classes without it are
dropped and listed in the manifest). Every clip is rendered from a seeded generator per task: the same bank,
size and seed give the same suite. Held-out units follow the bank's "group" (voice, soundfont, kit, source
file), or (speaker or language, text) for the two identification tasks.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from collections import Counter, defaultdict
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import soundfile as sf
import torch

from hear_mamclap import atomic
from training.kit import augment as aug
from training.kit import pool
from training.kit.augment import AugmentConfig

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
VERSION = "v1.0"
MODE = "full"
SPLITS = ["train", "test", "valid"]  # hearpreprocess's order, which heareval copies into metadata["splits"]
NFOLDS = 5
KWS_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN, SILENCE = "_unknown_", "_silence_"
PITCH_RANGE = (21, 108)
PITCH_SHIFT = 1  # semitones a pitch-task note may be shifted (and relabelled) by
SIZES = ("tiny", "small", "medium")

# Clips to render, per size. Multiclass tasks: clips per class for (train, valid, test); mini_esc: clips per
# class and fold; mini_mixtures and mini_dcase: clips per split (train, valid, test). "classes" caps the
# speaker and language tasks; "event_seconds" is the length of a mini_dcase clip.
COUNTS: dict[str, dict[str, tuple[int, ...]]] = {
    "tiny": {
        "mini_speech_commands": (6, 2, 3), "mini_speaker_id": (4, 2, 2), "mini_language_id": (4, 2, 2),
        "mini_nsynth_pitch": (1, 1, 1), "mini_instrument_family": (4, 2, 2), "mini_drum_stroke": (4, 2, 2),
        "mini_esc": (2,), "mini_mixtures": (24, 8, 8), "mini_dcase": (8, 4, 4),
        "classes": (8,), "event_seconds": (10,),
    },
    "small": {
        "mini_speech_commands": (40, 8, 12), "mini_speaker_id": (20, 5, 5), "mini_language_id": (30, 8, 8),
        "mini_nsynth_pitch": (8, 2, 3), "mini_instrument_family": (40, 10, 10), "mini_drum_stroke": (40, 10, 10),
        "mini_esc": (8,), "mini_mixtures": (300, 60, 60), "mini_dcase": (40, 10, 10),
        "classes": (20,), "event_seconds": (20,),
    },
    "medium": {
        "mini_speech_commands": (400, 50, 100), "mini_speaker_id": (60, 15, 15),
        "mini_language_id": (200, 40, 50), "mini_nsynth_pitch": (40, 8, 10),
        "mini_instrument_family": (300, 60, 60), "mini_drum_stroke": (300, 60, 60),
        "mini_esc": (40,), "mini_mixtures": (2000, 300, 300), "mini_dcase": (200, 40, 40),
        "classes": (50,), "event_seconds": (30,),
    },
}


@dataclass
class Clip:
    """One rendered task clip and where its material came from."""

    audio: np.ndarray  # (N,) float32, exactly the task's sample_duration
    labels: list  # scene: [label, ...]; event: [{"label", "start", "end"}] in ms
    sources: list[str]  # bank ids mixed into the clip
    units: list[str]  # the generalisation units (voice, soundfont, kit, source file, or class:text)


@dataclass
class TaskData:
    """A built task before it is written: clips per split and what the manifest reports."""

    splits: dict[str, list[Clip]]
    vocabulary: list
    held_out_by: str
    dropped_classes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------
# Bank audio


class BankAudio:
    """Reads bank clips once and keeps them; an unreadable clip is skipped and counted, never fatal."""

    def __init__(self, bank_dir: Path | None) -> None:
        self.bank_dir = Path(bank_dir) if bank_dir is not None else None
        self.cache: dict[str, np.ndarray | None] = {}
        self.skipped: dict[str, str] = {}

    def path(self, rec: dict) -> Path:
        path = Path(rec["path"])
        if path.is_absolute():
            return path
        if self.bank_dir is None:
            raise ValueError(f"record {rec['id']!r} has a relative path {rec['path']!r}: pass bank_dir= "
                             "(the folder holding index.jsonl) or records with absolute paths")
        return self.bank_dir / path

    def load(self, rec: dict) -> np.ndarray | None:
        """(N,) float32 audio at 16 kHz, or None when the file is unreadable, not 16 kHz mono, or silent."""
        rid = rec["id"]
        if rid not in self.cache:
            audio = None
            try:
                audio = aug.load_clip(self.path(rec))
                if len(audio) < 160 or np.abs(audio).max() == 0:
                    raise ValueError("shorter than 10 ms or silent")
            except Exception as err:  # one bad file must not stop a build: skip it and say why
                self.skipped[rid] = f"{type(err).__name__}: {err}"
                log.warning("skipping bank clip %s: %s", rid, self.skipped[rid])
            self.cache[rid] = audio
        return self.cache[rid]

    def usable(self, recs: list[dict]) -> list[dict]:
        return [r for r in recs if self.load(r) is not None]


# ---------------------------------------------------------------------------------------------------------
# Signal helpers over augment.py

# How each kind of source is varied (augment.vary ranges). Each keeps its task's label: no pitch change on
# pitch labels, none on voices whose identity is the label; gain is cut only, the clip is peak-normalised last.
FX: dict[str, AugmentConfig] = {
    "word": AugmentConfig(gain_db=(-6.0, 0.0), speed_p=0.3, speed=(0.92, 1.08), pitch_p=0.3,
                          pitch_semitones=(-1.5, 1.5), stretch_p=0.3, stretch=(0.85, 1.15), reverb_p=0.3,
                          rt60=(0.2, 0.8), noise_p=0.1),
    "voice": AugmentConfig(gain_db=(-6.0, 0.0), speed_p=0.0, pitch_p=0.0, stretch_p=0.3, stretch=(0.9, 1.1),
                           reverb_p=0.2, rt60=(0.2, 0.6), noise_p=0.1),
    "note": AugmentConfig(gain_db=(-6.0, 0.0), speed_p=0.0, pitch_p=0.0, stretch_p=0.0, reverb_p=0.3,
                          rt60=(0.2, 1.0), noise_p=0.1),
    "instrument": AugmentConfig(gain_db=(-6.0, 0.0), speed_p=0.0, pitch_p=0.3, pitch_semitones=(-1.0, 1.0),
                                stretch_p=0.0, reverb_p=0.3, rt60=(0.2, 1.0), noise_p=0.1),
    "drum": AugmentConfig(gain_db=(-6.0, 0.0), speed_p=0.3, speed=(0.95, 1.05), pitch_p=0.0, stretch_p=0.0,
                          reverb_p=0.3, rt60=(0.2, 0.8), noise_p=0.1),
    "sound": AugmentConfig(gain_db=(-6.0, 0.0), speed_p=0.3, speed=(0.9, 1.1), pitch_p=0.2, stretch_p=0.2,
                           reverb_p=0.3, noise_p=0.1),
}


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """augment's torch ops are many and small: one thread is faster than several contending (figures in
    results/perf.md, "Kit builds: one torch thread")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def vary(x: np.ndarray, rng: np.random.Generator, fx: str) -> np.ndarray:
    return aug.vary(x, rng, FX[fx])[0]


def active_span(x: np.ndarray, threshold_db: float = -35.0) -> tuple[int, int]:
    """First and last sample above threshold_db of the peak (20 ms frames): where an event sounds."""
    frame = SAMPLE_RATE // 50
    n = len(x) // frame
    if n == 0:
        return 0, len(x)
    energy = np.sqrt((x[: n * frame].reshape(n, frame) ** 2).mean(1))  # (frames,)
    on = np.flatnonzero(energy > energy.max() * 10 ** (threshold_db / 20))
    return int(on[0] * frame), int((on[-1] + 1) * frame)


def finish(x: np.ndarray, rng: np.random.Generator, peak_db: tuple[float, float] = (-12.0, -1.0)) -> np.ndarray:
    """Normalise to a random peak level below full scale, so the 16-bit file never clips."""
    return aug.normalize_peak(x, float(rng.uniform(*peak_db)))


def with_background(x: np.ndarray, beds: list[np.ndarray], rng: np.random.Generator,
                    snr_db: tuple[float, float], p: float) -> np.ndarray:
    """With probability p, a random stretch of a random background bed at a random SNR."""
    if not beds or rng.random() >= p:
        return x
    bed = beds[int(rng.integers(len(beds)))]
    return aug.add_noise(x, bed, float(rng.uniform(*snr_db)), rng)


# ---------------------------------------------------------------------------------------------------------
# Held-out splits


def split_units(units: list[str], rng: np.random.Generator, what: str) -> tuple[list[str], list[str], list[str]]:
    """Hold out whole units (voices, soundfonts, kits, files): about 20% for test and 10% for valid.

    With only two units, test holds one out and valid shares train's units (different clips of them).
    """
    pool = sorted(set(units))
    if len(pool) < 2:
        raise ValueError(f"{what}: needs at least 2 distinct units to hold one out for test, found {pool}")
    rng.shuffle(pool)
    n_test = max(1, round(0.2 * len(pool)))
    n_valid = max(1, round(0.1 * len(pool))) if len(pool) >= 3 else 0
    test, valid, train = pool[:n_test], pool[n_test:n_test + n_valid], pool[n_test + n_valid:]
    return train, valid, test


def pools_by_unit(recs: list[dict], unit: Callable[[dict], str], rng: np.random.Generator,
                  what: str) -> dict[str, list[dict]]:
    """Partition records into train/valid/test pools so that no test unit appears in train.

    When there are too few units for a held-out valid set, valid takes a fifth of the train records.
    """
    train_u, valid_u, test_u = split_units([unit(r) for r in recs], rng, what)
    pools = {"train": [r for r in recs if unit(r) in train_u],
             "valid": [r for r in recs if unit(r) in valid_u],
             "test": [r for r in recs if unit(r) in test_u]}
    if not valid_u:
        train = list(pools["train"])
        rng.shuffle(train)
        n_valid = max(1, len(train) // 5) if len(train) > 1 else 0
        pools["valid"], pools["train"] = train[:n_valid], train[n_valid:]
    return pools


def per_class_pools(recs: list[dict], cls: Callable[[dict], str], unit: Callable[[dict], str],
                    rng: np.random.Generator, task: str) -> tuple[dict[str, dict[str, list[dict]]], list[str]]:
    """pools_by_unit within each class; classes with fewer than 2 units are dropped (and returned)."""
    by_class: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        by_class[cls(r)].append(r)
    pools, dropped = {}, []
    for c in sorted(by_class):
        try:
            pools[c] = pools_by_unit(by_class[c], unit, rng, f"{task}/{c}")
        except ValueError:
            dropped.append(c)
    return pools, dropped


def pick_speech_classes(by_class: dict[str, list[dict]], n: int, min_texts: int,
                        same_language: bool = False) -> list[str]:
    """Up to n classes of speech records with >= min_texts distinct texts: recorded voices first; with
    same_language, speakers whose language has the most recorded speakers next (so the language does not give
    the speaker away); then those with the most texts."""
    texts = {c: {r["labels"]["text"] for r in rs} for c, rs in by_class.items()}
    eligible = [c for c in by_class if len(texts[c]) >= min_texts]
    recorded = {c: any(r["labels"].get("voice_type") == "recorded" for r in by_class[c]) for c in eligible}
    language = {c: by_class[c][0]["labels"].get("language") for c in eligible}
    peers = Counter(language[c] for c in eligible if recorded[c])

    def rank(c: str) -> tuple:
        return not recorded[c], -peers[language[c]] if same_language else 0, -len(texts[c]), c

    return sorted(sorted(eligible, key=rank)[:n])


class Cycler:
    """Draws items (records of a pool, or classes) in shuffled rounds, so each is used before any repeats."""

    def __init__(self, items: list, rng: np.random.Generator) -> None:
        self.items, self.rng, self.queue = list(items), rng, []

    def __bool__(self) -> bool:
        return bool(self.items)

    def next(self):
        if not self.queue:
            self.queue = [self.items[i] for i in self.rng.permutation(len(self.items))]
        return self.queue.pop()


# ---------------------------------------------------------------------------------------------------------
# Task specifications


@dataclass(frozen=True)
class TaskSpec:
    name: str
    embedding_type: str  # scene | event
    prediction_type: str  # multiclass | multilabel
    split_mode: str  # trainvaltest | presplit_kfold
    sample_duration: float  # seconds
    evaluation: tuple[str, ...]  # heareval score names; the first one selects models
    extra: tuple[tuple[str, object], ...] = ()  # more task_metadata keys (pitch range, ...)

    @property
    def folder(self) -> str:
        return f"{self.name}-{VERSION}-{MODE}"

    @property
    def splits(self) -> list[str]:
        if self.split_mode == "trainvaltest":
            return list(SPLITS)
        return [f"fold{i:02d}" for i in range(NFOLDS)]

    def metadata(self, extra: dict) -> dict:
        """task_metadata.json as hearpreprocess's runner writes it (config after the mode is applied)."""
        meta = {"task_name": self.name, "version": VERSION, "embedding_type": self.embedding_type,
                "prediction_type": self.prediction_type, "split_mode": self.split_mode,
                "sample_duration": self.sample_duration, "evaluation": list(self.evaluation)}
        meta.update(dict(self.extra))
        meta["default_mode"] = MODE
        if self.split_mode == "trainvaltest":
            meta["max_task_duration_by_split"] = {"train": None, "valid": None, "test": None}
        else:
            meta["nfolds"] = NFOLDS
            meta["max_task_duration_by_fold"] = None
        meta.update({"mode": MODE, "splits": self.splits})
        meta.update(extra)
        return meta


def specs(size: str) -> dict[str, TaskSpec]:
    event_seconds = float(COUNTS[size]["event_seconds"][0])
    return {s.name: s for s in [
        TaskSpec("mini_speech_commands", "scene", "multiclass", "trainvaltest", 1.0, ("top1_acc",)),
        TaskSpec("mini_speaker_id", "scene", "multiclass", "trainvaltest", 2.0, ("top1_acc",)),
        TaskSpec("mini_language_id", "scene", "multiclass", "trainvaltest", 2.0, ("top1_acc",)),
        TaskSpec("mini_nsynth_pitch", "scene", "multiclass", "trainvaltest", 4.0, ("pitch_acc", "chroma_acc"),
                 (("pitch_range_min", PITCH_RANGE[0]), ("pitch_range_max", PITCH_RANGE[1]))),
        TaskSpec("mini_instrument_family", "scene", "multiclass", "trainvaltest", 4.0, ("top1_acc",)),
        TaskSpec("mini_drum_stroke", "scene", "multiclass", "trainvaltest", 1.0, ("top1_acc",)),
        TaskSpec("mini_esc", "scene", "multiclass", "presplit_kfold", 5.0,
                 ("top1_acc", "mAP", "d_prime", "aucroc")),
        TaskSpec("mini_mixtures", "scene", "multilabel", "trainvaltest", 5.0, ("mAP", "d_prime", "aucroc")),
        TaskSpec("mini_dcase", "event", "multilabel", "trainvaltest", event_seconds,
                 ("event_onset_200ms_fms", "segment_1s_er")),
    ]}


# ---------------------------------------------------------------------------------------------------------
# Recipes: one per task, each returning TaskData


class Builder:
    """Holds the bank, the background beds per split and the generator shared by the recipes."""

    def __init__(self, records: list[dict], bank_dir: Path | None, size: str, seed: int) -> None:
        if size not in COUNTS:
            raise ValueError(f"size must be one of {SIZES}, got {size!r}")
        self.audio = BankAudio(bank_dir)
        self.size, self.seed = size, seed
        self.kind = {k: [r for r in records if r.get("kind") == k] for k in ("speech", "music", "drum", "env", "noise")}
        beds = self.audio.usable(self.kind["noise"])
        rng = np.random.default_rng([seed, 0])
        if len({r["group"] for r in beds}) >= 2:
            # Background beds are held out too: test clips sit on beds that training clips never use.
            bed_pools = pools_by_unit(beds, lambda r: r["group"], rng, "background beds")
        else:
            bed_pools = {s: beds for s in SPLITS}
        bed_pools["all"] = beds
        self.bed_recs = bed_pools  # split -> bed records, aligned with self.beds
        self.beds = {s: [self.audio.load(r) for r in rs] for s, rs in bed_pools.items()}

    def rng(self, task: str) -> np.random.Generator:
        """A generator per task, so one task's clips do not depend on which other tasks were built."""
        return np.random.default_rng([self.seed, int(hashlib.sha1(task.encode()).hexdigest()[:8], 16)])

    def counts(self, task: str) -> tuple[int, ...]:
        return COUNTS[self.size][task]

    def fit(self, x: np.ndarray, n: int, rng: np.random.Generator, offset: tuple[float, float]) -> np.ndarray:
        """Place x in n samples of silence at a random offset (seconds range), cropping what overflows."""
        out = np.zeros(n, np.float32)
        lo, hi = int(offset[0] * SAMPLE_RATE), int(offset[1] * SAMPLE_RATE)
        slack = n - len(x)
        if slack >= 0:
            at = int(rng.integers(min(lo, slack), min(hi, slack) + 1))
        else:  # longer than the clip: take a random window of it
            at = -int(rng.integers(0, -slack + 1))
        aug.place(out, x, at)
        return out

    def multiclass(self, task: str, spec: TaskSpec, pools: dict[str, dict[str, list[dict]]],
                   render: Callable[[dict, str, np.random.Generator], np.ndarray],
                   unit: Callable[[dict], str], rng: np.random.Generator) -> tuple[dict[str, list[Clip]], list]:
        """Render counts[split] clips per class from that class's pool of each split; returns the splits and
        the classes dropped because no training material has them (a test class never trained on)."""
        n = int(spec.sample_duration * SAMPLE_RATE)
        splits: dict[str, list[Clip]] = {s: [] for s in SPLITS}
        labels = sorted((c for c in pools if self.audio.usable(pools[c]["train"])), key=str)
        dropped = sorted(set(pools) - set(labels), key=str)
        for si, split in enumerate(["train", "valid", "test"]):
            for label in labels:
                cyc = Cycler(self.audio.usable(pools[label][split]), rng)
                if not cyc:
                    continue
                for _ in range(self.counts(task)[si]):
                    rec = cyc.next()
                    audio = render(rec, split, rng)
                    splits[split].append(Clip(finish(audio[:n], rng), [label], [rec["id"]], [unit(rec)]))
        return splits, dropped

    # -- speech ----------------------------------------------------------------------------------------

    def speech_commands(self, spec: TaskSpec) -> TaskData:
        task, rng = spec.name, self.rng(spec.name)
        n = SAMPLE_RATE
        words = [r for r in self.kind["speech"] if (r["labels"].get("word") or "")]
        kws = [r for r in words if r["labels"]["word"].lower() in KWS_WORDS]
        other = [r for r in words if r["labels"]["word"].lower() not in KWS_WORDS]
        if not kws or not other:
            raise ValueError(f"{task}: the bank needs speech records whose labels.word is one of {KWS_WORDS} "
                             "and others for _unknown_")
        train_v, valid_v, test_v = split_units([r["group"] for r in kws], rng, f"{task} voices")
        split_of = {**{v: "train" for v in train_v}, **{v: "valid" for v in valid_v}, **{v: "test" for v in test_v}}
        pools: dict[str, dict[str, list[dict]]] = defaultdict(lambda: {s: [] for s in SPLITS})
        for r in words:
            word = r["labels"]["word"].lower()
            label = word if word in KWS_WORDS else UNKNOWN
            # Voices that never say a keyword only serve _unknown_; they train.
            pools[label][split_of.get(r["group"], "train")].append(r)
        if not valid_v:
            for label in pools:
                train = pools[label]["train"]
                rng.shuffle(train)
                k = len(train) // 5
                pools[label]["valid"], pools[label]["train"] = train[:k], train[k:]

        def render(rec: dict, split: str, g: np.random.Generator) -> np.ndarray:
            x = self.fit(vary(self.audio.load(rec), g, "word"), n, g, (0.0, 0.4))
            return with_background(x, self.beds[split], g, (5.0, 30.0), p=0.8)

        splits, dropped = self.multiclass(task, spec, pools, render, lambda r: r["group"], rng)
        # _silence_: one-second stretches of background beds, as in Speech Commands.
        for si, split in enumerate(["train", "valid", "test"]):
            which = split if self.beds[split] else "all"
            beds, bed_recs = self.beds[which], self.bed_recs[which]
            for _ in range(self.counts(task)[si] if beds else 0):
                i = int(rng.integers(len(beds)))
                x = finish(aug.loop_to(beds[i], n, rng), rng, (-30.0, -6.0))
                splits[split].append(Clip(x, [SILENCE], [bed_recs[i]["id"]], [bed_recs[i]["group"]]))
        vocab = sorted({c.labels[0] for clips in splits.values() for c in clips})
        return TaskData(splits, vocab, "voice", dropped)

    def _by_text(self, spec: TaskSpec, cls: Callable[[dict], str | None], min_texts: int,
                 same_language: bool) -> TaskData:
        """Speaker or language ID: classes hold out whole words (texts) for valid and test."""
        task, rng = spec.name, self.rng(spec.name)
        n = int(spec.sample_duration * SAMPLE_RATE)
        recs = [r for r in self.audio.usable(self.kind["speech"]) if cls(r) and r["labels"].get("text")]
        by_class: dict[str, list[dict]] = defaultdict(list)
        for r in recs:
            by_class[cls(r)].append(r)
        keep = pick_speech_classes(by_class, self.counts("classes")[0], min_texts, same_language)
        if len(keep) < 2:
            raise ValueError(f"{task}: needs at least 2 classes with >= {min_texts} distinct texts, found {keep}")

        def unit(r: dict) -> str:
            return f"{cls(r)}:{r['labels']['text']}"

        pools = {c: pools_by_unit(by_class[c], unit, rng, f"{task}/{c}") for c in keep}

        def render(rec: dict, split: str, g: np.random.Generator) -> np.ndarray:
            x = self.fit(vary(self.audio.load(rec), g, "voice"), n, g, (0.0, 1.0))
            return with_background(x, self.beds[split], g, (15.0, 40.0), p=0.5)

        splits, untrained = self.multiclass(task, spec, pools, render, unit, rng)
        dropped = sorted(set(by_class) - set(keep)) + untrained
        return TaskData(splits, sorted(set(keep) - set(untrained)), "text", dropped)

    def speaker_id(self, spec: TaskSpec) -> TaskData:
        return self._by_text(spec, lambda r: r["labels"].get("speaker"), min_texts=3, same_language=True)

    def language_id(self, spec: TaskSpec) -> TaskData:
        return self._by_text(spec, lambda r: r["labels"].get("language"), min_texts=3, same_language=False)

    # -- music -----------------------------------------------------------------------------------------

    def _by_soundfont(self, spec: TaskSpec, recs: list[dict], label: Callable[[dict], object],
                      fx: str, offset: tuple[float, float]) -> tuple[dict[str, list[Clip]], list]:
        task, rng = spec.name, self.rng(spec.name)
        n = int(spec.sample_duration * SAMPLE_RATE)
        recs = self.audio.usable(recs)
        unit_pools = pools_by_unit(recs, lambda r: r["group"], rng, f"{task} groups")
        pools: dict = defaultdict(lambda: {s: [] for s in SPLITS})
        for split, rs in unit_pools.items():
            for r in rs:
                pools[label(r)][split].append(r)

        def render(rec: dict, split: str, g: np.random.Generator) -> np.ndarray:
            x = self.audio.load(rec)
            if rec.get("pitch_shift"):
                x = aug.pitch_shift(x, rec["pitch_shift"])
            x = self.fit(vary(x, g, fx), n, g, offset)
            return with_background(x, self.beds[split], g, (20.0, 45.0), p=0.3)

        return self.multiclass(task, spec, pools, render, lambda r: r["group"], rng)

    def nsynth_pitch(self, spec: TaskSpec) -> TaskData:
        lo, hi = PITCH_RANGE
        notes = [r for r in self.kind["music"]
                 if isinstance(r["labels"].get("midi_pitch"), int) and lo <= r["labels"]["midi_pitch"] <= hi]
        # The bank staggers pitches across soundfonts, so a held-out soundfont would bring pitches that no
        # training note has: each note also serves shifted by whole semitones (up to PITCH_SHIFT) and
        # relabelled, so every soundfont covers the range. "note" varies no other pitch or speed.
        shifted = [dict(r, pitch_shift=k) for r in notes for k in range(-PITCH_SHIFT, PITCH_SHIFT + 1)
                   if lo <= r["labels"]["midi_pitch"] + k <= hi]
        splits, dropped = self._by_soundfont(spec, shifted, lambda r: r["labels"]["midi_pitch"] + r["pitch_shift"],
                                             "note", (0.0, 0.0))
        # The whole contiguous range, so that heareval's chroma_acc (class index mod 12) is the pitch class.
        return TaskData(splits, list(range(lo, hi + 1)), "soundfont", dropped)

    def instrument_family(self, spec: TaskSpec) -> TaskData:
        notes = [r for r in self.kind["music"] if r["labels"].get("family")]
        splits, dropped = self._by_soundfont(spec, notes, lambda r: r["labels"]["family"], "instrument", (0.0, 0.3))
        vocab = sorted({c.labels[0] for clips in splits.values() for c in clips})
        return TaskData(splits, vocab, "soundfont", dropped)

    def drum_stroke(self, spec: TaskSpec) -> TaskData:
        hits = [r for r in self.kind["drum"] if r["labels"].get("stroke")]
        splits, dropped = self._by_soundfont(spec, hits, lambda r: r["labels"]["stroke"], "drum", (0.0, 0.1))
        vocab = sorted({c.labels[0] for clips in splits.values() for c in clips})
        return TaskData(splits, vocab, "kit", dropped)

    # -- environment -----------------------------------------------------------------------------------

    def esc(self, spec: TaskSpec) -> TaskData:
        """ESC-like 5-fold task: each source file lives in exactly one fold."""
        task, rng = spec.name, self.rng(spec.name)
        n = int(spec.sample_duration * SAMPLE_RATE)
        by_class: dict[str, list[dict]] = defaultdict(list)
        for r in self.audio.usable(self.kind["env"]):
            by_class[r["labels"]["class"]].append(r)
        classes = sorted(c for c, rs in by_class.items() if len({r["group"] for r in rs}) >= NFOLDS)
        if len(classes) < 2:
            raise ValueError(f"{task}: needs at least 2 env classes with >= {NFOLDS} source files (groups) each")
        folds = spec.splits
        splits: dict[str, list[Clip]] = {f: [] for f in folds}
        for c in classes:
            groups = sorted({r["group"] for r in by_class[c]})
            rng.shuffle(groups)
            fold_of = {g: folds[i % NFOLDS] for i, g in enumerate(groups)}
            for fold in folds:
                cyc = Cycler([r for r in by_class[c] if fold_of[r["group"]] == fold], rng)
                for _ in range(self.counts(task)[0]):
                    rec = cyc.next()
                    x = vary(self.audio.load(rec), rng, "sound")
                    if len(x) < n // 3 and rng.random() < 0.5:  # short sounds often repeat in ESC clips
                        gap = np.zeros(int(rng.uniform(0.1, 0.8) * SAMPLE_RATE), np.float32)
                        x = np.concatenate([x, gap, x])
                    x = with_background(self.fit(x, n, rng, (0.0, 2.0)), self.beds["all"], rng, (10.0, 35.0), 0.7)
                    splits[fold].append(Clip(finish(x, rng), [c], [rec["id"]], [rec["group"]]))
        dropped = sorted(set(by_class) - set(classes))
        return TaskData(splits, classes, "source file", dropped)

    def _source_pools(self, task: str,
                      rng: np.random.Generator) -> tuple[dict[str, dict[str, list[dict]]], list[str]]:
        """Sound classes for mixtures and events: env classes, plus speech and music as classes of their own;
        up to the size's class count, those with the most source files first."""
        def cls(r: dict) -> str:
            return r["labels"]["class"] if r["kind"] == "env" else r["kind"]

        recs = self.audio.usable(self.kind["env"]) + self.audio.usable(self.kind["speech"]) \
            + self.audio.usable(self.kind["music"])
        pools, dropped = per_class_pools(recs, cls, lambda r: r["group"], rng, task)
        files = {c: len({r["group"] for rs in p.values() for r in rs}) for c, p in pools.items()}
        keep = sorted(sorted(pools, key=lambda c: (-files[c], c))[: self.counts("classes")[0]])
        if len(keep) < 2:
            raise ValueError(f"{task}: needs at least 2 sound classes with >= 2 source files each")
        return {c: pools[c] for c in keep}, sorted(dropped + [c for c in pools if c not in keep])

    def mixtures(self, spec: TaskSpec) -> TaskData:
        task, rng = spec.name, self.rng(spec.name)
        n = int(spec.sample_duration * SAMPLE_RATE)
        pools, dropped = self._source_pools(task, rng)
        classes = sorted(pools)
        splits: dict[str, list[Clip]] = {s: [] for s in SPLITS}
        for si, split in enumerate(["train", "valid", "test"]):
            cyclers = {c: Cycler(pools[c][split], rng) for c in classes}
            # Classes drawn in shuffled rounds, so every class appears before any repeats.
            draw = Cycler([c for c in classes if cyclers[c]], rng)
            for _ in range(self.counts(task)[si]):
                k = int(rng.integers(1, min(3, len(draw.items)) + 1))
                chosen: list[str] = []
                while len(chosen) < k:
                    c = draw.next()
                    if c not in chosen:  # already in this mixture: it counts for the round all the same
                        chosen.append(c)
                chosen.sort()
                recs = [cyclers[c].next() for c in chosen]
                parts = []
                for rec in recs:
                    src = vary(self.audio.load(rec), rng, "sound")
                    src = src / np.float32(aug.rms(src) + 1e-9)  # equal loudness before the per-source gain
                    parts.append((self.fit(src, n, rng, (0.0, 3.0)), 0, float(rng.uniform(-10, 0))))
                x = with_background(aug.mix(n, parts), self.beds[split], rng, (10.0, 30.0), p=0.7)
                splits[split].append(Clip(finish(x, rng), chosen, [r["id"] for r in recs], [r["group"] for r in recs]))
        return TaskData(splits, classes, "source file", dropped)

    def dcase(self, spec: TaskSpec) -> TaskData:
        """DCASE 2016 task 2-like: isolated events over a background bed, with onsets and offsets in ms."""
        task, rng = spec.name, self.rng(spec.name)
        n = int(spec.sample_duration * SAMPLE_RATE)
        pools, dropped = self._source_pools(task, rng)
        classes = sorted(pools)
        splits: dict[str, list[Clip]] = {s: [] for s in SPLITS}
        for si, split in enumerate(["train", "valid", "test"]):
            cyclers = {c: Cycler(pools[c][split], rng) for c in classes}
            draw = Cycler([c for c in classes if cyclers[c]], rng)  # every class before any repeats
            for _ in range(self.counts(task)[si]):
                x = np.zeros(n, np.float32)
                events, recs = [], []
                t = int(rng.uniform(0.2, 1.5) * SAMPLE_RATE)
                while t < n - SAMPLE_RATE // 2:
                    c = draw.next()
                    rec = cyclers[c].next()
                    src = vary(self.audio.load(rec), rng, "sound")
                    src = src[: int(rng.uniform(2.0, 4.0) * SAMPLE_RATE)]  # events last at most a few seconds
                    src = aug.normalize_peak(src, float(rng.uniform(-8, 0)))
                    on, off = active_span(src)
                    start, end = aug.place(x, src, t)
                    on, off = min(t + on, n), min(t + off, n)
                    if off - on >= SAMPLE_RATE // 20:  # at least 50 ms audible inside the clip
                        events.append({"label": c, "start": 1000.0 * on / SAMPLE_RATE,
                                       "end": 1000.0 * off / SAMPLE_RATE})
                        recs.append(rec)
                    t = end + int(rng.uniform(0.3, 2.5) * SAMPLE_RATE)  # gaps between events, as in DCASE 2016
                x = with_background(x, self.beds[split] or self.beds["all"], rng, (12.0, 25.0), p=1.0)
                splits[split].append(Clip(finish(x, rng, (-6.0, -1.0)), events,
                                          [r["id"] for r in recs], [r["group"] for r in recs]))
        return TaskData(splits, classes, "source file", dropped)


RECIPES: dict[str, Callable[[Builder, TaskSpec], TaskData]] = {
    "mini_speech_commands": Builder.speech_commands,
    "mini_speaker_id": Builder.speaker_id,
    "mini_language_id": Builder.language_id,
    "mini_nsynth_pitch": Builder.nsynth_pitch,
    "mini_instrument_family": Builder.instrument_family,
    "mini_drum_stroke": Builder.drum_stroke,
    "mini_esc": Builder.esc,
    "mini_mixtures": Builder.mixtures,
    "mini_dcase": Builder.dcase,
}


# ---------------------------------------------------------------------------------------------------------
# Writing


def clip_name(task: str, split: str, index: int, clip: Clip) -> str:
    """A stable hashed file name, like hearpreprocess's, so names carry no label."""
    key = f"{task}/{split}/{index}/{'+'.join(clip.sources)}"
    return hashlib.sha1(key.encode()).hexdigest()[:16] + ".wav"


def write_task(spec: TaskSpec, data: TaskData, out_dir: Path, extra_meta: dict) -> None:
    """Write one task folder under a temporary name beside out_dir, then rename it into place."""
    n = int(round(spec.sample_duration * SAMPLE_RATE))
    out_dir.mkdir(parents=True, exist_ok=True)
    # Beside out_dir, not inside: heareval treats every entry of the tasks folder as a task.
    atomic.remove_stale(out_dir / spec.folder, temp_parent=out_dir.parent)
    with atomic.directory(out_dir / spec.folder, temp_parent=out_dir.parent) as tmp:
        for split in spec.splits:
            audio_dir = tmp / str(SAMPLE_RATE) / split
            audio_dir.mkdir(parents=True)
            labels = {}
            for i, clip in enumerate(data.splits.get(split, [])):
                if len(clip.audio) != n:
                    raise AssertionError(f"{spec.name}: clip of {len(clip.audio)} samples, expected {n}")
                name = clip_name(spec.name, split, i, clip)
                sf.write(audio_dir / name, clip.audio, SAMPLE_RATE, subtype="PCM_16")
                labels[name] = clip.labels
            if not labels:
                raise ValueError(f"{spec.name}: split {split} is empty; the bank lacks material for it")
            (tmp / f"{split}.json").write_text(json.dumps(labels, indent=True))
        with (tmp / "labelvocabulary.csv").open("w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["idx", "label"])
            writer.writerows(enumerate(data.vocabulary))
        (tmp / "task_metadata.json").write_text(json.dumps(spec.metadata(extra_meta), indent=True))


def manifest_entry(spec: TaskSpec, data: TaskData) -> dict:
    """Bank ids and generalisation units per split or fold, and which units are held out."""
    entry: dict = {}
    units: dict[str, list[str]] = {}
    for split in spec.splits:
        clips = data.splits.get(split, [])
        entry[split] = sorted({s for c in clips for s in c.sources})
        units[split] = sorted({u for c in clips for u in c.units})
    if spec.split_mode == "trainvaltest":
        heldout = sorted(set(units["test"]) - set(units["train"]))
    else:  # every unit sits in exactly one fold, so each fold's units are held out from the others
        heldout = sorted({u for us in units.values() for u in us})
    entry.update({"units": units, "heldout_groups": heldout, "held_out_by": data.held_out_by,
                  "clips": {s: len(data.splits.get(s, [])) for s in spec.splits},
                  "classes": len(data.vocabulary), "dropped_classes": data.dropped_classes})
    return entry


# Longest first, so that fewer workers than tasks still finish together (the tasks rendering the most clips,
# or the costliest clips: nsynth_pitch pitch-shifts every note).
LONGEST_FIRST = ("mini_speech_commands", "mini_nsynth_pitch", "mini_mixtures", "mini_speaker_id", "mini_drum_stroke",
                 "mini_language_id", "mini_instrument_family", "mini_dcase", "mini_esc")


def render_task(builder: Builder, spec: TaskSpec, out_dir: Path) -> dict:
    """Render one task with the builder and write its folder; returns its manifest entry."""
    start = time.perf_counter()
    with one_torch_thread():
        data = RECIPES[spec.name](builder, spec)
    extra = {"mamclap": {"size": builder.size, "seed": builder.seed, "held_out_by": data.held_out_by}}
    write_task(spec, data, out_dir, extra)
    entry = manifest_entry(spec, data)
    entry["build_seconds"] = round(time.perf_counter() - start, 2)
    return entry


def _log_task(name: str, entry: dict) -> None:
    log.info("%s: %s clips, %d classes (%.1f s)", name, entry["clips"], entry["classes"], entry["build_seconds"])


def _task_job(records: list[dict], bank_dir: Path | None, size: str, seed: int, name: str,
              out_dir: Path) -> tuple[dict, dict]:
    """One task in a worker process, with a Builder of its own: the beds come from their own generator and
    each task from its own (Builder.rng), and no recipe changes the bank audio it reads, so the files are
    those of the serial build. Returns (manifest entry, skipped bank clips)."""
    builder = Builder(records, bank_dir, size, seed)
    return render_task(builder, specs(size)[name], out_dir), dict(builder.audio.skipped)


def build_hear_suite(records: list[dict], out_dir: Path, size: str, seed: int, bank_dir: Path | None = None,
                     tasks: list[str] | None = None, workers: int = 1, executor: Executor | None = None) -> dict:
    """Write out_dir/<task>-v1.0-full/ for every task; returns the manifest per task.

    The manifest maps each task to its bank ids per split (or fold), "units" per split, "heldout_groups",
    clip and class counts; its key "skipped_bank_clips" lists unreadable bank clips with the reason.

    records: bank index records (load_bank); their paths are absolute or relative to bank_dir.
    tasks: a subset of task names (default: all nine).
    workers: processes rendering tasks side by side (1: one after the other, in this process); the files are
    the same for any number. executor: a pool (training.kit.pool) to render on instead of one of our own.
    """
    if size not in COUNTS:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    out_dir = Path(out_dir)
    all_specs = specs(size)
    names = list(all_specs) if tasks is None else tasks
    unknown = sorted(set(names) - set(all_specs))
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; expected some of {list(all_specs)}")
    if executor is None and workers > 1 and len(names) > 1:
        with pool.process_pool(min(workers, len(names))) as ex:
            return build_hear_suite(records, out_dir, size, seed, bank_dir, names, executor=ex)
    manifest: dict = {}
    if executor is None:
        builder = Builder(records, bank_dir, size, seed)
        for name in names:
            manifest[name] = render_task(builder, all_specs[name], out_dir)
            _log_task(name, manifest[name])
        skipped = dict(builder.audio.skipped)
    else:
        order = sorted(names, key=LONGEST_FIRST.index)
        jobs = [(records, bank_dir, size, seed, n, out_dir) for n in order]
        results = dict(zip(order, pool.run_all(executor, _task_job, jobs,
                                               lambda i, result: _log_task(order[i], result[0]))))
        skipped = {}
        for name in names:
            manifest[name] = results[name][0]
            skipped.update(results[name][1])
    manifest["skipped_bank_clips"] = dict(sorted(skipped.items()))
    return manifest
