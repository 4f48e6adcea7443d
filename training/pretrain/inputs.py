"""Where a pretraining step's inputs come from: per micro-batch (log-mel, teacher targets, labels, files skipped).

    online_inputs   waveforms from the loader; front end and teacher on the device, on exactly the batch the
                    student sees (the default: right for any waveform, augmented ones included)
    cached_inputs   rows of a FeatureCache (`mamclap precompute`): no decoding, front end or teacher forward
                    in the step; on a GPU-resident cache a batch is one gather per array
    fixed_inputs    one batch over and over, already on the device: the step's rate without any data path,
                    the yardstick a data path is measured against (benchmarks)
    augment_batch   mixing and gain on a batch's normalised log-mel, on the device: new inputs every epoch
                    from a cached corpus (a cache otherwise gives the same log-mel every epoch)

Each yields its tensors on `device` with no gradient history; the step consumes them in the same order.
"""
from __future__ import annotations

import itertools
import math
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


def augment_batch(mel: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, mean: float, std: float,
                  mix_p: float = 0.0, mix_gain_db: float = 10.0, gain_db: float = 0.0,
                  targets: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(B, T, F) normalised log-mel, (B, C) multi-hot labels and (B, N, D) teacher targets or None -> the batch
    with rows mixed and gains applied.

    Mixing happens in the power domain, as if two recordings were summed: with probability mix_p a row gets
    another row of the batch (the next one, cyclically) added at a level drawn uniformly in [-mix_gain_db, 0] dB
    relative to it, and takes the union of both rows' labels (both sources stay audible at these levels). Then
    every row's level changes by a gain drawn uniformly in [-gain_db, gain_db] dB (a shift of the log-mel).
    `mean`/`std` are the front end's normalisation ((log-mel - mean) / (2 std)); zero-padded frames (the
    normalised mean) are left as they are. Draws come from `generator` (CPU), so a run stays reproducible.
    Teacher targets (made from the unmixed clips) of a mixed row become the average of both rows' targets
    weighted by the two sources' shares of the mixture's power, 1 : r for the other row at power ratio r (the
    "power" target mixing of TrainConfig.mix_targets). That is an approximation, as mixup's label mixing is:
    a teacher run on the mixture would not give the mix of its targets. Gain leaves targets as they are.
    """
    b = mel.shape[0]
    if b == 0 or (mix_p <= 0 and gain_db <= 0):
        return mel, labels, targets
    u = torch.rand(3, b, generator=generator)
    scale = 2.0 * std
    log_power = mel.float() * scale + mean  # natural log of the mel power
    if mix_p > 0 and b > 1:
        mixed = (u[0] < mix_p).to(mel.device)
        rel = (-mix_gain_db * u[1]).to(mel.device) * (math.log(10.0) / 10.0)  # natural-log power ratio
        other = torch.roll(log_power, 1, dims=0) + rel[:, None, None]
        with_other = torch.logaddexp(log_power, other)
        log_power = torch.where(mixed[:, None, None], with_other, log_power)
        labels = torch.where(mixed[:, None], torch.maximum(labels, torch.roll(labels, 1, dims=0)), labels)
        if targets is not None:
            w = torch.where(mixed, torch.sigmoid(rel), torch.zeros_like(rel))  # r / (1 + r), r = exp(rel)
            w = w.to(targets.dtype)[:, None, None]
            targets = (1 - w) * targets + w * torch.roll(targets, 1, dims=0)
    if gain_db > 0:
        shift = ((2.0 * u[2] - 1.0) * gain_db).to(mel.device) * (math.log(10.0) / 10.0)
        log_power = log_power + shift[:, None, None]
    out = ((log_power - mean) / scale).to(mel.dtype)
    padding = (mel == 0).all(dim=2, keepdim=True)  # frames past a clip's end stay at the filler value
    return torch.where(padding, mel, out), labels, targets
