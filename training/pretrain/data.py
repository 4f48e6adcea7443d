"""Pretraining data: the kit's WebDataset shards, the AudioSet CSV layout, or a plain folder of audio.

All three become one map-style dataset of (waveform, multi-hot labels) at 16 kHz, cropped or padded to a
fixed number of samples. Map-style (rather than streaming) so that the sample order is a pure function of
(seed, epoch) and a resumed run sees exactly the batches an uninterrupted run would. Shards are indexed
once (tar member offsets) and read by seeking, so random access costs one small read.

Audio at another sample rate is resampled to 16 kHz as it is read (soxr), and the dataset says so once when
it is made; a file that cannot be decoded is skipped: the dataset returns the next readable item in a fixed
order and counts the failure, so a run never stops on one bad clip and stays deterministic.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset

from hear_mamclap import SAMPLE_RATE

AUDIO_SUFFIXES = (".flac", ".wav", ".ogg", ".mp3", ".opus")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """Where one clip lives: a file path, or (tar path, byte offset, size) inside a shard."""
    key: str
    path: str
    offset: int = -1
    size: int = -1
    labels: tuple[int, ...] = ()


def resample(wav: np.ndarray, sr: int) -> np.ndarray:
    """(n,) float32 at sr -> float32 at 16 kHz, with soxr (high quality, deterministic)."""
    try:
        import soxr
    except ImportError:
        raise RuntimeError(f"audio at {sr} Hz needs resampling to {SAMPLE_RATE} Hz: pip install soxr") from None
    return soxr.resample(wav, sr, SAMPLE_RATE).astype(np.float32, copy=False)


def read_vocabulary(path: Path) -> list[tuple[str, str]]:
    """AudioSet's class_labels_indices.csv (index,mid,display_name) -> [(mid, display_name)] by index."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"index", "mid", "display_name"} <= set(rows[0]):
        raise ValueError(f"{path}: expected a CSV with columns index,mid,display_name")
    rows.sort(key=lambda r: int(r["index"]))
    return [(r["mid"], r["display_name"]) for r in rows]


def _find_vocabulary(root: Path) -> Path | None:
    for candidate in (root / "class_labels_indices.csv", root.parent / "class_labels_indices.csv"):
        if candidate.exists():
            return candidate
    return None


def _label_mids(meta: dict) -> list[str]:
    """Label MIDs from a shard's JSON: "labels" as a list of MIDs or of {"mid": ...} objects."""
    labels = meta.get("labels", [])
    return [lab["mid"] if isinstance(lab, dict) else str(lab) for lab in labels]


def read_shards(shard_dir: Path) -> Iterator[tuple[Path, dict[str, tuple[int, int]], dict[str, dict]]]:
    """Each *.tar shard of shard_dir in name order, as (shard, {key: (byte offset, size) of its audio member},
    {key: its JSON member}); a shard that cannot be read whole is logged and skipped."""
    for shard in sorted(shard_dir.glob("*.tar")):
        audio, metas = {}, {}
        try:
            with tarfile.open(shard) as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    key, _, ext = m.name.partition(".")
                    if "." + ext in AUDIO_SUFFIXES:
                        audio[key] = (m.offset_data, m.size)
                    elif ext == "json":
                        metas[key] = json.load(tar.extractfile(m))
        except (tarfile.TarError, OSError, json.JSONDecodeError) as err:
            log.warning("skipping unreadable shard %s: %s", shard, err)
            continue
        yield shard, audio, metas


def index_shards(shard_dir: Path, mid_to_index: dict[str, int]) -> list[Item]:
    """Index every audio member of the *.tar shards in shard_dir with its labels from the paired JSON."""
    items = []
    for shard, audio, metas in read_shards(shard_dir):
        for key, (offset, size) in sorted(audio.items()):
            mids = _label_mids(metas.get(key, {}))
            items.append(Item(key, str(shard), offset, size,
                              tuple(sorted(mid_to_index[m] for m in mids if m in mid_to_index))))
    return items


def index_audioset(csv_path: Path, audio_dir: Path, mid_to_index: dict[str, int]) -> list[Item]:
    """AudioSet segments CSV (YTID, start_seconds, end_seconds, positive_labels; '#' comment lines)."""
    files = {p.stem: p for p in audio_dir.iterdir() if p.suffix in AUDIO_SUFFIXES}
    items, missing = [], 0
    with open(csv_path, newline="") as f:
        for row in csv.reader((line for line in f if not line.startswith("#")), skipinitialspace=True):
            if len(row) < 4:
                continue
            ytid = row[0].strip()
            mids = ",".join(row[3:]).strip().strip('"').split(",")
            if ytid not in files:
                missing += 1
                continue
            items.append(Item(ytid, str(files[ytid]), labels=tuple(sorted(
                mid_to_index[m.strip()] for m in mids if m.strip() in mid_to_index))))
    if missing:
        log.warning("%d clips listed in %s have no audio file in %s", missing, csv_path, audio_dir)
    return items


def index_folder(folder: Path) -> list[Item]:
    """Every audio file under folder, unlabelled."""
    return [Item(str(p.relative_to(folder)), str(p))
            for p in sorted(folder.rglob("*")) if p.suffix.lower() in AUDIO_SUFFIXES]


