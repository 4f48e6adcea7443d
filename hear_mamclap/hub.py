"""`from_pretrained` / `save_pretrained` in the Hugging Face convention: a model is a folder.

The folder is an encoder export (hear_mamclap.checkpoint: encoder.safetensors + encoder.json, or the sharded
bfloat16 files of a release) plus a README.md model card generated from the config and the provenance.
`from_pretrained` takes a local folder, file or pretraining checkpoint, which needs nothing else; a name
that is not a local path is taken as a Hugging Face Hub repository id and fetched with huggingface_hub (the
optional `hub` extra), which honours HF_HUB_OFFLINE by reading only its local cache.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from hear_mamclap import atomic
from hear_mamclap.checkpoint import CONFIG_NAME, SHARD_GLOB, WEIGHTS_NAME, export_encoder, load_encoder
from hear_mamclap.model import MAMCLAPEncoder

CARD_NAME = "README.md"


def save_pretrained(encoder: MAMCLAPEncoder, out_dir: str | Path, metadata: dict | None = None,
                    card_extra: str = "") -> Path:
    """Write the export and a model card (card_extra: Markdown sections after its facts, e.g. scores) to
    out_dir."""
    metadata = dict(getattr(encoder, "metadata", {}) or {}, **(metadata or {}))
    out_dir = export_encoder(encoder, out_dir, metadata=metadata)
    atomic.write_text(out_dir / CARD_NAME, model_card(encoder, metadata, card_extra))
    return out_dir


def from_pretrained(name_or_path: str | Path, device: str | torch.device = "cpu",
                    revision: str | None = None) -> MAMCLAPEncoder:
    """An encoder in eval mode from a local export/checkpoint, or from a Hub repository id."""
    path = Path(name_or_path)
    if path.exists():
        return load_encoder(path, device=device)
    name = str(name_or_path)
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"no encoder export or checkpoint at {name}, and it is not a Hub repository id "
                                f"(owner/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(f"no local folder {name}; loading it from the Hugging Face Hub needs "
                                f"huggingface_hub (pip install 'mamclap[hub]')") from None
    folder = snapshot_download(name, revision=revision,
                               allow_patterns=[WEIGHTS_NAME, SHARD_GLOB, CONFIG_NAME, CARD_NAME])
    return load_encoder(folder, device=device)


def _params(encoder: MAMCLAPEncoder) -> str:
    n = sum(p.numel() for p in encoder.parameters())
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


def model_card(encoder: MAMCLAPEncoder, metadata: dict, extra: str = "",
               location: str = "path/to/this/folder") -> str:
    """A model card: what the model is, its config, where it came from, how to use it, what it is for.
    extra: Markdown sections placed after the facts (a release's data, recipe and scores); location: the
    folder as the card's commands name it."""
    c = encoder.cfg
    variant = metadata.get("variant") or "unknown"
    facts = [("method (variant)", variant), ("encoder size", metadata.get("size") or "custom"),
             ("parameters", _params(encoder)), ("width x depth x heads", f"{c.width} x {c.depth} x {c.heads}"),
             ("input", f"{c.sample_rate} Hz mono -> {c.n_mels}-bin Kaldi log-mel, {c.frame_shift_ms:g} ms hop"),
             ("patches", f"{c.patch_size[0]} frames x {c.patch_size[1]} mel bins; chunks of {c.target_frames} "
                         f"frames ({c.target_frames * c.frame_shift_ms / 1000:g} s)"),
             ("frame rate", f"one feature per {c.patch_size[0] * c.frame_shift_ms:g} ms"),
             ("pretraining steps", metadata.get("step", "unknown")), ("seed", metadata.get("seed", "unknown"))]
    rows = "\n".join(f"| {k} | {v} |" for k, v in facts)
    provenance = {k: metadata[k] for k in ("pretrain_config", "train_config", "converted_from", "notes")
                  if k in metadata}
    prov = (f"\n## Provenance\n\n```json\n{json.dumps(provenance, indent=1, default=str)}\n```\n"
            if provenance else "")
    return f"""---
library_name: mamclap
tags: [audio, representation-learning, hear, s3prl, masked-audio-modeling]
license: mit
---

# mamclap encoder ({variant})

A ViT audio encoder from the mamclap toolkit (MAM, MAM-CLAP, SupMAM, SupMAM-CLAP: Xin, Peng and Lu,
*Masked Audio Modeling with CLAP and Multi-Objective Learning*, Interspeech 2023). The front end and its
normalisation are inside the model: it takes raw 16 kHz audio.

| | |
|---|---|
{rows}
{extra}
## Use

```python
import torch
from hear_mamclap.model import MAMCLAPEncoder
encoder = MAMCLAPEncoder.from_pretrained("{location}")
out = encoder(torch.randn(2, 16000 * 5))           # (batch, samples) at 16 kHz
out.clip.shape, out.frames.shape                   # (2, D) clip features, (2, frames, D) frame features
```

As a HEAR 2021 module: `python -m heareval.embeddings.runner hear_mamclap --model {location} ...`;
as an s3prl upstream: `-u mamclap -k {location}`.

## Intended use and limits

Frozen features or fine-tuning for audio classification, tagging and speech tasks. Check its scores (in
this card when it has them, and in the project's results/) and the data it was trained on before relying on
it; models trained on the offline sound kit have seen far less audio than AudioSet-trained ones.
{prov}"""
