"""Kaldi-compatible log-mel filterbank, batched in torch, with the dataset normalisation.

It reproduces `torchaudio.compliance.kaldi.fbank(wav, htk_compat=True, window_type="hanning",
num_mel_bins=128, dither=0.0, use_energy=False, frame_shift=10)` (AudioMAE's front end) for a whole
batch at once, on any device: frames that fit entirely in the signal (snip_edges), DC offset removed per
frame, pre-emphasis 0.97, a symmetric Hann window of 25 ms zero-padded to the next power of two, power
spectrum, Kaldi's mel triangles (20 Hz to Nyquist), log with a float32-epsilon floor.
tests/test_frontend.py checks it against torchaudio's reference within 2e-3 in the log domain.

Normalisation is (x - mean) / (2 * std) with AudioSet statistics by default (AudioMAE); the statistics come
from the encoder config, which every checkpoint and export carries.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

SAMPLE_RATE = 16000  # Hz: what every mamclap encoder, the HEAR module and the s3prl upstream take
AUDIOSET_MEAN = -4.2677393  # log-mel mean over AudioSet (AudioMAE, AST)
AUDIOSET_STD = 4.5689974
LOG_FLOOR = torch.finfo(torch.float32).eps  # Kaldi's floor before the log (numeric_limits<float>::epsilon)


def _mel(hz: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(hz / 700.0)  # Kaldi's (HTK) mel scale


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: float, low_freq: float = 20.0,
                    high_freq: float = 0.0) -> torch.Tensor:
    """Kaldi's triangular mel filters, (n_mels, n_fft // 2 + 1), the Nyquist column zero as in Kaldi.

    high_freq <= 0 counts back from Nyquist (Kaldi's convention: 0 means Nyquist).
    """
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not (0.0 <= low_freq < high_freq <= nyquist):
        raise ValueError(f"expected 0 <= low_freq < high_freq <= {nyquist} Hz, got {low_freq}, {high_freq}")
    if n_mels < 4:
        raise ValueError(f"expected at least 4 mel bins, got {n_mels}")
    lo, hi = _mel(torch.tensor(low_freq, dtype=torch.float64)), _mel(torch.tensor(high_freq, dtype=torch.float64))
    delta = (hi - lo) / (n_mels + 1)  # the triangles overlap by half, so n_mels + 1 steps span the range
    edges = lo + delta * torch.arange(n_mels + 2, dtype=torch.float64)  # (n_mels + 2,) mel
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # each (n_mels, 1)
    fft_mel = _mel(sample_rate / n_fft * torch.arange(n_fft // 2, dtype=torch.float64))[None]  # (1, n_fft/2)
    up = (fft_mel - left) / (center - left)
    down = (right - fft_mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)  # (n_mels, n_fft // 2)
    return F.pad(banks, (0, 1)).float()  # (n_mels, n_fft // 2 + 1)


def ms_to_samples(sample_rate: int, ms: float) -> int:
    """Whole samples in `ms` milliseconds, truncated as Kaldi does (25 ms -> 400 at 16 kHz)."""
    return int(sample_rate * ms / 1000)


def num_frames(n_samples: int, window: int = 400, hop: int = 160) -> int:
    """Frames Kaldi gives for n_samples with snip_edges=True (0 when shorter than one window)."""
    return 0 if n_samples < window else 1 + (n_samples - window) // hop


def pad_or_crop(mel: torch.Tensor, n_frames: int, start: int = 0) -> torch.Tensor:
    """(B, T, F) normalised log-mel -> (B, n_frames, F): frames [start, start + n_frames), zero-padded.

    Zero is the dataset mean after normalisation, the least informative filler (used for pretraining).
    """
    if mel.ndim != 3:
        raise ValueError(f"expected log-mel (batch, frames, mels), got shape {tuple(mel.shape)}")
    if not 0 <= start <= max(0, mel.shape[1] - 1):
        raise ValueError(f"crop start {start} outside 0..{mel.shape[1] - 1}")
    mel = mel[:, start:start + n_frames]
    return F.pad(mel, (0, 0, 0, n_frames - mel.shape[1]))  # (B, n_frames, F)


class LogMelFrontend(nn.Module):
    """Raw audio (B, N) -> Kaldi log-mel (B, T, n_mels), normalised with the dataset statistics.

    Buffers (window, filters) are derived from the arguments and not saved in state dicts: the encoder
    config is the one place these settings live.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_mels: int = 128, frame_length_ms: float = 25.0,
                 frame_shift_ms: float = 10.0, low_freq: float = 20.0, high_freq: float = 0.0,
                 preemphasis: float = 0.97, mean: float = AUDIOSET_MEAN, std: float = AUDIOSET_STD) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.window_length = ms_to_samples(sample_rate, frame_length_ms)  # 400 samples at 16 kHz
        self.hop_length = ms_to_samples(sample_rate, frame_shift_ms)  # 160
        if self.window_length < 2 or self.hop_length < 1:
            raise ValueError(f"frame length {frame_length_ms} ms / shift {frame_shift_ms} ms too short at "
                             f"{sample_rate} Hz")
        if not 0.0 <= preemphasis <= 1.0:
            raise ValueError(f"expected preemphasis in [0, 1], got {preemphasis}")
        if std <= 0:
            raise ValueError(f"expected a positive normalisation std, got {std}")
        self.n_fft = 2 ** math.ceil(math.log2(self.window_length))  # Kaldi's round_to_power_of_two: 512
        self.n_mels = n_mels
        self.preemphasis = preemphasis
        self.mean, self.std = mean, std
        self.register_buffer("window", torch.hann_window(self.window_length, periodic=False), persistent=False)
        self.register_buffer("mel_banks", kaldi_mel_banks(n_mels, self.n_fft, sample_rate, low_freq, high_freq),
                             persistent=False)

    def num_frames(self, n_samples: int) -> int:
        """Frames for n_samples, as Kaldi counts them (snip_edges=True)."""
        return num_frames(n_samples, self.window_length, self.hop_length)

    def fbank(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, N) audio in [-1, 1] -> (B, T, n_mels) un-normalised log-mel, T = num_frames(N)."""
        if audio.ndim != 2 or not audio.is_floating_point():
            raise ValueError(f"expected float audio (batch, samples), got {audio.dtype} {tuple(audio.shape)}")
        if audio.shape[1] < self.window_length:
            raise ValueError(f"expected at least {self.window_length} samples (one {self.window_length} sample "
                             f"window), got {audio.shape[1]}")
        # Full precision even under autocast: the log of small powers is sensitive to bf16 rounding.
        with torch.autocast(device_type=audio.device.type, enabled=False):
            frames = audio.float().unfold(1, self.window_length, self.hop_length)  # (B, T, window)
            frames = frames - frames.mean(dim=2, keepdim=True)  # remove DC offset per frame
            previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=2)  # x[j-1], x[0] for j = 0
            frames = (frames - self.preemphasis * previous) * self.window  # (B, T, window)
            power = torch.fft.rfft(frames, n=self.n_fft).abs().pow(2)  # zero-padded: (B, T, n_fft // 2 + 1)
            mel = power @ self.mel_banks.T  # (B, T, n_mels)
            return mel.clamp_min(LOG_FLOOR).log()

    def normalize(self, logmel: torch.Tensor) -> torch.Tensor:
        return (logmel - self.mean) / (2.0 * self.std)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, N) audio -> (B, T, n_mels) normalised log-mel."""
        return self.normalize(self.fbank(audio))

    def extra_repr(self) -> str:
        return (f"sample_rate={self.sample_rate}, window={self.window_length}, hop={self.hop_length}, "
                f"n_fft={self.n_fft}, n_mels={self.n_mels}, mean={self.mean}, std={self.std}")
