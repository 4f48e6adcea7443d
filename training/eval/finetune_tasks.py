"""The fine-tuning tasks, each read from its data set's own layout (the real one or the kit's copy of it).

    as20k, as2m   AudioSet: <root>/class_labels_indices.csv, balanced_train_segments.csv (as20k),
                  unbalanced_train_segments.csv (+ balanced, as2m), eval_segments.csv (the test set), audio
                  in <root>/audio/<YTID>.<ext>; multi-label, mAP. Validation: a share of the training
                  clips, held out by clip.
    esc50         ESC-50: <root>/meta/esc50.csv (filename,fold,target,category,esc10,src_file,take) and
                  <root>/audio/<filename>; 5-fold cross-validation, accuracy averaged over the folds.
                  Validation: a share of the training folds' source files.
    spcv2         Speech Commands V2: <root>/<word>/<file>.wav, validation_list.txt, testing_list.txt; the 35
                  words. spcv2_12: the 12-class setting (10 keywords, _unknown_ for the other words,
                  _silence_ cut from _background_noise_/).
    spcv1_12      Speech Commands V1 in s3prl's layout (the kit's superb/speech_commands): <root>/train/ split
                  into train/valid by s3prl's hash of the speaker prefix, <root>/test/ with the 12 classes.

A task gives folds (one, or five for ESC-50), each with train/valid/test lists of `Example`; audio is read
at any sample rate and resampled to 16 kHz. The kit writes the same layouts (training.kit.finetune_layouts).
"""
from __future__ import annotations

import csv
import functools
import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset

from training.kit.hear_suite import KWS_WORDS, SILENCE, UNKNOWN
from training.kit.superb_layouts import s3prl_dev_percentage
from training.pretrain.data import AUDIO_SUFFIXES, SAMPLE_RATE, index_audioset, read_vocabulary

log = logging.getLogger(__name__)

BACKGROUND = "_background_noise_"


@dataclass(frozen=True)
class Example:
    """One clip: where it is, its class indices, and the unit held out together in a validation split."""
    path: str
    labels: tuple[int, ...]
    group: str = ""
    start: float = 0.0  # seconds into the file (_silence_ clips cut from long background recordings)


@dataclass
class Fold:
    name: str
    train: list[Example]
    valid: list[Example]
    test: list[Example]


@dataclass(frozen=True)
class TaskInfo:
    """What a task is, independently of where its data lies."""
    name: str
    label: str          # the column name in tables, as papers write it
    group: str          # results group (training.eval.results.GROUPS)
    metric: str         # "mAP" (multi-label) or "accuracy" (single-label)
    frames: int         # input length in 10 ms frames (AudioMAE: 1024 AudioSet, 512 ESC-50, 128 Speech Commands)

    @property
    def multilabel(self) -> bool:
        return self.metric == "mAP"


TASKS: dict[str, TaskInfo] = {t.name: t for t in (
    TaskInfo("as20k", "AS-20K", "environmental", "mAP", 1024),
    TaskInfo("as2m", "AS-2M", "environmental", "mAP", 1024),
    TaskInfo("esc50", "ESC-50", "environmental", "accuracy", 512),
    TaskInfo("spcv2", "SPC-2 (35)", "speech", "accuracy", 128),
    TaskInfo("spcv2_12", "SPC-2 (12)", "speech", "accuracy", 128),
    TaskInfo("spcv1_12", "SPC-1 (12, SUPERB KS)", "speech", "accuracy", 128),
)}


@dataclass
class TaskData:
    info: TaskInfo
    vocabulary: list[str]
    folds: list[Fold]
    root: str
    notes: list[str] = field(default_factory=list)


