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


def test_distill_floors_on_targets_built_to_show_them():
    """Identical clips: the corpus mean per position predicts them exactly. Clips constant over positions: their
    own mean does. Predicting 0 costs ~1 for layer-normed targets either way."""
    from training.eval.floors import distill_floors

    torch.manual_seed(2)
    same = torch.randn(1, 12, 16).repeat(10, 1, 1)
    out = distill_floors(lambda rows: same[rows], 10, chunk=3)  # chunks smaller than each half
    assert out["distill_position_mean"] < 1e-6 and abs(out["distill_zero"] - 1.0) < 1e-4
    assert out["distill_clip_mean"] > 0.5  # positions differ within a clip
    flat = torch.randn(10, 1, 16).repeat(1, 12, 1)  # each clip one vector at every position
    out = distill_floors(lambda rows: flat[rows], 10)
    assert out["distill_clip_mean"] < 1e-6 and out["distill_position_mean"] > 0.5
