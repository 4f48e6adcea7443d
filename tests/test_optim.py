"""The trainers' shared optimisation pieces (training.pretrain.optim): schedule, AdamW groups, device."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from training.pretrain.optim import clip_and_step, param_groups, set_lr, setup_device, warmup_cosine


def test_warmup_is_linear_up_to_the_peak():
    lrs = [warmup_cosine(s, 1e-3, 4, 20) for s in range(4)]
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])


def test_cosine_decays_to_zero_at_the_end_and_stays_there():
    peak, warm, total = 2.0, 10, 110
    assert warmup_cosine(warm, peak, warm, total) == pytest.approx(peak)  # cosine starts at the peak
    assert warmup_cosine(60, peak, warm, total) == pytest.approx(peak / 2)  # half way
    assert warmup_cosine(35, peak, warm, total) == pytest.approx(peak * (1 + math.cos(math.pi / 4)) / 2)
    assert warmup_cosine(total, peak, warm, total) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(total + 50, peak, warm, total) == pytest.approx(0.0, abs=1e-12)
    decay = [warmup_cosine(s, peak, warm, total) for s in range(warm, total + 1)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_no_warmup_and_a_run_no_longer_than_its_warmup():
    assert warmup_cosine(0, 1.0, 0, 10) == pytest.approx(1.0)
    assert warmup_cosine(5, 1.0, 0, 10) == pytest.approx(0.5)
    # steps <= warmup_steps: the warm-up is cut short, and no division by zero after it
    assert warmup_cosine(4, 1.0, 5, 5) == pytest.approx(1.0)
    assert warmup_cosine(5, 1.0, 5, 5) == pytest.approx(1.0)


def test_weight_decay_only_on_matrices():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    model.scale = nn.Parameter(torch.tensor(1.0))
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [(4, 3)]
    assert sorted(p.ndim for p in no_decay["params"]) == [0, 1, 1, 1]
    opt = torch.optim.AdamW([decay, no_decay], lr=1.0)
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]


@pytest.mark.parametrize("clip, expected_norm", [(1.0, 1.0), (0.0, 5.0)])
def test_clip_and_step(clip, expected_norm):
    w = nn.Parameter(torch.zeros(2))
    model = nn.Module()
    model.w = w
    opt = torch.optim.SGD([w], lr=1.0)
    (torch.tensor([3.0, 4.0]) * w).sum().backward()  # gradient (3, 4), norm 5
    assert float(clip_and_step(model, opt, clip)) == pytest.approx(5.0)
    assert float(w.detach().norm()) == pytest.approx(expected_norm)  # one SGD step of the (clipped) gradient
    assert w.grad is None


def test_device_choice():
    assert setup_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert setup_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
        setup_device("gpu")
