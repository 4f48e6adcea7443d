"""RNG state in training checkpoints across machines with different numbers of visible GPUs.

A 2-GPU run's rank saved a CUDA RNG state per visible device, and resuming in a process that sees one GPU
failed (IndexError in torch.cuda.set_rng_state_all; found on 2 H200s). This machine has no GPU, so these tests
stand in a fake torch.cuda (device count, current device, per-device states) for the few calls involved;
the GPU check is `results/gpu/scripts/two_gpu_checks.sh` (2 GPUs to step 60, resumed on 1).
"""
from __future__ import annotations

import pytest
import torch

from training.pretrain import checkpointing


class FakeCuda:
    def __init__(self, n_devices: int, current: int = 0):
        self.states = [torch.tensor([i], dtype=torch.uint8) for i in range(n_devices)]
        self.current = current

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": self.states[self.current].clone())
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])

        def set_state(state, device="cuda"):
            self.states[self.current] = state.clone()
        monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)

        def set_all(states):
            for i, s in enumerate(states):
                if i >= len(self.states):
                    raise IndexError("tuple index out of range")  # what torch does with too many states
                self.states[i] = s.clone()
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)


def test_a_rank_saves_only_its_own_device_state(monkeypatch):
    fake = FakeCuda(n_devices=2, current=1)
    fake.install(monkeypatch)
    state = checkpointing.rng_state()
    assert torch.equal(state["cuda"], torch.tensor([1], dtype=torch.uint8))


def test_a_two_gpu_state_restores_in_a_one_gpu_process(monkeypatch):
    two = FakeCuda(n_devices=2, current=1)
    two.install(monkeypatch)
    saved = checkpointing.rng_state()
    one = FakeCuda(n_devices=1)
    one.install(monkeypatch)
    checkpointing.set_rng_state(saved)
    assert torch.equal(one.states[0], torch.tensor([1], dtype=torch.uint8))


@pytest.mark.parametrize("current, expected", [(0, 5), (1, 6)])
def test_older_checkpoints_with_a_state_per_device_still_restore(monkeypatch, current, expected):
    """Checkpoints written before the change hold one state per device visible then; the current device's
    is used, or the first where the process sees fewer devices."""
    saved = checkpointing.rng_state()
    saved["cuda"] = [torch.tensor([5], dtype=torch.uint8), torch.tensor([6], dtype=torch.uint8)]
    fake = FakeCuda(n_devices=2, current=current)
    fake.install(monkeypatch)
    checkpointing.set_rng_state(saved)
    assert torch.equal(fake.states[current], torch.tensor([expected], dtype=torch.uint8))
    single = FakeCuda(n_devices=1)
    single.install(monkeypatch)
    checkpointing.set_rng_state(saved)
    assert torch.equal(single.states[0], torch.tensor([5], dtype=torch.uint8))