def _stable_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def hold_out(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, valid): ceil(fraction x groups) whole groups go to valid, chosen by a hash of (seed, group),
    so the split is fixed for a data set and seed, and no group sits on both sides."""
    if fraction <= 0:
        return examples, []
    groups = sorted({e.group for e in examples}, key=lambda g: _stable_hash(f"{seed}/{g}"))
    if len(groups) < 2:
        raise ValueError(f"cannot hold out a validation split from {len(groups)} group(s)")
    chosen = set(groups[:min(len(groups) - 1, math.ceil(fraction * len(groups)))])
    return [e for e in examples if e.group not in chosen], [e for e in examples if e.group in chosen]


# ---------------------------------------------------------------------------------------------- AudioSet

AUDIOSET_TRAIN = {"as20k": ("balanced_train_segments.csv",),
                  "as2m": ("unbalanced_train_segments.csv", "balanced_train_segments.csv")}
AUDIOSET_EVAL = "eval_segments.csv"


def _audioset_examples(csv_path: Path, audio_dir: Path, mid_to_index: dict[str, int]) -> list[Example]:
    return [Example(item.path, item.labels, group=item.key)
            for item in index_audioset(csv_path, audio_dir, mid_to_index)]


def load_audioset(name: str, root: Path, valid_fraction: float, seed: int) -> TaskData:
    vocab_path = root / "class_labels_indices.csv"
    for need in (vocab_path, root / AUDIOSET_EVAL, root / "audio"):
        if not need.exists():
            raise FileNotFoundError(f"{name}: {need} missing; an AudioSet folder holds class_labels_indices.csv, "
                                    f"{' / '.join(AUDIOSET_TRAIN[name])}, {AUDIOSET_EVAL} and audio/<YTID>.<ext>")
    vocabulary = read_vocabulary(vocab_path)
    mid_to_index = {mid: i for i, (mid, _) in enumerate(vocabulary)}
    train, seen = [], set()
    csvs = [root / c for c in AUDIOSET_TRAIN[name] if (root / c).is_file()]
    if not csvs:
        raise FileNotFoundError(f"{name}: none of {AUDIOSET_TRAIN[name]} in {root}")
    for csv_path in csvs:
        for e in _audioset_examples(csv_path, root / "audio", mid_to_index):
            if e.group not in seen:  # AS-2M: the balanced set's clips are not in the unbalanced one, but be safe
                seen.add(e.group)
                train.append(e)
    test = _audioset_examples(root / AUDIOSET_EVAL, root / "audio", mid_to_index)
    overlap = seen & {e.group for e in test}
    if overlap:
        raise ValueError(f"{name}: {len(overlap)} clips are both in training and in {AUDIOSET_EVAL}, e.g. "
                         f"{sorted(overlap)[:3]}")
    train, valid = hold_out(train, valid_fraction, seed)
    return TaskData(TASKS[name], [display for _, display in vocabulary], [Fold("all", train, valid, test)],
                    str(root))


# ---------------------------------------------------------------------------------------------- ESC-50

ESC50_CSV = Path("meta") / "esc50.csv"


def load_esc50(name: str, root: Path, valid_fraction: float, seed: int) -> TaskData:
    meta = root / ESC50_CSV
    if not meta.is_file() or not (root / "audio").is_dir():
        raise FileNotFoundError(f"{name}: expected {meta} and {root / 'audio'}/ (ESC-50's layout)")
    with open(meta, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"filename", "fold", "target", "category", "src_file"}
    if not rows or not need <= set(rows[0]):
        raise ValueError(f"{meta}: expected columns {sorted(need)}")
    categories = {int(r["target"]): r["category"] for r in rows}
    vocabulary = [categories.get(i, f"class_{i}") for i in range(max(categories) + 1)]
    by_fold: dict[int, list[Example]] = {}
    for r in rows:
        path = root / "audio" / r["filename"]
        if not path.is_file():
            raise FileNotFoundError(f"{meta} lists {r['filename']}, which is not in {root / 'audio'}")
        by_fold.setdefault(int(r["fold"]), []).append(Example(str(path), (int(r["target"]),), group=r["src_file"]))
    folds = []
    for k in sorted(by_fold):
        rest = [e for j in sorted(by_fold) if j != k for e in by_fold[j]]
        train, valid = hold_out(rest, valid_fraction, seed)
        folds.append(Fold(f"fold{k}", train, valid, by_fold[k]))
    return TaskData(TASKS[name], vocabulary, folds, str(root))


# ---------------------------------------------------------------------------------------------- Speech Commands


def _silence(background: list[Path], count: int, split: str, label: int, seconds: float = 1.0) -> list[Example]:
    """`count` clips of `seconds` cut from the background recordings at fixed, split-dependent offsets (the
    way TensorFlow's Speech Commands input pipeline makes _silence_)."""
    if not background or count <= 0:
        return []
    lengths = [sf.info(str(p)).duration for p in background]
    out = []
    for i in range(count):
        j = i % len(background)
        span = max(0.0, lengths[j] - seconds)
        frac = int(_stable_hash(f"{split}/{i}")[:8], 16) / 16 ** 8
        out.append(Example(str(background[j]), (label,), group=f"{SILENCE}/{split}/{i}", start=round(frac * span, 3)))
    return out


def _speaker(path: Path) -> str:
    return path.name.split("_nohash_")[0]


def _word_files(root: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
            for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith((".", "_"))}


def _twelve(word: str) -> str:
    return word if word in KWS_WORDS else UNKNOWN


def load_speech_commands_v2(name: str, root: Path, valid_fraction: float, seed: int) -> TaskData:
    lists = {s: root / f"{s}_list.txt" for s in ("validation", "testing")}
    if not all(p.is_file() for p in lists.values()):
        raise FileNotFoundError(f"{name}: expected {lists['validation'].name} and {lists['testing'].name} in "
                                f"{root} (Speech Commands V2's layout)")
    listed = {s: {line.strip() for line in p.read_text().splitlines() if line.strip()} for s, p in lists.items()}
    words = _word_files(root)
    twelve = name == "spcv2_12"
    vocabulary = [*KWS_WORDS, UNKNOWN, SILENCE] if twelve else sorted(words)
    index = {w: i for i, w in enumerate(vocabulary)}
    splits: dict[str, list[Example]] = {"train": [], "valid": [], "test": []}
    for word, files in words.items():
        label = index[_twelve(word)] if twelve else index[word]
        for p in files:
            rel = f"{word}/{p.name}"
            split = "valid" if rel in listed["validation"] else "test" if rel in listed["testing"] else "train"
            splits[split].append(Example(str(p), (label,), group=_speaker(p)))
    if twelve:
        background = sorted(p for p in (root / BACKGROUND).glob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        for split, examples in splits.items():
            examples += _silence(background, max(1, len(examples) // (len(vocabulary) - 1)), split,
                                 index[SILENCE])
    return TaskData(TASKS[name], vocabulary, [Fold("all", splits["train"], splits["valid"], splits["test"])],
                    str(root))


def load_speech_commands_v1(name: str, root: Path, valid_fraction: float, seed: int) -> TaskData:
    """s3prl's speech_commands layout: train/ (split by s3prl's speaker hash: < 10 % valid, 10-20 % left out
    as s3prl's own test share, the rest train) and test/ holding the 12 classes."""
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise FileNotFoundError(f"{name}: expected {root}/train and {root}/test (s3prl's Speech Commands V1 layout)")
    vocabulary = [*KWS_WORDS, UNKNOWN, SILENCE]
    index = {w: i for i, w in enumerate(vocabulary)}
    splits: dict[str, list[Example]] = {"train": [], "valid": [], "test": []}
    for word, files in _word_files(root / "train").items():
        for p in files:
            pct = s3prl_dev_percentage(_speaker(p))
            if 10 <= pct < 20:
                continue
            splits["valid" if pct < 10 else "train"].append(Example(str(p), (index[_twelve(word)],),
                                                                    group=_speaker(p)))
    background = sorted(p for p in (root / "train" / BACKGROUND).glob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    for split in ("train", "valid"):
        splits[split] += _silence(background, max(1, len(splits[split]) // (len(vocabulary) - 1)), split,
                                  index[SILENCE])
    for label_dir in sorted(d for d in (root / "test").iterdir() if d.is_dir()):
        if label_dir.name not in index:
            raise ValueError(f"{root / 'test'}: unexpected class folder {label_dir.name!r}; expected {vocabulary}")
        splits["test"] += [Example(str(p), (index[label_dir.name],), group=_speaker(p))
                           for p in sorted(label_dir.iterdir()) if p.suffix.lower() in AUDIO_SUFFIXES]
    return TaskData(TASKS[name], vocabulary, [Fold("all", splits["train"], splits["valid"], splits["test"])],
                    str(root))


LOADERS = {"as20k": load_audioset, "as2m": load_audioset, "esc50": load_esc50,
           "spcv2": load_speech_commands_v2, "spcv2_12": load_speech_commands_v2,
           "spcv1_12": load_speech_commands_v1}


def load_task(name: str, root: str | Path, valid_fraction: float = 0.1, seed: int = 0) -> TaskData:
    """Read a task's layout; every fold must have training and test clips."""
    if name not in LOADERS:
        raise ValueError(f"unknown fine-tuning task {name!r}; expected one of {sorted(LOADERS)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: no data folder at {root}")
    task = LOADERS[name](name, root, valid_fraction, seed)
    for fold in task.folds:
        if not fold.train or not fold.test:
            raise ValueError(f"{name} ({root}), {fold.name}: {len(fold.train)} training and {len(fold.test)} test "
                             "clips; both must be non-empty")
    return task


# ---------------------------------------------------------------------------------------------- audio


@functools.lru_cache(maxsize=8)
def _resampler(sample_rate: int):
    """A resampler to 16 kHz, its filter built once per rate (building it costs more than applying it)."""
    import torchaudio
    return torchaudio.transforms.Resample(sample_rate, SAMPLE_RATE)


def read_clip(path: str | Path, n_samples: int, start: float = 0.0) -> np.ndarray:
    """(n_samples,) float32 mono at 16 kHz from `start` seconds: any sample rate (resampled), channels
    averaged, zero-padded or cut at the end."""
    info = sf.info(str(path))
    first = int(round(start * info.samplerate))
    frames = math.ceil(n_samples * info.samplerate / SAMPLE_RATE) + 1
    wav, sr = sf.read(str(path), start=first, frames=frames, dtype="float32", always_2d=True)
    wav = wav.mean(1)
    if sr != SAMPLE_RATE:
        with torch.no_grad():
            wav = _resampler(sr)(torch.from_numpy(np.ascontiguousarray(wav))).numpy()
    if not np.isfinite(wav).all():
        raise ValueError(f"{path}: non-finite audio")
    return np.pad(wav[:n_samples], (0, max(0, n_samples - len(wav))))


class Clips(Dataset):
    """(waveform (n_samples,), multi-hot target (n_classes,)) for a list of examples."""

    def __init__(self, examples: list[Example], n_classes: int, n_samples: int) -> None:
        self.examples, self.n_classes, self.n_samples = examples, n_classes, n_samples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.examples[i]
        target = torch.zeros(self.n_classes)
        target[list(e.labels)] = 1.0
        return torch.from_numpy(read_clip(e.path, self.n_samples, e.start)), target


# ---------------------------------------------------------------------------------------------- metrics


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over the positives of the precision at each positive's rank (scores ranked high to low)."""
    order = np.argsort(-scores, kind="stable")
    hits = targets[order] > 0.5
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def score(metric: str, logits: np.ndarray, targets: np.ndarray) -> tuple[float, dict]:
    """(the task metric, details). mAP averages the classes with a positive in `targets` (AP is undefined
    for the others); accuracy compares the arg-max class with the target's."""
    if metric == "mAP":
        present = np.flatnonzero((targets > 0.5).any(0))
        aps = [average_precision(logits[:, c], targets[:, c]) for c in present]
        return float(np.mean(aps)), {"classes_scored": int(len(present))}
    correct = logits.argmax(1) == targets.argmax(1)
    return float(correct.mean()), {}
