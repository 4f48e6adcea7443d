"""Where a pretraining step's inputs come from: per micro-batch (log-mel, teacher targets, labels, files skipped).

    online_inputs   waveforms from the loader; front end and teacher on the device, on exactly the batch the
                    student sees (the default: right for any waveform, augmented ones included)
    cached_inputs   rows of a FeatureCache (`mamclap precompute`): no decoding, front end or teacher forward
                    in the step; on a GPU-resident cache a batch is one gather per array
    fixed_inputs    one batch over and over, already on the device: the step's rate without any data path,
                    the yardstick a data path is measured against (benchmarks)

Each yields its tensors on `device` with no gradient history; the step consumes them in the same order.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch

from training.pretrain.feature_cache import FeatureCache

Inputs = Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, int]]


def online_inputs(loader: Iterable, frontend: torch.nn.Module, teacher: torch.nn.Module | None,
                  device: torch.device, amp, cache: FeatureCache | None = None,
                  sampler: Iterable | None = None) -> Inputs:
    """The loader's (waveform, labels, skipped) batches through the front end and the teacher. With `cache`,
    the teacher targets are the cache's rows for the sampler's indices (which the loader follows too)
    instead of a teacher forward."""
    batches = zip(sampler, loader) if cache is not None else ((None, b) for b in loader)
    for indices, (wav, labels, n_skipped) in batches:
        wav = wav.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with torch.no_grad():
            mel = frontend(wav)  # (B, T, n_mels), float32
            if cache is not None:
                targets = cache.targets(indices)  # (B, n_patches, D)
            else:
                with amp:  # the teacher in bf16 on GPU: a third less time, targets are layer-normed anyway
                    targets = teacher(wav) if teacher is not None else None  # (B, n_patches, D)
        yield mel, targets, labels, int(n_skipped.sum())


def cached_inputs(cache: FeatureCache, sampler: Iterable, teacher: bool) -> Inputs:
    """Every input from the cache, for the sampler's batches of item indices (teacher targets only with
    `teacher`)."""
    for indices in sampler:
        yield cache.batch(indices, teacher=teacher)


def fixed_inputs(inputs: Inputs, n: int) -> Inputs:
    """The first batch of `inputs`, n times (the same tensors each time)."""
    first = next(iter(inputs))
    return itertools.repeat(first, n)
