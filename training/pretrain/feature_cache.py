"""Log-mel and teacher features computed once per clip (`mamclap precompute`), for `mamclap pretrain --cache`.

Why: the loader gives each clip the same waveform every epoch (AudioClips crops at an offset fixed by the
index and applies no augmentation), so the student's log-mel and the teacher's targets are the same every
epoch too. Computing them once takes the decoding, the front end and the teacher forward out of every step;
a step's batch is then rows of this cache, held in GPU memory when it fits (the kits' corpora do: the
medium kit's is ~7 GB at ViT-B's geometry) and read from memory-mapped files otherwise. The online path
stays the default: it is the one to use as soon as the waveforms change between epochs (augmentation).

A cache is a folder:

    key.json          what the features depend on (below) and how they were built
    mel.npy           (n_items, target_frames, n_mels) bf16 bits as uint16: the normalised log-mel of exactly
                      the waveform AudioClips gives for each index (its crop, or its zero padding)
    teacher.npy       (n_items, n_time, G, dim) bf16 bits: Teacher.forward_bands of the same waveform, i.e.
                      aligned to the student's patch grid of that crop, G teacher bands per time patch
    freq_weights.npy  (n_freq, G) float32: how the bands fill the frequency patches (teacher.expand_bands)
    labels.npy        (n_items, n_classes) uint8 multi-hot
    skipped.npy       (n_items,) int32: unreadable files skipped to reach each item, as the loader counts them

The key holds the data's fingerprint (every item's key, shard file name, offset, size and labels, and the
vocabulary), the number of samples and the source of AudioClips' decode and crop functions, the front
end's settings and, with a teacher, the checkpoint's SHA-256, the TeacherConfig and the patch grid. A run
whose own key differs in any of these refuses the cache and names the fields, so a stale cache is never
used; how it was built (device, precision, versions) is recorded but not compared.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from hear_mamclap import atomic
from hear_mamclap.model import EncoderConfig
from training.pretrain.data import AudioClips
from training.pretrain.mam import VARIANTS
from training.pretrain.teacher import expand_bands

FORMAT = 1
ARRAYS = ("mel", "teacher", "freq_weights", "labels", "skipped")


class StaleCacheError(ValueError):
    """The cache was built for other data, geometry or teacher than the run's."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def data_fingerprint(dataset: AudioClips) -> str:
    """SHA-256 over the items (key, shard file name, offset, size, labels) and the vocabulary: the same
    corpus gives the same fingerprint wherever it lies."""
    rows = [[it.key, Path(it.path).name, it.offset, it.size, list(it.labels)] for it in dataset.items]
    text = json.dumps({"items": rows, "vocabulary": [list(v) for v in dataset.vocabulary]})
    return hashlib.sha256(text.encode()).hexdigest()


def _source_sha256(*functions) -> str:
    """A change to the code that decodes and crops clips changes their waveforms: it invalidates caches."""
    return hashlib.sha256("".join(inspect.getsource(f) for f in functions).encode()).hexdigest()


def cache_key(dataset: AudioClips, encoder: EncoderConfig, teacher_path: str | Path | None = None,
              teacher_cfg=None) -> dict:
    """What the cached features of `dataset` depend on (see the module docstring); teacher part None
    without a teacher."""
    key = {
        "format": FORMAT,
        "data": {"n_items": len(dataset), "fingerprint": data_fingerprint(dataset),
                 "n_samples": dataset.n_samples, "n_classes": dataset.n_classes,
                 "decode_and_crop": _source_sha256(AudioClips._decode, AudioClips._fit)},
        "frontend": {name: getattr(encoder, name) for name in (
            "sample_rate", "n_mels", "frame_length_ms", "frame_shift_ms", "norm_mean", "norm_std", "target_frames")},
        "teacher": None,
    }
    if teacher_path:
        key["teacher"] = {"sha256": file_sha256(teacher_path), **dataclasses.asdict(teacher_cfg),
                          "patch_size": list(encoder.patch_size)}
    return key


def _differences(cached, expected, prefix: str = "") -> list[str]:
    if isinstance(cached, dict) and isinstance(expected, dict):
        out = []
        for k in sorted(set(cached) | set(expected)):
            out += _differences(cached.get(k), expected.get(k), f"{prefix}{k}.")
        return out
    return [] if cached == expected else [f"{prefix[:-1]}: cache {cached!r}, run {expected!r}"]


