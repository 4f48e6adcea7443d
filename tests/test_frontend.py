"""The batched front end against torchaudio's Kaldi fbank (the reference AudioMAE used)."""
from __future__ import annotations

import math

import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from hear_mamclap.frontend import AUDIOSET_MEAN, AUDIOSET_STD, LogMelFrontend, num_frames, pad_or_crop

TOLERANCE = 1e-3  # max absolute difference in natural-log mel energy; measured 2e-4 on these signals


def reference(audio: torch.Tensor, n_mels: int = 128) -> torch.Tensor:
    """torchaudio's Kaldi fbank, one clip at a time, with the paper's front-end settings (AudioMAE's recipe)."""
    return torch.stack([kaldi.fbank(clip[None], htk_compat=True, sample_frequency=16000, use_energy=False,
                                    window_type="hanning", num_mel_bins=n_mels, dither=0.0, frame_shift=10)
                        for clip in audio])


def signals(n: int) -> torch.Tensor:
    """Noise, a chirp, near-silence and a clipped square wave: (4, n)."""
    g = torch.Generator().manual_seed(n)
    t = torch.arange(n) / 16000
    return torch.stack([0.1 * torch.randn(n, generator=g), 0.5 * torch.sin(2 * math.pi * 440 * t * (1 + t)),
                        1e-4 * torch.randn(n, generator=g), 0.9 * torch.sign(torch.sin(2 * math.pi * 97 * t))])


@pytest.mark.parametrize("n_samples", [400, 401, 559, 560, 16000, 3 * 16000 + 123])
def test_matches_kaldi_fbank(n_samples: int) -> None:
    audio = signals(n_samples)
    ours = LogMelFrontend().fbank(audio)
    ref = reference(audio)
    assert ours.shape == ref.shape == (4, num_frames(n_samples), 128)
    assert (ours - ref).abs().max() < TOLERANCE


def test_other_mel_count_matches_kaldi() -> None:
    audio = signals(8000)
    assert (LogMelFrontend(n_mels=64).fbank(audio) - reference(audio, n_mels=64)).abs().max() < TOLERANCE


def test_frame_count_is_kaldis() -> None:
    front = LogMelFrontend()
    for n in [400, 559, 560, 719, 720, 16000, 160000]:
        assert front.num_frames(n) == num_frames(n) == kaldi.fbank(torch.zeros(1, n) + 0.1).shape[0]
    assert num_frames(399) == 0


def test_batch_equals_one_by_one() -> None:
    audio = signals(5000)
    front = LogMelFrontend()
    whole = front(audio)
    for i in range(len(audio)):
        torch.testing.assert_close(front(audio[i:i + 1])[0], whole[i], rtol=0, atol=1e-5)


def test_normalisation_uses_audioset_statistics() -> None:
    audio = signals(2000)
    front = LogMelFrontend()
    expected = (front.fbank(audio) - AUDIOSET_MEAN) / (2 * AUDIOSET_STD)
    torch.testing.assert_close(front(audio), expected)
    custom = LogMelFrontend(mean=1.0, std=0.5)
    torch.testing.assert_close(custom(audio), (front.fbank(audio) - 1.0) / 1.0)


def test_runs_in_float32_under_autocast() -> None:
    audio = signals(4000)
    front = LogMelFrontend()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = front(audio)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, front(audio))


def test_pad_or_crop() -> None:
    mel = torch.randn(2, 10, 8)
    padded = pad_or_crop(mel, 16)
    assert padded.shape == (2, 16, 8) and torch.equal(padded[:, :10], mel) and not padded[:, 10:].any()
    assert torch.equal(pad_or_crop(mel, 4, start=3), mel[:, 3:7])
    with pytest.raises(ValueError, match="crop start"):
        pad_or_crop(mel, 4, start=10)


def test_bad_input_is_explained() -> None:
    front = LogMelFrontend()
    with pytest.raises(ValueError, match="batch, samples"):
        front(torch.zeros(1000))
    with pytest.raises(ValueError, match="at least 400 samples"):
        front(torch.zeros(2, 399))
    with pytest.raises(ValueError, match="batch, samples"):
        front(torch.zeros(2, 1000, dtype=torch.int16))
