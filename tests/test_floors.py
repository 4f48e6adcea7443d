"""The losses' trivial floors (training/eval/floors.py) are what they claim on data built to show them."""
from __future__ import annotations

import math

import torch

from hear_mamclap.model import EncoderConfig
from training.eval.floors import floors

CFG = EncoderConfig.preset("tiny")


def test_position_mean_floor_is_zero_when_every_clip_is_the_same_and_one_for_zero():
    torch.manual_seed(0)
    one = torch.randn(1, CFG.target_frames, CFG.n_mels)
    out = floors(one.repeat(6, 1, 1), None, CFG)
    assert out["recon_position_mean"] < 1e-6
    assert abs(out["recon_zero"] - 1.0) < 0.02  # normalised patches have unit variance (ddof 1: a bit under)
    assert out["recon_row_mean"] > 0.5  # positions differ in time, so one mean per row cannot fit them
    assert "cls_prior" not in out


def test_noise_has_no_floor_below_one_and_priors_give_the_label_entropy():
    torch.manual_seed(1)
    mel = torch.randn(40, CFG.target_frames, CFG.n_mels)
    labels = torch.zeros(40, 2)
    labels[:10, 0] = 1  # p = 0.25 and 0
    out = floors(mel, labels, CFG)
    assert out["recon_position_mean"] > 0.95 and out["recon_row_mean"] > 0.95
    p = torch.tensor([0.25, 1e-7])
    expected = float(-(p * p.log() + (1 - p) * (1 - p).log()).mean())
    assert math.isclose(out["cls_prior"], expected, rel_tol=1e-4)
