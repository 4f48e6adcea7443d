"""Trivial floors of the pretraining losses: what a model that learned nothing about each clip scores.

A loss curve means something only against these. From a feature cache (`mamclap precompute`):

    recon_zero          reconstruction (norm_pix_loss): predict 0 for every normalised patch, i.e. ~1
    recon_position_mean predict each masked patch by the mean normalised patch at its (time, frequency)
                        position over the corpus (what a decoder that ignores the visible patches can do)
    recon_row_mean      the same per frequency row only
    cls_prior           classification: predict each label's base rate (BCE of the priors, averaged over
                        labels as the training loss is)

With teacher features in the cache (`mamclap precompute --teacher`), the distillation losses' floors too, on the
targets as the loss makes them (each position's teacher vector layer-normed, squared error averaged over dims):

    distill_zero           predict 0: ~1 (layer-normed targets have unit variance)
    distill_position_mean  predict each position's mean target over the corpus (fitted on the first half of
                           the items, scored on the second), the "batch-mean teacher target"
    distill_clip_mean      a reference, not a floor: predict every position by its own clip's mean target
                           (what a student that knows the clip but nothing about where in it can do at best)

    mamclap diagnose floors --cache DIR --size small [--max-items 4000] --out floors.json
"""
from __future__ import annotations

import json
import math

import numpy as np
import torch
import torch.nn.functional as F

from hear_mamclap import atomic
from hear_mamclap.model import ENCODER_PRESETS, EncoderConfig, patchify
from training import args as checks


def _normalised_patches(mel: torch.Tensor, cfg: EncoderConfig) -> torch.Tensor:
    """(B, T, F) log-mel -> (B, N, pt * pf) per-patch normalised targets, exactly as the loss makes them."""
    target = patchify(mel.float(), cfg.patch_size)
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    return (target - mean) / (var + 1e-6).sqrt()


def floors(mel: torch.Tensor, labels: torch.Tensor | None, cfg: EncoderConfig) -> dict[str, float]:
    """Floors on (items, T, F) log-mel and (items, classes) multi-hot labels; the position means are fitted
    on the first half of the items and scored on the second half (so they are not fitted to what they score)."""
    patches = _normalised_patches(mel, cfg)  # (B, N, D)
    half = max(1, patches.shape[0] // 2)
    fit, score = patches[:half], patches[half:] if patches.shape[0] > 1 else patches
    n_freq = cfg.n_mels // cfg.patch_size[1]
    position_mean = fit.mean(0, keepdim=True)  # (1, N, D)
    rows = fit.reshape(fit.shape[0], -1, n_freq, fit.shape[-1]).mean((0, 1))  # (n_freq, D)
    row_mean = rows.repeat(score.shape[1] // n_freq, 1)[None]  # (1, N, D): time-major patch order
    out = {"recon_zero": float(score.pow(2).mean()),
           "recon_position_mean": float((score - position_mean).pow(2).mean()),
           "recon_row_mean": float((score - row_mean).pow(2).mean()),
           "items": int(mel.shape[0])}
    if labels is not None and labels.numel():
        p = labels.float().mean(0).clamp(1e-7, 1 - 1e-7)
        out["cls_prior"] = float(-(p * p.log() + (1 - p) * (1 - p).log()).mean())
    return out


def distill_floors(read, n_items: int, chunk: int = 128) -> dict[str, float]:
    """The distillation floors over items 0..n_items-1; read(indices) -> (B, N, D) teacher targets. Chunked,
    so the targets of a large cache never sit in memory at once; the position means are fitted on the first
    half of the items and scored on the second."""
    half = max(1, n_items // 2)
    fit = range(0, half)
    score = range(half, n_items) if n_items > 1 else range(0, 1)

    def chunks(items):
        for i in range(items.start, items.stop, chunk):
            t = read(list(range(i, min(i + chunk, items.stop)))).float()
            yield F.layer_norm(t, t.shape[-1:])

    total, count = None, 0
    for t in chunks(fit):
        total = t.sum(0) if total is None else total + t.sum(0)
        count += t.shape[0]
    position_mean = total / count  # (N, D)
    sums, n = {"distill_zero": 0.0, "distill_position_mean": 0.0, "distill_clip_mean": 0.0}, 0
    for t in chunks(score):
        sums["distill_zero"] += float(t.pow(2).mean(-1).sum(0).mean())
        sums["distill_position_mean"] += float((t - position_mean).pow(2).mean(-1).sum(0).mean())
        sums["distill_clip_mean"] += float((t - t.mean(1, keepdim=True)).pow(2).mean(-1).sum(0).mean())
        n += t.shape[0]
    return {k: v / n for k, v in sums.items()}


def register(subparsers) -> None:
    p = subparsers.add_parser("diagnose", help="diagnostics of pretraining (trivial loss floors)")
    sub = p.add_subparsers(dest="what", required=True)
    f = sub.add_parser("floors", help="the losses' trivial floors on a feature cache")
    f.add_argument("--cache", required=True, type=checks.existing_dir, help="folder from `mamclap precompute`")
    f.add_argument("--size", default="small", choices=list(ENCODER_PRESETS), help="encoder size (patch geometry)")
    f.add_argument("--max-items", type=checks.positive_int, default=4000, help="clips read (evenly spaced)")
    f.add_argument("--out", type=checks.out_file, default=None, help="JSON to write (default: print)")
    f.set_defaults(func=_run)


def _run(args) -> int:
    from training.pretrain.feature_cache import FeatureCache
    cache = FeatureCache(args.cache)
    n = len(cache)
    index = np.unique(np.linspace(0, n - 1, min(n, args.max_items)).round().astype(int)).tolist()
    mel, _, labels, _ = cache.batch(index, teacher=False)
    result = {"cache": str(args.cache), "size": args.size,
              **floors(mel, labels, EncoderConfig.preset(args.size))}
    if cache.has_teacher:  # the same evenly spaced items, read in chunks
        result.update(distill_floors(lambda rows: cache.targets([index[r] for r in rows]), len(index)))
    text = json.dumps(result, indent=1)
    if args.out:
        atomic.write_text(args.out, text)
    print(text)
    return 0 if all(math.isfinite(v) for v in result.values() if isinstance(v, float)) else 1
