"""Random-init encoder baseline as a HEAR 2021 module (`python -m heareval.embeddings.runner
hear_mamclap.baselines.random_init [--model CKPT] [--model-options '{"preset": "base"}']`).

The mamclap encoder with fixed-seed random weights and the same front end, chunking and pooling as
hear_mamclap: what the architecture alone gives, so pretraining is judged by how far it climbs above this.
The architecture is a named preset (option `preset`, base by default), or, when a checkpoint is given, that
checkpoint's encoder config (its weights are discarded), so the baseline matches a trained model exactly.
Other options are hear_mamclap.HearModel's (layers, scene_pooling, ...).
"""
from __future__ import annotations

import torch

from hear_mamclap import HearModel, get_scene_embeddings, get_timestamp_embeddings
from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder

__all__ = ["load_model", "get_scene_embeddings", "get_timestamp_embeddings"]

DEFAULT_PRESET = "base"


def load_model(model_file_path: str = "", preset: str | None = None, seed: int = 0, **options) -> HearModel:
    """A randomly initialised encoder (torch seed `seed`) of the checkpoint's config, or of `preset`."""
    if model_file_path:
        if preset is not None:
            raise ValueError(f"give either a checkpoint (its config is used) or preset={preset!r}, not both")
        from hear_mamclap.checkpoint import load_encoder
        cfg = load_encoder(model_file_path).cfg
    else:
        cfg = EncoderConfig.preset(preset or DEFAULT_PRESET)
    # The same weights for the same seed, whatever the caller did with the global generator before, and the
    # caller's generator left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = MAMCLAPEncoder(cfg)
    return HearModel(encoder, **options)
