"""mamclap encoders as a HEAR 2021 module.

    python -m heareval.embeddings.runner hear_mamclap --model CKPT --tasks-dir TASKS

`CKPT` is an encoder export (folder or its encoder.safetensors) or a full pretraining checkpoint; an empty
path gives a randomly initialised base encoder (with a warning), useful only as a baseline.

Embeddings. The encoder cuts a clip into non-overlapping 10.24 s windows (no overlap: each window is encoded
on its own, as in pretraining), and gives one feature per 16-frame time patch (160 ms), the frequency
patches concatenated. Long audio is fed through in groups of windows, so memory stays bounded apart from
the output itself; the audio is split at window boundaries with the 240 samples of look-ahead that the last
Kaldi frame needs, which gives exactly the frames of the whole clip. Timestamp embeddings are those patch
features linearly interpolated (in time) to a regular hop of `timestamp_hop_ms` (40 ms by default; HEAR
asks for at most 50 ms), timestamps in ms at the centre of each hop. Scene embeddings pool the patch
features over the clip (mean, or mean and max concatenated).

Options (keyword arguments of load_model, or `--model-options '{"layers": "mean", "last_k": 4}'` in
heareval): layers "last" (the final, normalised layer) | "mean" | "concat" (of the last `last_k` blocks'
outputs); freq_reduce "concat" | "mean"; scene_pooling "mean" | "meanmax"; timestamp_hop_ms;
windows_per_forward (memory/speed trade-off).
"""
from __future__ import annotations

import inspect
import math
import numbers
import warnings
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder

SAMPLE_RATE = 16000
TIMESTAMP_HOP_MS = 40.0
# Larger samples overflow float32 in the front end: a frame's power spectrum sums (512 * peak)^2 over 257
# bins, above float32's 3.4e38 from a peak of about 2e15. Audio is [-1, 1]; int16-scaled floats still pass.
MAX_PEAK = 1e12


class HearModel(nn.Module):
    """The encoder plus the embedding options; what load_model returns."""

    sample_rate = SAMPLE_RATE

    def __init__(self, encoder: MAMCLAPEncoder, layers: Literal["last", "mean", "concat"] = "last",
                 last_k: int = 1, freq_reduce: Literal["concat", "mean"] = "concat",
                 scene_pooling: Literal["mean", "meanmax"] = "mean",
                 timestamp_hop_ms: float = TIMESTAMP_HOP_MS, windows_per_forward: int = 8) -> None:
        super().__init__()
        if encoder.cfg.sample_rate != SAMPLE_RATE:
            raise ValueError(f"HEAR modules take {SAMPLE_RATE} Hz audio; this encoder expects "
                             f"{encoder.cfg.sample_rate} Hz")
        if layers not in ("last", "mean", "concat"):
            raise ValueError(f"layers must be 'last', 'mean' or 'concat', got {layers!r}")
        if not 1 <= last_k <= encoder.cfg.depth:
            raise ValueError(f"last_k must be between 1 and the encoder depth {encoder.cfg.depth}, got {last_k}")
        if freq_reduce not in ("concat", "mean"):
            raise ValueError(f"freq_reduce must be 'concat' or 'mean', got {freq_reduce!r}")
        if scene_pooling not in ("mean", "meanmax"):
            raise ValueError(f"scene_pooling must be 'mean' or 'meanmax', got {scene_pooling!r}")
        if not 0 < timestamp_hop_ms <= 50:
            raise ValueError(f"timestamp_hop_ms must be in (0, 50] (HEAR), got {timestamp_hop_ms}")
        if windows_per_forward < 1:
            raise ValueError(f"windows_per_forward must be >= 1, got {windows_per_forward}")
        self.encoder = encoder.eval()
        self.layers, self.last_k, self.freq_reduce = layers, last_k, freq_reduce
        self.scene_pooling, self.timestamp_hop_ms = scene_pooling, timestamp_hop_ms
        self.windows_per_forward = windows_per_forward
        frame = encoder.feature_dim(freq_reduce)
        self.timestamp_embedding_size = frame * (last_k if layers == "concat" else 1)
        self.scene_embedding_size = self.timestamp_embedding_size * (2 if scene_pooling == "meanmax" else 1)
        fe = encoder.frontend
        self._window_samples = fe.hop_length * encoder.cfg.target_frames  # samples per encoder window
        self._lookahead = fe.window_length - fe.hop_length  # extra samples the last frame of a window reads

    def _select(self, out) -> torch.Tensor:
        """EncoderOutput -> (B, P, D) features of the chosen layers."""
        if self.layers == "last":
            return out.frames
        chosen = out.hidden_states[-self.last_k:]
        return torch.stack(chosen).mean(0) if self.layers == "mean" else torch.cat(chosen, dim=-1)

    @torch.no_grad()
    def patch_features(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, N) audio -> (B, P, D) features per 160 ms time patch, in groups of encoder windows."""
        step = self._window_samples * self.windows_per_forward
        want_hidden = self.layers != "last"
        pieces = []
        for start in range(0, audio.shape[1], step):
            segment = audio[:, start:start + step + self._lookahead]
            if segment.shape[1] < self.encoder.frontend.window_length:
                break  # fewer samples than one frame remain: no frame starts here
            pieces.append(self._select(self.encoder(segment, freq_reduce=self.freq_reduce,
                                                     hidden_states=want_hidden)))
        return torch.cat(pieces, dim=1)

    def timestamps_ms(self, n_samples: int) -> torch.Tensor:
        """Regular timestamps (ms) at the centre of each hop covering the clip."""
        duration_ms = 1000.0 * n_samples / SAMPLE_RATE
        n = max(1, math.ceil(duration_ms / self.timestamp_hop_ms))
        return (torch.arange(n, dtype=torch.float64) + 0.5) * self.timestamp_hop_ms

    def interpolate(self, features: torch.Tensor, n_samples: int,
                    chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P, D) patch features -> (B, T, D) at the timestamp hop, linear in time, and (T,) timestamps.

        The output is allocated once and filled `chunk` timestamps at a time, so the temporaries stay
        (B, chunk, D) however long the clip (one hour at 40 ms is 90,000 timestamps)."""
        centres = 1000.0 * self.encoder.frame_times(features.shape[1])  # (P,) ms
        times = self.timestamps_ms(n_samples)  # (T,)
        pos = torch.searchsorted(centres, times).clamp(1, max(1, len(centres) - 1))  # right neighbour
        left = (pos - 1).clamp(max=len(centres) - 1)
        right = pos.clamp(max=len(centres) - 1)
        span = (centres[right] - centres[left]).clamp_min(1e-9)
        dev = features.device
        w = ((times - centres[left]) / span).clamp(0, 1).to(dev, features.dtype)  # (T,)
        left, right = left.to(dev), right.to(dev)
        out = features.new_empty(features.shape[0], len(times), features.shape[2])  # (B, T, D)
        for start in range(0, len(times), chunk):
            end = start + chunk
            out[:, start:end] = torch.lerp(features[:, left[start:end]], features[:, right[start:end]],
                                           w[start:end, None])
        return out, times.to(torch.float32)


