"""LAION-CLAP's audio side, loaded offline: the one loader of a LAION-layout CLAP checkpoint, shared by the
project's CLAP teacher (training/pretrain/teacher.py, which documents the layout and the geometry), the CLAP
trainer, and the teacher's HEAR module (hear_mamclap.baselines.clap).

Why here. hear_mamclap, the runtime, may not import training/; the teacher's HEAR module needs this loader at
run time, so it lives in the runtime package and training imports it from here. It sits under baselines
because it needs what only a baseline may: laion-clap 1.1.7 (bin/setup installs it with --no-deps) and the
`clap` extra's torchlibrosa, torchvision and h5py, which laion-clap's htsat.py imports. laion_clap itself is
never imported (load_htsat_module says why), so nothing here reaches the network.

    load_htsat_module()      laion-clap's HTS-AT module, importable offline
    htsat_audio_config()     one of laion-clap's HTS-AT audio configurations, as create_htsat_model takes it
    build_clap_audio()       HTS-AT audio branch + CLAP's audio projection, built as LAION builds them
    read_clap_audio()        a checkpoint's checked audio_branch / audio_projection state and HTS-AT size
    load_strict()            load_state_dict(strict=True) with one error listing every mismatch
    WindowGeometry           48 kHz, 10 s windows, 32 steps per window and the steps' centre times
    plan_windows(), linear_weights(), time_weights()   the windows covering a clip, and reading them in time
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

HTSAT_BY_WIDTH = {96: "HTSAT-tiny", 128: "HTSAT-base", 256: "HTSAT-large"}  # patch_embed width -> config
WINDOW_OVERHANG_S = 0.5  # a clip up to window + this many seconds is centred in one window, not split in two
MISSING = ("laion-clap is not installed: the CLAP teacher needs laion-clap 1.1.7 (`pip install --no-deps "
           "laion-clap==1.1.7` and the clap extra, `pip install 'mamclap[clap]'`; bin/setup installs both)")

# ------------------------------------------------------------------------------------ laion-clap, offline

_HTSAT_PACKAGE = "_mamclap_laion_clap_module"


def _clap_module_dir() -> Path:
    spec = importlib.util.find_spec("laion_clap")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(MISSING)
    return Path(next(iter(spec.submodule_search_locations))) / "clap_module"


def load_htsat_module() -> types.ModuleType:
    """laion_clap.clap_module.htsat, imported without running laion_clap/__init__.py or
    clap_module/__init__.py: the first imports training/data.py, which calls
    BertTokenizer.from_pretrained("bert-base-uncased") at import (network), and the second imports
    transformers for the text branches. htsat.py itself needs only torch, torchlibrosa and the sibling
    modules utils.py (torchvision, h5py) and feature_fusion.py, so clap_module is registered under a
    private package name whose __init__ is never executed, and htsat is imported from it."""
    name = f"{_HTSAT_PACKAGE}.htsat"
    if name in sys.modules:
        return sys.modules[name]
    folder = _clap_module_dir()
    spec = importlib.util.spec_from_file_location(_HTSAT_PACKAGE, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    package = importlib.util.module_from_spec(spec)  # not executed: only its __path__ is used
    sys.modules[_HTSAT_PACKAGE] = package
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        sys.modules.pop(_HTSAT_PACKAGE, None)
        raise ImportError(f"laion-clap's HTS-AT needs {e.name}, which is not installed (the clap extra: "
                          "pip install 'mamclap[clap]')") from e
    except BaseException:
        sys.modules.pop(_HTSAT_PACKAGE, None)
        raise


def htsat_audio_config(model: str = "HTSAT-tiny") -> types.SimpleNamespace:
    """audio_cfg of laion-clap's model_configs/<model>.json (HTSAT-tiny, HTSAT-base, ...), with the fields
    create_htsat_model reads; plus embed_dim, the width of the CLAP projection."""
    path = _clap_module_dir() / "model_configs" / f"{model}.json"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("HTSAT*.json"))
        raise ValueError(f"no laion-clap model config {model!r}; expected one of {known}")
    config = json.loads(path.read_text())
    return types.SimpleNamespace(**config["audio_cfg"], embed_dim=config["embed_dim"])


def build_clap_audio(model: str = "HTSAT-tiny", joint_dim: int | None = 512
                     ) -> tuple[nn.Module, nn.Sequential | None, types.SimpleNamespace]:
    """laion-clap's HTS-AT audio branch (built offline, feature fusion off), CLAP's audio projection over its
    pooled output (0 Linear width -> joint_dim, 1 ReLU, 2 Linear: LAION's key names; None when joint_dim is
    None) and the branch's audio_cfg. The one builder of CLAP's audio side, for the teacher, the CLAP
    trainer and the HEAR module alike: built in this order, a seeded build gives the same weights in all."""
    audio_cfg = htsat_audio_config(model)
    branch = load_htsat_module().create_htsat_model(audio_cfg)
    width = branch.num_features  # 768 (tiny) / 1024 (base)
    projection = None if joint_dim is None else nn.Sequential(
        nn.Linear(width, joint_dim), nn.ReLU(), nn.Linear(joint_dim, joint_dim))
    return branch, projection, audio_cfg


# ------------------------------------------------------------------------------------ LAION checkpoints


def read_laion_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A LAION CLAP checkpoint ({"state_dict": ...} or a bare state dict) -> its state dict, "module."
    stripped. Raises ValueError, naming the file, for anything that is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no CLAP checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or holding pickled objects
        raise ValueError(f"{path}: not a readable torch checkpoint of tensors ({type(e).__name__}: {e})") from e
    state = ckpt["state_dict"] if isinstance(ckpt, Mapping) and "state_dict" in ckpt else ckpt
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        keys = list(ckpt)[:8] if isinstance(ckpt, Mapping) else "-"
        raise ValueError(f"{path}: expected a LAION CLAP checkpoint (a dict with 'state_dict', or a state dict "
                         f"of tensors), got {type(ckpt).__name__} with keys {keys}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def sub_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def read_clap_audio(path: str | Path) -> tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(HTS-AT config name, audio_branch state, audio_projection state ({} when absent)) of a LAION-layout
    checkpoint, checked: an audio branch, no feature fusion, an HTS-AT of a known size."""
    state = read_laion_state_dict(path)
    audio = sub_state(state, "audio_branch.")
    if not audio:
        prefixes = sorted({k.split(".", 1)[0] for k in state})
        raise ValueError(f"{path}: no audio_branch.* keys (a CLAP checkpoint has audio_branch, audio_projection, "
                         f"text_branch, ...); found top-level names {prefixes[:12]}")
    if any(k.startswith(("fusion_model.", "mel_conv1d.")) or ".fusion_model." in k for k in audio):
        raise ValueError(f"{path}: a feature-fusion checkpoint (e.g. 630k-audioset-fusion-best.pt); only "
                         "non-fusion HTS-AT checkpoints are supported (630k-audioset-best.pt, music_* ...)")
    embed = audio.get("patch_embed.proj.weight")
    if embed is None or embed.shape[0] not in HTSAT_BY_WIDTH:
        raise ValueError(f"{path}: audio_branch is not an HTS-AT of a known size: patch_embed.proj.weight is "
                         f"{None if embed is None else tuple(embed.shape)}, expected width in {sorted(HTSAT_BY_WIDTH)}")
    return HTSAT_BY_WIDTH[embed.shape[0]], audio, sub_state(state, "audio_projection.")


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """load_state_dict(strict=True), but one error listing every missing, unexpected and mis-shaped key."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                  for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    problems = [f"{len(v)} {name}: {', '.join(v[:12])}{' ...' if len(v) > 12 else ''}"
                for name, v in (("missing", missing), ("unexpected", unexpected),
                                ("shape mismatches (checkpoint vs model)", mismatched)) if v]
    if problems:
        raise ValueError(f"{what} does not match: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------------- windows in time


@dataclass(frozen=True)
class WindowGeometry:
    """HTS-AT's window in time (training/pretrain/teacher.py's docstring): `rate` Hz, `samples` per window,
    `n_steps` frame-level steps per window and `n_bands` frequency bands of its token map, `step_times` (S,)
    the steps' centres (s, float64) from the window's start."""
    rate: int
    samples: int
    n_steps: int
    n_bands: int
    step_times: torch.Tensor

    @property
    def seconds(self) -> float:
        return self.samples / self.rate

    @classmethod
    def of(cls, branch: nn.Module, audio_cfg: types.SimpleNamespace) -> WindowGeometry:
        n_stft = audio_cfg.clip_samples // audio_cfg.hop_size + 1  # centred STFT frames: 1001
        n_img = branch.spec_size * branch.freq_ratio  # frames after the bicubic stretch: 1024
        downsample = 2 ** (len(branch.depths) - 1)  # three patch mergings
        n_steps = n_img // (branch.patch_stride[1] * downsample)  # 32 time steps per window
        n_bands = branch.spec_size // (branch.patch_stride[0] * downsample) // branch.freq_ratio  # 2
        centre_img = (torch.arange(n_steps, dtype=torch.float64) + 0.5) * (n_img / n_steps) - 0.5
        # align_corners=True: stretched frame k sits at STFT frame k * (n_stft - 1) / (n_img - 1).
        step_times = centre_img * (n_stft - 1) / (n_img - 1) * audio_cfg.hop_size / audio_cfg.sample_rate
        return cls(audio_cfg.sample_rate, audio_cfg.clip_samples, n_steps, n_bands, step_times)


def plan_windows(duration_s: float, window_s: float) -> list[float]:
    """Start times (s) of the windows covering a clip: a clip up to window_s + WINDOW_OVERHANG_S takes one
    (from 0 when shorter, centred when a little longer), a longer one ceil(d / window_s) spread evenly from its
    start to its end (overlapping, never padded)."""
    if duration_s <= window_s + WINDOW_OVERHANG_S:
        return [max(0.0, (duration_s - window_s) / 2)]
    n = math.ceil(duration_s / window_s)
    stride = (duration_s - window_s) / (n - 1)  # <= window_s: consecutive windows overlap, no gaps
    return [i * stride for i in range(n)]


def linear_weights(query: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """(Q,) positions, (K,) increasing knots -> (Q, K) linear interpolation weights, clamped at both ends."""
    if len(knots) == 1:
        return torch.ones(len(query), 1, dtype=query.dtype, device=query.device)
    q = query.clamp(knots[0], knots[-1])
    hi = torch.searchsorted(knots, q).clamp(1, len(knots) - 1)
    lo = hi - 1
    frac = (q - knots[lo]) / (knots[hi] - knots[lo])
    w = torch.zeros(len(query), len(knots), dtype=query.dtype, device=query.device)
    rows = torch.arange(len(query), device=query.device)
    w[rows, lo] = 1 - frac
    w[rows, hi] += frac
    return w


def time_weights(times: torch.Tensor, starts: torch.Tensor, step_times: torch.Tensor,
                 window_s: float) -> torch.Tensor:
    """Query times (T,), window starts (W,), step centres within a window (S,) -> (T, W * S): each time
    interpolates between the steps of the window whose centre is nearest to it."""
    window = (times[:, None] - (starts[None] + window_s / 2)).abs().argmin(dim=1)  # (T,)
    inside = linear_weights(times - starts[window], step_times)  # (T, S)
    w = torch.zeros(len(times), len(starts), len(step_times), dtype=inside.dtype, device=inside.device)
    w[torch.arange(len(times), device=w.device), window] = inside
    return w.reshape(len(times), -1)  # (T, W * S), window-major like the stacked features
