"""s3prl upstream entries, registered on s3prl.hub at run time by superb_upstream.run_downstream.

    -u mamclap -k CKPT          CKPT: an encoder export folder, its encoder.safetensors, or a pretraining
                                checkpoint (anything hear_mamclap.checkpoint.load_encoder reads)
    -u mamclap_local -k PATH    the same, named by s3prl's convention for local checkpoints; PATH must exist
"""
from __future__ import annotations

from pathlib import Path

from superb_upstream.expert import UpstreamExpert


def mamclap(ckpt: str | None = None, model_config: str | None = None, refresh: bool = False) -> UpstreamExpert:
    """The mamclap encoder as an s3prl upstream; the checkpoint comes with -k."""
    return UpstreamExpert(ckpt, model_config, refresh)


def mamclap_local(ckpt: str | None = None, model_config: str | None = None, refresh: bool = False) -> UpstreamExpert:
    """mamclap with a checkpoint that is a local file or folder (s3prl's `_local` naming)."""
    if not ckpt or not Path(ckpt).exists():
        raise FileNotFoundError(f"mamclap_local needs -k with a local checkpoint path; {ckpt!r} does not exist")
    return UpstreamExpert(ckpt, model_config, refresh)


ENTRIES = {"mamclap": mamclap, "mamclap_local": mamclap_local}
