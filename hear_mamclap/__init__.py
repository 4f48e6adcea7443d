"""mamclap encoders as a HEAR 2021 module.

    python -m heareval.embeddings.runner hear_mamclap --model CKPT --tasks-dir TASKS

`CKPT` is an encoder export (folder or its encoder.safetensors) or a full pretraining checkpoint; an empty
path gives a randomly initialised base encoder (with a warning), useful only as a baseline.

Embeddings come from `MAMCLAPEncoder.embed`: the encoder cuts a clip into non-overlapping 10.24 s windows
(each encoded on its own, as in pretraining) and gives one feature per 16-frame time patch (160 ms), the
frequency patches concatenated; long audio goes through in groups of windows, so memory stays bounded apart
from the output itself. Timestamp embeddings are those patch features linearly interpolated (in time) to a
regular hop of `timestamp_hop_ms` (40 ms by default; HEAR asks for at most 50 ms), timestamps in ms at the
centre of each hop. Scene embeddings pool the patch features over the clip (their mean; or the mean with the
standard deviation or the max concatenated).

Options (keyword arguments of load_model, or `--model-options '{"layers": "mean", "last_k": 4}'` in
heareval): layers "last" (the final, normalised layer) | "mean" | "concat" (of the last `last_k` blocks'
outputs); freq_reduce "concat" | "mean"; scene_pooling "mean" | "meanstd" | "meanmax"; timestamp_hop_ms;
windows_per_forward (memory/speed trade-off); output_device "same" | "cpu" (timestamp embeddings built in
host memory chunk by chunk, so an hour of audio on a GPU needs no GPU memory for its output).
"""
from __future__ import annotations

import inspect
import math
import numbers
import warnings
from typing import Literal

import torch
import torch.nn as nn

from hear_mamclap.model import SAMPLE_RATE, EncoderConfig, Embeddings, MAMCLAPEncoder, check_audio

__all__ = ["SAMPLE_RATE", "TIMESTAMP_HOP_MS", "HearModel", "check_audio", "load_model", "get_scene_embeddings",
           "get_timestamp_embeddings"]

TIMESTAMP_HOP_MS = 40.0
# Scene pooling over the clip's patch features: the mean; the mean and the standard deviation (what the log-mel
# baseline pools by default, so an encoder can be scored under the same pooling); the mean and the max.
SCENE_POOLINGS = ("mean", "meanstd", "meanmax")


class HearModel(nn.Module):
    """The encoder plus the embedding options; what load_model returns."""

    sample_rate = SAMPLE_RATE

    def __init__(self, encoder: MAMCLAPEncoder, layers: Literal["last", "mean", "concat"] = "last",
                 last_k: int = 1, freq_reduce: Literal["concat", "mean"] = "concat",
                 scene_pooling: Literal["mean", "meanstd", "meanmax"] = "mean",
                 timestamp_hop_ms: float = TIMESTAMP_HOP_MS, windows_per_forward: int = 8,
                 output_device: Literal["same", "cpu"] = "same") -> None:
        super().__init__()
        if encoder.cfg.sample_rate != SAMPLE_RATE:
            raise ValueError(f"HEAR modules take {SAMPLE_RATE} Hz audio; this encoder expects "
                             f"{encoder.cfg.sample_rate} Hz")
        self.options = dict(layers=layers, last_k=last_k, freq_reduce=freq_reduce,
                            windows_per_forward=windows_per_forward)
        encoder.check_embed_options(**self.options)
        if scene_pooling not in SCENE_POOLINGS:
            raise ValueError(f"scene_pooling must be one of {', '.join(map(repr, SCENE_POOLINGS))}, "
                             f"got {scene_pooling!r}")
        if output_device not in ("same", "cpu"):
            raise ValueError(f"output_device must be 'same' (the model's device) or 'cpu', got {output_device!r}")
        self.output_device = None if output_device == "same" else output_device
        if not 0 < timestamp_hop_ms <= 50:
            raise ValueError(f"timestamp_hop_ms must be in (0, 50] (HEAR), got {timestamp_hop_ms}")
        self.encoder = encoder.eval()
        self.scene_pooling, self.timestamp_hop_ms = scene_pooling, timestamp_hop_ms
        self.timestamp_embedding_size = encoder.embed_dim(layers, last_k, freq_reduce)
        self.scene_embedding_size = self.timestamp_embedding_size * (1 if scene_pooling == "mean" else 2)

    @torch.no_grad()
    def embed(self, audio: torch.Tensor, hop_ms: float | None = None) -> Embeddings:
        """Checked (n_sounds, n_samples) audio -> encoder.embed with this model's options, on its device."""
        check_audio(audio, self.encoder.cfg.window_samples)
        device = next(self.parameters()).device
        return self.encoder.embed(audio.to(device, torch.float32), hop_ms=hop_ms, out_device=self.output_device,
                                  **self.options)


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


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_sounds, n_samples) -> embeddings (n_sounds, n_timestamps, D), timestamps (n_sounds, n_timestamps)
    in ms, regularly spaced by model.timestamp_hop_ms."""
    out = model.embed(audio, hop_ms=model.timestamp_hop_ms)
    times = out.timestamps_ms.to(torch.float32)[None].expand(audio.shape[0], -1)
    return out.features, times.to(out.features.device)


def pool_scene(features: torch.Tensor, scene_pooling: str) -> torch.Tensor:
    """Patch features (B, P, D) -> clip features: their mean (B, D); for "meanstd" the mean and the
    (population) standard deviation over the P patches, for "meanmax" the mean and the max (B, 2D)."""
    pooled = features.mean(1)
    if scene_pooling == "meanstd":
        pooled = torch.cat([pooled, features.std(1, correction=0)], dim=1)
    elif scene_pooling == "meanmax":
        pooled = torch.cat([pooled, features.amax(1)], dim=1)
    return pooled


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """(n_sounds, n_samples) -> (n_sounds, D): patch features pooled over the clip."""
    return pool_scene(model.embed(audio).features, model.scene_pooling)  # features (B, P, D)