def check_options(options: dict) -> None:
    """A ValueError naming the option, for an unknown option or a value of the wrong type (the ranges are
    checked by HearModel): caught at load time, not at the first embedding call."""
    known = [name for name in inspect.signature(HearModel.__init__).parameters if name not in ("self", "encoder")]
    for name, value in options.items():
        if name not in known:
            raise ValueError(f"unknown hear_mamclap option {name!r}; options: {', '.join(known)}")
        if name in ("last_k", "windows_per_forward"):
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            want = "an integer"
        elif name == "timestamp_hop_ms":
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            want = "a number of milliseconds"
        else:
            ok, want = isinstance(value, str), "a string"
        if not ok:
            raise ValueError(f"hear_mamclap option {name} must be {want}, got {value!r}")


def load_model(model_file_path: str = "", **options) -> HearModel:
    """HEAR entry point: an encoder export, a pretraining checkpoint, or "" for a random base encoder."""
    check_options(options)
    if model_file_path:
        from hear_mamclap.checkpoint import load_encoder
        encoder = load_encoder(model_file_path)
    else:
        warnings.warn("hear_mamclap.load_model: no checkpoint given, using a randomly initialised base "
                      "encoder (a baseline, not a trained model)", stacklevel=2)
        torch.manual_seed(0)
        encoder = MAMCLAPEncoder(EncoderConfig.preset("base"))
    return HearModel(encoder, **options)


def check_audio(audio, min_samples: int) -> None:
    """A ValueError saying what was expected, for anything that is not a finite (n_sounds, n_samples)
    float tensor with at least one frame of audio."""
    if not isinstance(audio, torch.Tensor):
        raise ValueError(f"expected audio as a torch.Tensor of shape (n_sounds, n_samples), got "
                         f"{type(audio).__name__}")
    if audio.ndim == 3:
        raise ValueError(f"expected mono audio (n_sounds, n_samples), got shape {tuple(audio.shape)}: "
                         "mix the channels down first")
    if audio.ndim != 2:
        raise ValueError(f"expected audio of rank 2 (n_sounds, n_samples), got shape {tuple(audio.shape)}")
    if not audio.is_floating_point():
        raise ValueError(f"expected floating-point audio in [-1, 1], got dtype {audio.dtype}")
    if audio.shape[0] == 0:
        raise ValueError("expected at least one sound, got an empty batch")
    if audio.shape[1] < min_samples:
        raise ValueError(f"expected at least {min_samples} samples ({1000 * min_samples / SAMPLE_RATE:.0f} "
                         f"ms, one analysis frame) at {SAMPLE_RATE} Hz, got {audio.shape[1]}")
    if not torch.isfinite(audio).all():
        raise ValueError("audio contains NaN or Inf values")
    peak = float(audio.detach().abs().max())
    if peak > MAX_PEAK:
        raise ValueError(f"audio peak {peak:.3g} is far outside [-1, 1]: expected floating-point audio in [-1, 1] "
                         f"(the front end's power spectrum overflows float32 above {MAX_PEAK:g})")


def _device(model: HearModel) -> torch.device:
    return next(model.parameters()).device


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_sounds, n_samples) -> embeddings (n_sounds, n_timestamps, D), timestamps (n_sounds, n_timestamps)
    in ms, regularly spaced by model.timestamp_hop_ms."""
    check_audio(audio, model.encoder.frontend.window_length)
    features = model.patch_features(audio.to(_device(model), torch.float32))
    emb, times = model.interpolate(features, audio.shape[1])
    return emb, times[None].expand(audio.shape[0], -1).to(emb.device)


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """(n_sounds, n_samples) -> (n_sounds, D): patch features pooled over the clip."""
    check_audio(audio, model.encoder.frontend.window_length)
    features = model.patch_features(audio.to(_device(model), torch.float32))  # (B, P, D)
    pooled = features.mean(1)
    if model.scene_pooling == "meanmax":
        pooled = torch.cat([pooled, features.amax(1)], dim=1)
    return pooled
