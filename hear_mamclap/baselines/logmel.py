"""Naive log-mel baseline as a HEAR 2021 module (`python -m heareval.embeddings.runner
hear_mamclap.baselines.logmel`).

No learned weights: timestamp embeddings are 128-bin log-mel frames (25 ms window) pooled to a 40 ms hop;
scene embeddings are those frames pooled over the clip: their mean and standard deviation concatenated
(option scene_pooling "meanstd", the default, kept so that results files written before the option mean what
they say), or their mean alone ("mean", the default pooling of hear_mamclap's encoders, so the two compare
under the same pooling). It tells how much of a task a frozen spectrogram already solves, so any learned model
should sit well above it.

    python -m heareval.embeddings.runner hear_mamclap.baselines.logmel --model-options '{"scene_pooling": "mean"}'
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torchaudio

from hear_mamclap import SAMPLE_RATE, check_audio, pool_scene

N_MELS = 128
WIN_LENGTH = 400  # 25 ms
FRAME_HOP = 160  # 10 ms analysis hop
POOL = 4  # frames per embedding -> 40 ms timestamp hop (HEAR asks for <= 50 ms)
HOP_MS = 1000.0 * FRAME_HOP * POOL / SAMPLE_RATE
SCENE_POOLINGS = ("mean", "meanstd")


class LogMel(nn.Module):
    sample_rate = SAMPLE_RATE
    timestamp_embedding_size = N_MELS

    def __init__(self, scene_pooling: str = "meanstd") -> None:
        super().__init__()
        if scene_pooling not in SCENE_POOLINGS:
            raise ValueError(f"scene_pooling must be one of {SCENE_POOLINGS}, got {scene_pooling!r}")
        self.scene_pooling = scene_pooling
        self.scene_embedding_size = N_MELS * (2 if scene_pooling == "meanstd" else 1)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=1024, win_length=WIN_LENGTH, hop_length=FRAME_HOP,
            n_mels=N_MELS, center=True, power=2.0)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, N) 16 kHz audio -> (B, T, 128) log-mel embeddings at a 40 ms hop."""
        logmel = torch.log(self.mel(audio) + 1e-6).transpose(1, 2)  # (B, frames, n_mels)
        frames = logmel.shape[1]
        pad = (-frames) % POOL
        logmel = nn.functional.pad(logmel, (0, 0, 0, pad), mode="replicate")
        return logmel.reshape(logmel.shape[0], -1, POOL, N_MELS).mean(2)  # (B, T, n_mels)


def load_model(model_file_path: str = "", scene_pooling: str = "meanstd") -> LogMel:
    """The baseline has no weights; a model path is accepted and ignored for API compatibility."""
    return LogMel(scene_pooling).eval()


@torch.no_grad()
def get_timestamp_embeddings(audio: torch.Tensor, model: LogMel) -> tuple[torch.Tensor, torch.Tensor]:
    check_audio(audio, WIN_LENGTH)
    emb = model(audio.to(torch.float32))
    # With center=True, analysis frame i is centred at i * 10 ms; a pooled window covers POOL of them.
    frame_ms = 1000.0 * FRAME_HOP / SAMPLE_RATE
    timestamps = torch.arange(emb.shape[1], dtype=torch.float32) * HOP_MS + frame_ms * (POOL - 1) / 2
    return emb, timestamps.expand(emb.shape[0], -1).to(emb.device)


@torch.no_grad()
def get_scene_embeddings(audio: torch.Tensor, model: LogMel) -> torch.Tensor:
    emb, _ = get_timestamp_embeddings(audio, model)
    return pool_scene(emb, model.scene_pooling)  # the encoders' pooling, so both pool alike
