"""Run-time compatibility fixes for the s3prl launcher (run_downstream.py), and the few that both harnesses share.

Why here. Every fix for a third-party package lives in one module of ours per side: this one for what the
s3prl upstream's launcher needs, training/compat.py for the HEAR harness (heareval, Lightning), pretraining
and the CLAP teacher (laion-clap). hear_mamclap, the runtime users deploy, needs none: it runs on plain
torch. superb_upstream may not import training (tests/test_architecture.py), so the fixes the launcher
shares with the training side (the run-time environment, tensorboard without TensorFlow, triton before
TensorFlow) are defined here, and training.compat re-exports them.

Each fix is installed by an explicit call, never at import:

    runtime_env()        environment for offline, TensorFlow-free runs of heareval, s3prl, transformers
    apply_runtime_env()  runtime_env() for this process
    prepare_tensorboard() torch.utils.tensorboard without importing TensorFlow (which breaks triton)
    load_triton_before_tensorflow()  triton's native library loaded while it still can be
    prepare_s3prl()      s3prl 0.4.18 downstreams under torchaudio 2.11 and Python 3.11

Installed packages are never edited: the fixes add or replace attributes at run time, in this process only.
tests/test_environment.py runs each one against the real package code path.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch


def runtime_env() -> dict[str, str]:
    """Environment variables for runs of heareval, s3prl and sentence-transformers on this project's
    machines (no model hub, no experiment tracker); merge them into a subprocess's environment."""
    return {
        # transformers imports TensorFlow when it is installed (tensorflow-cpu is, for heareval); with Keras 3
        # that import fails ("Your currently installed version of Keras is Keras 3"), so keep it torch-only.
        "USE_TF": "0",
        # No hub access: any download attempt should fail at once instead of hanging on the network.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # laion-clap and s3prl can log to wandb; never prompt for a login or reach its server.
        "WANDB_MODE": "disabled",
        # tokenizers warns (and may deadlock) when a process forks after its thread pool started.
        "TOKENIZERS_PARALLELISM": "false",
        # TensorFlow (imported at the top of heareval's embedding runner) prints pages of C++ start-up logs.
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def apply_runtime_env() -> None:
    """runtime_env() for this process, keeping any value the caller set already."""
    for key, value in runtime_env().items():
        os.environ.setdefault(key, value)


def prepare_tensorboard() -> None:
    """Keep tensorboard (and torch.utils.tensorboard) from importing TensorFlow.

    tensorboard 2.x imports tensorflow, when installed (tensorflow-cpu is, for heareval), the first time a
    SummaryWriter touches tf.io.gfile, unless the module tensorboard.compat.notf exists. Besides the seconds
    that takes, a process that loads TensorFlow 2.21 before triton (torch.compile, transformers' generation
    utilities) then dies with a segmentation fault inside triton's libtriton. Registering notf makes
    tensorboard use its own TensorFlow-free stub, as tensorboard's no_tensorflow build does."""
    if "tensorboard.compat.notf" not in sys.modules:
        sys.modules["tensorboard.compat.notf"] = types.ModuleType(
            "tensorboard.compat.notf", "Marker: use tensorboard's TensorFlow stub (superb_upstream.compat)")


def load_triton_before_tensorflow() -> None:
    """Load triton's native library now, before TensorFlow: loaded after TensorFlow 2.21 it segfaults
    (torch 2.14.1's triton 3.8). heareval's embedding runner and hearvalidator import TensorFlow at the top."""
    if "tensorflow" in sys.modules:
        return  # too late to help; importing triton now could crash the process
    if importlib.util.find_spec("triton") is not None:
        importlib.import_module("triton")


# -------------------------------------------------------------------------------------------------- s3prl


def prepare_s3prl() -> None:
    """Make s3prl 0.4.18's downstreams (speech_commands, voxceleb1, runner) import and read audio with
    torchaudio 2.11 on Python 3.11. Call it before importing anything from s3prl.downstream.

    Also: s3prl's checkpoints loaded with weights_only=True (allow_s3prl_checkpoints), and voxceleb1's
    file-list cache keyed by data.
    huggingface_hub's HfFolder and Repository, which s3prl's runner imports, are kept by pinning
    huggingface-hub < 1 (pyproject.toml), not patched here."""
    apply_runtime_env()
    allow_s3prl_checkpoints()
    # s3prl's runner imports torch.utils.tensorboard, which would import TensorFlow (see prepare_tensorboard).
    prepare_tensorboard()
    load_triton_before_tensorflow()
    _keep_huggingface_hub_names()
    _install_torchaudio_layer()
    _install_catalyst_sampler()
    _key_voxceleb1_cache()


def allow_s3prl_checkpoints() -> None:
    """Load s3prl's downstream checkpoints with torch's weights-only unpickler, never in full.

    They hold state dicts, numbers, strings, the yaml config as plain dicts, and the run's arguments as an
    argparse.Namespace, which torch >= 2.6 refuses by default. Allowing that one type keeps every load
    weights-only, so a crafted `-e file.ckpt` cannot run code; lifting weights_only for the whole process
    (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1) would run whatever the file's pickle says. An inherited
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is removed for the same reason, and TORCH_FORCE_WEIGHTS_ONLY_LOAD
    makes loads that pass weights_only=False weights-only too."""
    import argparse

    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    torch.serialization.add_safe_globals([argparse.Namespace])


def trust_own_checkpoints() -> None:
    """In this process, torch.load reads in full (weights_only=False) only bytes that this same process
    wrote with torch.save, recognised by their SHA-256; everything else stays weights-only.

    For runners that save and reload their own pickled checkpoints in one process (heareval's Lightning
    1.9.5 predictors hold hyper-parameters with classes and functions in them, such as torch.optim.Adam);
    a checkpoint file from anywhere else cannot run code. Lightning saves into a BytesIO buffer and then
    writes it out, and loads from an open file: both are hashed by content, not by name."""
    import hashlib

    if getattr(torch.load, "_mamclap_own_checkpoints", False):
        return
    save, load = torch.save, torch.load
    own: set[str] = set()

    def digest(f) -> str | None:  # SHA-256 of what a path, a buffer or a readable file holds
        if isinstance(f, (str, os.PathLike)):
            with open(f, "rb") as fh:
                return hashlib.sha256(fh.read()).hexdigest()
        if hasattr(f, "getvalue"):
            return hashlib.sha256(f.getvalue()).hexdigest()
        if hasattr(f, "readable") and f.readable() and hasattr(f, "seek"):
            pos = f.tell()
            data = f.read()
            f.seek(pos)
            return hashlib.sha256(data).hexdigest()
        return None

    def saving(obj, f, *args, **kwargs):
        save(obj, f, *args, **kwargs)
        d = digest(f)
        if d is not None:
            own.add(d)

    def loading(f, *args, **kwargs):
        if "weights_only" not in kwargs and digest(f) in own:
            kwargs["weights_only"] = False
        return load(f, *args, **kwargs)

    loading._mamclap_own_checkpoints = True
    torch.save, torch.load = saving, loading


def _keep_huggingface_hub_names(hub: types.ModuleType | None = None) -> None:
    """s3prl's runner and run_downstream import HfFolder and Repository from huggingface_hub, which
    huggingface-hub 1.0 removed; they are used only to push a trained downstream to the hub
    (--push_to_hf_hub). Where they are missing (the GPU machines' image ships huggingface-hub 1.x for
    transformers 5), put replacements there: HfFolder reads the token as huggingface_hub.get_token does and
    refuses to save one; Repository refuses with a message. The CPU install pins huggingface-hub < 1."""
    if hub is None:
        hub = importlib.import_module("huggingface_hub")
    if not hasattr(hub, "HfFolder"):
        class HfFolder:
            """huggingface_hub < 1's token helper, read-only (superb_upstream.compat)."""

            @staticmethod
            def get_token() -> str | None:
                return hub.get_token()

            @staticmethod
            def save_token(token: str) -> None:
                raise RuntimeError("saving a hub token is not supported here (huggingface-hub >= 1)")

        hub.HfFolder = HfFolder
    if not hasattr(hub, "Repository"):
        class Repository:
            """huggingface_hub < 1's git-based Repository: refuses (superb_upstream.compat)."""

            def __init__(self, *args, **kwargs) -> None:
                raise RuntimeError("pushing to the hub (s3prl --push_to_hf_hub) needs huggingface-hub < 1")

        hub.Repository = Repository


def s3prl_cache_dir() -> Path:
    """Where prepare_s3prl keeps s3prl's voxceleb1 file lists: $MAMCLAP_CACHE/s3prl_voxceleb1, by default
    cache/s3prl_voxceleb1 under the current directory (as an absolute path, so a later chdir keeps it)."""
    return Path(os.environ.get("MAMCLAP_CACHE") or "cache").resolve() / "s3prl_voxceleb1"


def _key_voxceleb1_cache() -> None:
    """s3prl's voxceleb1 SpeakerClassifiDataset caches its train/dev/test file lists as
    <s3prl>/downstream/voxceleb1/.cache/<mode>.pkl and reuses them whatever data it is given next, so a
    second data set silently trains on the first one's file list. Key the cache by the data root and the
    split file's contents, under s3prl_cache_dir()."""
    import hashlib

    import s3prl.downstream.voxceleb1.dataset as vox

    cls = vox.SpeakerClassifiDataset
    if getattr(cls, "_mamclap_keyed_cache", False):
        return
    original_init = cls.__init__

    def keyed_init(self, mode, file_path, meta_data, max_timestep=None):
        digest = hashlib.sha1(str(Path(file_path).resolve()).encode() + b"\0" + Path(meta_data).read_bytes())
        vox.CACHE_PATH = str(s3prl_cache_dir() / digest.hexdigest()[:16]) + os.sep
        original_init(self, mode, file_path, meta_data, max_timestep)

    cls.__init__ = keyed_init
    cls._mamclap_keyed_cache = True


@dataclass(frozen=True)
class AudioMetaData:
    """What torchaudio.info returned before 2.9 (torchaudio.backend.common.AudioMetaData)."""

    sample_rate: int
    num_frames: int
    num_channels: int
    bits_per_sample: int
    encoding: str


# soundfile subtype -> (torchaudio encoding name, bits per sample, integer dtype for normalize=False)
_SUBTYPES = {
    "PCM_S8": ("PCM_S", 8, None),
    "PCM_U8": ("PCM_U", 8, None),
    "PCM_16": ("PCM_S", 16, "int16"),
    "PCM_24": ("PCM_S", 24, "int32"),
    "PCM_32": ("PCM_S", 32, "int32"),
    "FLOAT": ("PCM_F", 32, None),
    "DOUBLE": ("PCM_F", 64, None),
}


def _audio_info(uri, format: str | None = None, backend: str | None = None) -> AudioMetaData:
    """torchaudio.info through soundfile (torchaudio 2.9 removed info)."""
    import soundfile as sf

    i = sf.info(str(uri) if isinstance(uri, os.PathLike) else uri)
    encoding, bits, _ = _SUBTYPES.get(i.subtype, (i.subtype, 0, None))
    return AudioMetaData(i.samplerate, i.frames, i.channels, bits, encoding)


def _audio_load(uri, frame_offset: int = 0, num_frames: int = -1, normalize: bool = True,
                channels_first: bool = True, format: str | None = None, buffer_size: int = 4096,
                backend: str | None = None) -> tuple[torch.Tensor, int]:
    """torchaudio.load through soundfile: (channels, frames) float32 in [-1, 1] and the sample rate.
    torchaudio >= 2.9's load needs torchcodec plus an FFmpeg install, which s3prl's users do not have.
    normalize=False keeps 16- and 32-bit PCM as integers, as torchaudio did for WAV."""
    import soundfile as sf

    path = str(uri) if isinstance(uri, os.PathLike) else uri
    dtype = "float32"
    if not normalize:
        dtype = _SUBTYPES.get(sf.info(path).subtype, (None, None, None))[2] or "float32"
    stop = None if num_frames < 0 else frame_offset + num_frames
    data, sr = sf.read(path, start=frame_offset, stop=stop, dtype=dtype, always_2d=True)  # (frames, channels)
    wav = torch.from_numpy(data)
    return (wav.T.contiguous() if channels_first else wav), sr


def _audio_save(uri, src: torch.Tensor, sample_rate: int, channels_first: bool = True, format: str | None = None,
                encoding: str | None = None, bits_per_sample: int | None = None, buffer_size: int = 4096,
                backend: str | None = None, compression=None) -> None:
    """torchaudio.save through soundfile. Float tensors go to 32-bit float WAV unless encoding/bits say
    otherwise (torchaudio's default); integer tensors keep their width."""
    import soundfile as sf

    if src.ndim != 2:
        raise ValueError(f"torchaudio.save expects a 2-D (channels, frames) tensor, got shape {tuple(src.shape)}")
    data = (src.T if channels_first else src).detach().cpu().numpy()  # (frames, channels)
    path = str(uri) if isinstance(uri, os.PathLike) else uri
    fmt = (format or Path(path).suffix.lstrip(".") or "wav").upper()
    if bits_per_sample is None and encoding is None:
        bits_per_sample = {"int16": 16, "int32": 32}.get(str(data.dtype), 32)
        encoding = "PCM_S" if data.dtype.kind == "i" else "PCM_F"
    subtype = None
    if fmt == "WAV":
        if encoding == "PCM_F" or (encoding is None and data.dtype.kind == "f"):
            subtype = "DOUBLE" if bits_per_sample == 64 else "FLOAT"
        else:
            subtype = {8: "PCM_U8", 16: "PCM_16", 24: "PCM_24", 32: "PCM_32"}[bits_per_sample or 16]
    sf.write(path, data, sample_rate, subtype=subtype, format=fmt)


def _sox_apply_effects_tensor(tensor: torch.Tensor, sample_rate: int, effects: list[list[str]],
                              channels_first: bool = True) -> tuple[torch.Tensor, int]:
    """The sox effects s3prl uses, in torch: channels (down-mix by averaging, or copy a mono signal), rate
    (torchaudio.functional.resample: windowed sinc, not sox's own filter), gain (dB), remix - (to mono).
    Any other effect raises ValueError, rather than silently doing nothing."""
    import torchaudio.functional as AF

    wav = tensor if channels_first else tensor.T  # (channels, frames)
    sr = int(sample_rate)
    for effect in effects:
        name, args = effect[0], effect[1:]
        if name == "channels":
            n = int(args[0])
            if n == 1:
                wav = wav.mean(0, keepdim=True)
            elif wav.shape[0] == 1:
                wav = wav.expand(n, -1).clone()
            elif wav.shape[0] != n:
                raise ValueError(f"sox effect channels {n}: cannot map {wav.shape[0]} channels to {n}")
        elif name == "remix" and args == ["-"]:
            wav = wav.mean(0, keepdim=True)
        elif name == "rate":
            new_sr = int(float(args[-1].rstrip("k")) * (1000 if args[-1].endswith("k") else 1))
            if new_sr != sr:
                wav = AF.resample(wav, sr, new_sr)
                sr = new_sr
        elif name == "gain":
            if len(args) != 1:
                raise ValueError(f"sox effect {effect!r}: only a plain gain in dB is supported")
            wav = wav * math.pow(10.0, float(args[0]) / 20.0)
        else:
            raise ValueError(f"sox effect {effect!r} is not supported by superb_upstream.compat's torchaudio "
                             "layer (supported: channels, rate, gain, remix -)")
    return (wav if channels_first else wav.T), sr


def _sox_apply_effects_file(path, effects: list[list[str]], normalize: bool = True, channels_first: bool = True,
                            format: str | None = None) -> tuple[torch.Tensor, int]:
    """sox_effects.apply_effects_file: load with soundfile, then the effects above."""
    wav, sr = _audio_load(path, normalize=True)
    return _sox_apply_effects_tensor(wav, sr, effects, channels_first=channels_first)


def _install_torchaudio_layer() -> None:
    """torchaudio 2.9 removed set_audio_backend, get_audio_backend, info and sox_effects, and its load/save
    need torchcodec plus FFmpeg. s3prl 0.4.18 calls torchaudio.set_audio_backend at import in several
    modules, speech_commands imports torchaudio.sox_effects.apply_effects_file, and voxceleb1 calls
    torchaudio.load. Provide them over soundfile, which reads WAV/FLAC/OGG with no system libraries."""
    import torchaudio

    if getattr(torchaudio, "_mamclap_layer", False):
        return
    backend = {"name": "soundfile"}

    def set_audio_backend(name: str | None) -> None:
        """Kept for old callers: every load goes through soundfile, whatever backend is named."""
        if name not in (None, "soundfile", "sox_io", "sox"):
            raise ValueError(f"unknown torchaudio backend {name!r}")
        backend["name"] = name or "soundfile"

    torchaudio.set_audio_backend = set_audio_backend
    torchaudio.get_audio_backend = lambda: backend["name"]
    torchaudio.list_audio_backends = lambda: ["soundfile"]
    torchaudio.info = _audio_info
    torchaudio.load = _audio_load
    torchaudio.save = _audio_save
    torchaudio.AudioMetaData = AudioMetaData
    sox_effects = types.ModuleType("torchaudio.sox_effects",
                                   "sox effects used by s3prl, in torch (superb_upstream.compat)")
    sox_effects.apply_effects_file = _sox_apply_effects_file
    sox_effects.apply_effects_tensor = _sox_apply_effects_tensor
    sox_effects.effect_names = lambda: ["channels", "rate", "gain", "remix"]
    torchaudio.sox_effects = sox_effects
    sys.modules["torchaudio.sox_effects"] = sox_effects
    torchaudio._mamclap_layer = True


class _SamplerIndices(torch.utils.data.Dataset):
    """The indices one pass of a sampler yields, as a dataset, so DistributedSampler can split them."""

    def __init__(self, sampler: torch.utils.data.Sampler) -> None:
        self.indices = list(sampler)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> int:
        return self.indices[i]


class DistributedSamplerWrapper(torch.utils.data.DistributedSampler):
    """Split any sampler's indices between distributed replicas (catalyst.data.sampler's class).

    Each pass draws the wrapped sampler once, then gives this replica its share of the drawn positions, as
    DistributedSampler does for a dataset: shuffled by seed + epoch when shuffle is on, padded by repetition
    so every replica gets the same count (or cut when drop_last)."""

    def __init__(self, sampler: torch.utils.data.Sampler, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        super().__init__(_SamplerIndices(sampler), num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=drop_last)
        self.sampler = sampler

    def __iter__(self) -> Iterator[int]:
        drawn = _SamplerIndices(self.sampler)  # a fresh draw of a random sampler, same length
        if len(drawn) != len(self.dataset):
            raise RuntimeError(f"the wrapped sampler changed length from {len(self.dataset)} to {len(drawn)}")
        self.dataset = drawn
        return (drawn[i] for i in super().__iter__())


def _install_catalyst_sampler() -> None:
    """s3prl's speech_commands/expert.py does `from catalyst.data.sampler import DistributedSamplerWrapper`;
    no catalyst release installs and imports on Python 3.11, so provide that one class under its import
    name. A real catalyst, if one is importable, is left alone."""
    if "catalyst.data.sampler" in sys.modules or importlib.util.find_spec("catalyst") is not None:
        return
    names = ("catalyst", "catalyst.data", "catalyst.data.sampler")
    modules = [types.ModuleType(n, "DistributedSamplerWrapper only, from superb_upstream.compat") for n in names]
    for parent, child, name in zip(modules, modules[1:], names[1:]):
        parent.__path__ = []  # a package, so the submodule import machinery accepts it
        setattr(parent, name.rsplit(".", 1)[1], child)
    modules[-1].DistributedSamplerWrapper = DistributedSamplerWrapper
    for name, module in zip(names, modules):
        sys.modules[name] = module