class AudioClips(Dataset):
    """(waveform (n_samples,), multi-hot labels (n_classes,)) from any of the three layouts.

    `source` is a folder of *.tar shards, an AudioSet segments CSV (audio in `audio/` beside it or in
    `audio_dir`), or a folder of audio files. Labels need a class_labels_indices.csv beside the source.
    """

    def __init__(self, source: str | Path, n_samples: int, audio_dir: str | Path | None = None,
                 require_labels: bool = False) -> None:
        source = self.source = Path(source)
        if not source.exists():
            raise FileNotFoundError(f"pretraining data not found: {source} (expected a folder of *.tar "
                                    "shards, an AudioSet CSV, or a folder of audio; build the kit with "
                                    "`mamclap data build`)")
        vocab_path = _find_vocabulary(source if source.is_dir() else source.parent)
        self.vocabulary = read_vocabulary(vocab_path) if vocab_path else []
        mid_to_index = {mid: i for i, (mid, _) in enumerate(self.vocabulary)}
        if source.suffix == ".csv":
            self.items = index_audioset(source, Path(audio_dir) if audio_dir else source.parent / "audio",
                                        mid_to_index)
        elif any(source.glob("*.tar")):
            self.items = index_shards(source, mid_to_index)
        else:
            self.items = index_folder(source)
        if not self.items:
            raise ValueError(f"no audio found in {source}")
        if require_labels and not self.vocabulary:
            raise ValueError(f"{source}: a supervised preset needs labels, but no class_labels_indices.csv "
                             "was found beside the data")
        self.n_samples = n_samples
        self.n_classes = len(self.vocabulary)
        self._say_if_resampled()

    def _say_if_resampled(self, probe: int = 8) -> None:
        """One log line when the first few files are not at 16 kHz (a header read each, no decoding)."""
        rates = set()
        for item in self.items[:probe]:
            try:
                rates.add(sf.info(item.path if item.offset < 0 else self._member(item)).samplerate)
            except (OSError, RuntimeError, sf.LibsndfileError):
                continue  # unreadable: skipped (and counted) when read
        other = sorted(r for r in rates if r != SAMPLE_RATE)
        if other:
            log.info("%s: audio at %s Hz is resampled to %d Hz as it is read (soxr)", self.source,
                     ", ".join(map(str, other)), SAMPLE_RATE)

    @staticmethod
    def _member(item: Item) -> io.BytesIO:
        """The bytes of a shard member."""
        with open(item.path, "rb") as f:
            f.seek(item.offset)
            return io.BytesIO(f.read(item.size))

    def __len__(self) -> int:
        return len(self.items)

    def _decode(self, item: Item) -> np.ndarray:
        wav, sr = sf.read(self._member(item) if item.offset >= 0 else item.path, dtype="float32", always_2d=True)
        wav = wav.mean(1)
        if wav.size == 0 or not np.isfinite(wav).all():
            raise ValueError("empty or non-finite audio")
        if sr != SAMPLE_RATE:
            wav = resample(wav, sr)
        return wav

    def _fit(self, wav: np.ndarray, index: int) -> np.ndarray:
        """Crop or zero-pad. The crop's offset depends only on the index: a clip longer than n_samples
        gives the same crop in every epoch and every run."""
        n = self.n_samples
        if wav.size > n:
            start = (index * 7919) % (wav.size - n + 1)
            return wav[start:start + n]
        return np.pad(wav, (0, n - wav.size))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(waveform, labels, number of unreadable files skipped to get here)."""
        for skipped in range(len(self.items)):
            item = self.items[(index + skipped) % len(self.items)]
            try:
                wav = self._decode(item)
                break
            except (OSError, RuntimeError, ValueError, sf.LibsndfileError) as err:
                log.warning("skipping unreadable clip %s (%s): %s", item.key, item.path, err)
        else:
            raise RuntimeError("no readable clip in the data set")
        labels = torch.zeros(self.n_classes)
        labels[list(item.labels)] = 1.0
        return torch.from_numpy(self._fit(wav, index)), labels, skipped


class StepBatches(torch.utils.data.Sampler):
    """Micro-batches of indices for steps start_step, start_step+1, ... on one rank.

    The global order is a permutation of the data set per epoch, seeded by (seed, epoch); step s takes
    the global positions [s * G, (s + 1) * G) with G = batch * accum * world, and rank r's micro-batch m
    takes the slice starting at (m * world + r) * batch. Resuming at step s therefore reproduces exactly
    the batches an uninterrupted run would see, for any world size with the same global batch.
    """

    def __init__(self, n: int, batch: int, accum: int, world: int, rank: int, seed: int,
                 start_step: int, total_steps: int) -> None:
        self.n, self.batch, self.accum, self.world, self.rank = n, batch, accum, world, rank
        self.seed, self.start_step, self.total_steps = seed, start_step, total_steps
        self._perms: dict[int, np.ndarray] = {}

    def _position(self, pos: int) -> int:
        epoch, offset = divmod(pos, self.n)
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return int(self._perms[epoch][offset])

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.accum

    def __iter__(self):
        global_batch = self.batch * self.accum * self.world
        for step in range(self.start_step, self.total_steps):
            for micro in range(self.accum):
                first = step * global_batch + (micro * self.world + self.rank) * self.batch
                yield [self._position(first + i) for i in range(self.batch)]