class FeatureCache:
    """An opened cache. `batch(indices)` gives a step's (log-mel, teacher targets, labels, skipped) on
    `device`: rows gathered on the GPU when the cache was loaded there, else gathered from the mapped
    files and copied through pinned memory without blocking."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", gpu_fraction: float = 0.5) -> None:
        self.path = Path(path)
        if not (self.path / "key.json").is_file():
            raise FileNotFoundError(f"no feature cache at {self.path} (key.json missing): build one with "
                                    "`mamclap precompute --data DATA [--teacher CKPT] --out DIR`")
        self.info = json.loads((self.path / "key.json").read_text())
        self.key = self.info["key"]
        self.device = torch.device(device)
        host = {name: np.load(self.path / f"{name}.npy", mmap_mode="c")
                for name in ARRAYS if (self.path / f"{name}.npy").exists()}
        self.has_teacher = "teacher" in host
        self.freq_weights = torch.from_numpy(np.array(host.pop("freq_weights"))) if self.has_teacher else None
        self.skipped = np.array(host.pop("skipped"))
        nbytes = sum(a.nbytes for a in host.values())
        self.on_device = self.device.type == "cuda" and nbytes < gpu_fraction * torch.cuda.mem_get_info(self.device)[0]
        self.arrays = {name: self._tensor(a) for name, a in host.items()}

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        """A mapped array as a tensor (bf16 for the uint16 bit patterns): copied to the device in slices
        when the cache lives there, else left mapped."""
        def as_torch(a: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(a))
            return t.view(torch.bfloat16) if a.dtype == np.uint16 else t
        if not self.on_device:
            return as_torch(array)
        out = torch.empty(array.shape, dtype=torch.bfloat16 if array.dtype == np.uint16 else
                          as_torch(array[:1]).dtype, device=self.device)
        rows = max(1, (1 << 30) // max(1, array[:1].nbytes))  # ~1 GiB of host memory at a time
        for start in range(0, len(array), rows):
            out[start:start + rows] = as_torch(array[start:start + rows]).to(self.device)
        return out

    def __len__(self) -> int:
        return len(self.skipped)

    @property
    def teacher_dim(self) -> int:
        return self.arrays["teacher"].shape[-1]

    def check(self, expected: dict, teacher: bool) -> FeatureCache:
        """Raise StaleCacheError unless the cache matches the run's key (the teacher part only when the
        run distils)."""
        cached = dict(self.key)
        expected = dict(expected)
        if not teacher:
            cached.pop("teacher"), expected.pop("teacher")
        elif not self.has_teacher:
            raise StaleCacheError(f"{self.path} holds no teacher features, and this run distils a teacher: "
                                  "build the cache with --teacher")
        diffs = _differences(cached, expected)
        if diffs:
            raise StaleCacheError(f"the feature cache {self.path} was built for other inputs than this run's "
                                  f"({'; '.join(diffs)}): rebuild it with `mamclap precompute`, or run without "
                                  "--cache")
        return self

    def _rows(self, name: str, indices: torch.Tensor, device_indices: torch.Tensor | None) -> torch.Tensor:
        if self.on_device:
            return self.arrays[name].index_select(0, device_indices)
        rows = self.arrays[name][indices]  # gathered on the host from the mapped file
        if self.device.type == "cuda":
            return rows.pin_memory().to(self.device, non_blocking=True)
        return rows

    def _indices(self, indices) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return idx, (idx.pin_memory().to(self.device, non_blocking=True) if self.on_device else None)

    def targets(self, indices) -> torch.Tensor:
        """Item indices -> teacher targets (B, n_time * n_freq, dim) bf16 on the cache's device."""
        idx, on_gpu = self._indices(indices)
        return expand_bands(self._rows("teacher", idx, on_gpu), self.freq_weights)

    def batch(self, indices, teacher: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, int]:
        """Item indices -> (log-mel (B, T, n_mels) float32, teacher targets (B, n_time * n_freq, dim) bf16,
        or None without `teacher`, multi-hot labels (B, n_classes) float32, unreadable files skipped to
        reach them)."""
        idx, on_gpu = self._indices(indices)
        mel = self._rows("mel", idx, on_gpu).float()
        targets = expand_bands(self._rows("teacher", idx, on_gpu), self.freq_weights) if teacher else None
        labels = self._rows("labels", idx, on_gpu).float()
        return mel, targets, labels, int(self.skipped[idx.numpy()].sum())


