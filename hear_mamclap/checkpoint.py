"""Encoder export and loading.

An export is a folder with two files: `encoder.safetensors` (the encoder's weights) and `encoder.json`
({"format": "mamclap-encoder", "version": 1, "config": EncoderConfig as a dict, "metadata": {...}}); the
config carries the front-end settings and the normalisation statistics, so nothing else is needed to run it.

`load_encoder` takes such a folder, its .safetensors file, or a full pretraining checkpoint: a plain dict
saved with torch.save holding "model" (the pretraining wrapper's state dict, encoder weights under
"encoder.") and "config" (the pretraining config as a dict, its encoder config under "encoder"), read with
torch.load(weights_only=True).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hear_mamclap import atomic
from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder

EXPORT_FORMAT = "mamclap-encoder"
EXPORT_VERSION = 1
WEIGHTS_NAME = "encoder.safetensors"
CONFIG_NAME = "encoder.json"


def export_encoder(encoder: MAMCLAPEncoder, out_dir: str | Path, metadata: dict | None = None) -> Path:
    """Write out_dir/encoder.safetensors and out_dir/encoder.json, each to a temp name renamed into place.

    metadata: JSON-serialisable provenance (pretraining variant, step, ...) kept in encoder.json.
    Returns out_dir.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    manifest = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "config": encoder.cfg.to_dict(),
                "metadata": metadata or {}}
    # Weights first, config last: a reader never finds a config pointing at missing or partial weights.
    with atomic.file(out_dir / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": EXPORT_FORMAT})
    atomic.write_text(out_dir / CONFIG_NAME, json.dumps(manifest, indent=2) + "\n")
    return out_dir


def _strip_wrappers(key: str) -> str:
    # DistributedDataParallel adds "module.", torch.compile "_orig_mod."; neither belongs in a saved model.
    for prefix in ("module.", "_orig_mod."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def _from_export(weights: Path) -> tuple[EncoderConfig, dict, dict]:
    manifest_path = weights.parent / CONFIG_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{weights} has no {CONFIG_NAME} beside it; an encoder export is a folder with "
                                f"{WEIGHTS_NAME} and {CONFIG_NAME} (hear_mamclap.checkpoint.export_encoder)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{manifest_path} is not a {EXPORT_FORMAT} manifest (format={manifest.get('format')!r})")
    if manifest.get("version") != EXPORT_VERSION:
        raise ValueError(f"{manifest_path} has export version {manifest.get('version')}, this code reads "
                         f"{EXPORT_VERSION}")
    return EncoderConfig.from_dict(manifest["config"]), load_file(str(weights)), manifest.get("metadata", {})


def _from_training_checkpoint(path: Path) -> tuple[EncoderConfig, dict, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path}: expected a pretraining checkpoint dict with 'model' and 'config', got "
                         f"{sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__}")
    if not isinstance(ckpt["config"], dict) or not isinstance(ckpt["config"].get("encoder"), dict):
        raise ValueError(f"{path}: checkpoint config has no 'encoder' dict (expected PretrainConfig.to_dict())")
    prefix = "encoder."
    state = {k[len(prefix):]: v for k, v in ((_strip_wrappers(k), v) for k, v in ckpt["model"].items())
             if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{path}: no '{prefix}*' weights in checkpoint['model']")
    return EncoderConfig.from_dict(ckpt["config"]["encoder"]), state, _checkpoint_metadata(ckpt)


def _checkpoint_metadata(ckpt: dict) -> dict:
    """The provenance of a pretraining checkpoint, in the keys export_encoder's metadata uses."""
    metadata = {k: ckpt[k] for k in ("step",) if k in ckpt}
    train = ckpt.get("train_config")
    if isinstance(train, dict):
        # "preset": the variant's name in checkpoints written before TrainConfig called it "variant".
        metadata.update(variant=train.get("variant", train.get("preset")), size=train.get("size"),
                        seed=train.get("seed"), train_config=train)
    metadata["pretrain_config"] = ckpt["config"]
    return metadata


def read_metadata(path: str | Path) -> dict:
    """The provenance of an encoder export (its encoder.json "metadata") or of a pretraining checkpoint
    (variant, size, seed, step, pretrain_config, train_config); {} for an export written without any.
    Reads no weights from an export."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if path.suffix == ".safetensors":
        manifest = path.parent / CONFIG_NAME
        if not manifest.is_file():
            raise FileNotFoundError(f"{path}: no {CONFIG_NAME} beside it (an encoder export is a folder with "
                                    f"{WEIGHTS_NAME} and {CONFIG_NAME})")
        return dict(json.loads(manifest.read_text()).get("metadata", {}))
    if not path.is_file():
        raise FileNotFoundError(f"no encoder export or pretraining checkpoint at {path}")
    return _checkpoint_metadata(torch.load(path, map_location="cpu", weights_only=True))


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> MAMCLAPEncoder:
    """An encoder in eval mode from an export folder, its encoder.safetensors, or a pretraining checkpoint.

    The metadata of the source (export metadata, or the checkpoint's step) is kept as `encoder.metadata`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no encoder at {path}")
    cfg, state, metadata = (_from_export(path) if path.suffix == ".safetensors" else _from_training_checkpoint(path))
    encoder = MAMCLAPEncoder(cfg)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the encoder config (missing {missing}, unexpected "
                         f"{unexpected})")
    encoder.metadata = metadata
    return encoder.to(device).eval()