def build(dataset: AudioClips, encoder_cfg: EncoderConfig, out: str | Path, teacher=None,
          teacher_path: str | Path | None = None, teacher_cfg=None, device: str | torch.device = "cpu",
          batch_size: int = 64, workers: int = 4, progress: bool = True) -> Path:
    """Compute every item's log-mel (and teacher features) once and write a cache folder at `out`
    (atomically: a temporary folder renamed at the end). Returns `out`. An existing cache with the same
    key is kept as it is; one with another key is refused."""
    from hear_mamclap.frontend import LogMelFrontend

    out = Path(out)
    key = cache_key(dataset, encoder_cfg, teacher_path, teacher_cfg)
    if out.exists():
        FeatureCache(out).check(key, teacher=teacher is not None)
        return out
    device = torch.device(device)
    frontend = LogMelFrontend(sample_rate=encoder_cfg.sample_rate, n_mels=encoder_cfg.n_mels,
                              frame_length_ms=encoder_cfg.frame_length_ms, frame_shift_ms=encoder_cfg.frame_shift_ms,
                              mean=encoder_cfg.norm_mean, std=encoder_cfg.norm_std).to(device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    atomic.remove_stale(out)  # a build killed midway
    with atomic.directory(out) as tmp:
        n = len(dataset)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                            pin_memory=device.type == "cuda")
        arrays: dict[str, np.ndarray] = {}
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=n, desc="precompute", unit="clip")
        start = 0
        for wav, labels, skipped in loader:
            wav = wav.to(device, non_blocking=True)
            with torch.no_grad():
                rows = {"mel": frontend(wav), "labels": labels.to(torch.uint8), "skipped": skipped.to(torch.int32)}
                if teacher is not None:
                    with amp:
                        rows["teacher"] = teacher.forward_bands(wav)  # (B, n_time, G, dim)
            for name, value in rows.items():
                value = value.to(torch.bfloat16).view(torch.uint16) if value.is_floating_point() else value
                value = value.cpu().numpy()
                if name not in arrays:
                    arrays[name] = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=value.dtype,
                                                             shape=(n, *value.shape[1:]))
                arrays[name][start:start + len(value)] = value
            start += len(wav)
            if bar is not None:
                bar.update(len(wav))
        if bar is not None:
            bar.close()
        for array in arrays.values():
            array.flush()
        if teacher is not None:
            np.save(tmp / "freq_weights.npy", teacher.freq_weights.float().numpy())
        built = {"device": device.type, "precision": "bf16 autocast" if device.type == "cuda" else "float32",
                 "torch": torch.__version__, "batch_size": batch_size}
        (tmp / "key.json").write_text(json.dumps({"key": key, "built": built}, indent=1))
        del arrays
    return out


# ---- `mamclap precompute` ----


def register(subparsers) -> None:
    from hear_mamclap.model import ENCODER_PRESETS
    from training import args as checks

    p = subparsers.add_parser("precompute", help="compute log-mel and teacher features once, for pretrain --cache",
                              description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=checks.existing_path,
                   help="the pretraining data (as mamclap pretrain --data)")
    p.add_argument("--out", required=True, type=checks.out_dir, help="cache folder to write (beside the shards, say)")
    p.add_argument("--variant", "--preset", default="supmam_clap", choices=VARIANTS,
                   help="the pretraining variant (its encoder geometry); --preset is the old name (default: %(default)s)")
    p.add_argument("--size", default="tiny", choices=list(ENCODER_PRESETS), help="encoder size (default: %(default)s)")
    p.add_argument("--teacher", default=None, type=checks.existing_file,
                   help="LAION-layout CLAP checkpoint; without it, log-mel only (default: none)")
    p.add_argument("--teacher-features", default="frames", choices=["frames", "tokenmap"],
                   help="teacher features, as pretrain --teacher-features (default: %(default)s)")
    p.add_argument("--teacher-align", default="time_interp", choices=["time_interp", "grid_resample"],
                   help="alignment to the patch grid, as pretrain --teacher-align (default: %(default)s)")
    p.add_argument("--teacher-projection", action=argparse.BooleanOptionalAction, default=False,
                   help="LAION's 512-d audio projection, as pretrain --teacher-projection (default: off)")
    p.add_argument("--batch-size", type=checks.positive_int, default=64, help="clips per forward (default: %(default)s)")
    p.add_argument("--workers", type=checks.nonneg_int, default=4, help="data loader processes (default: %(default)s)")
    p.add_argument("--device", default="auto", type=checks.device, help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from training.pretrain.mam import PretrainConfig
    from training.pretrain.teacher import TeacherConfig, load_teacher
    from training.pretrain.train import n_samples_for

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if args.device == "auto" else args.device)
    encoder = PretrainConfig.preset(args.variant, size=args.size).encoder
    dataset = AudioClips(str(args.data), n_samples=n_samples_for(encoder))
    teacher = teacher_cfg = None
    if args.teacher:
        teacher_cfg = TeacherConfig(features=args.teacher_features, align=args.teacher_align,
                                    projection=args.teacher_projection)
        teacher = load_teacher(args.teacher, encoder=encoder, cfg=teacher_cfg, device=device)
    out = build(dataset, encoder, args.out, teacher=teacher, teacher_path=str(args.teacher) if args.teacher else None,
                teacher_cfg=teacher_cfg, device=device, batch_size=args.batch_size, workers=args.workers)
    print(out)
    return 0
