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
from hear_mamclap.errors import UserError
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


EXPECTED = (f"an encoder export (a folder with {WEIGHTS_NAME} and {CONFIG_NAME}, or its {WEIGHTS_NAME}) or a "
            "pretraining checkpoint (checkpoint.pt)")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aiff")


def _read_manifest(path: Path) -> dict:
    """encoder.json as a dict; UserError naming the file when it is not one."""
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err}); expected the {CONFIG_NAME} that export_encoder "
                        "writes") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    return manifest


def _encoder_config(d, source: Path) -> EncoderConfig:
    """EncoderConfig.from_dict, with the file it came from named in its errors."""
    if not isinstance(d, dict):
        raise UserError(f"{source}: the encoder config is {type(d).__name__}, expected a dict of EncoderConfig "
                        "fields")
    try:
        return EncoderConfig.from_dict(d)
    except (TypeError, ValueError) as err:
        raise UserError(f"{source}: bad encoder config: {err}") from None


def _torch_load(path: Path):
    """torch.load(weights_only=True), with the file named in its errors (torch's own, for a file that is not a
    checkpoint, are e.g. "IndexError: pop from empty list")."""
    if path.suffix.lower() in AUDIO_SUFFIXES:
        raise UserError(f"{path} is an audio file; expected {EXPECTED}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling a foreign file fails in many ways
        first = (str(err).strip().splitlines() or [""])[0]
        raise UserError(f"{path}: not a readable checkpoint ({type(err).__name__}: {first}); expected {EXPECTED}") \
            from err


def _from_export(weights: Path) -> tuple[EncoderConfig, dict, dict]:
    manifest_path = weights.parent / CONFIG_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{weights} has no {CONFIG_NAME} beside it; an encoder export is a folder with "
                                f"{WEIGHTS_NAME} and {CONFIG_NAME} (hear_mamclap.checkpoint.export_encoder)")
    manifest = _read_manifest(manifest_path)
    if manifest.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{manifest_path} is not a {EXPORT_FORMAT} manifest (format={manifest.get('format')!r})")
    if manifest.get("version") != EXPORT_VERSION:
        raise ValueError(f"{manifest_path} has export version {manifest.get('version')}, this code reads "
                         f"{EXPORT_VERSION}")
    cfg = _encoder_config(manifest.get("config"), manifest_path)
    try:
        state = load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError, and OSError
        raise UserError(f"{weights}: not a readable safetensors file ({err}); re-export the encoder") from err
    return cfg, state, manifest.get("metadata", {})


def _from_training_checkpoint(path: Path) -> tuple[EncoderConfig, dict, dict]:
    ckpt = _torch_load(path)
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
    return _encoder_config(ckpt["config"]["encoder"], path), state, _checkpoint_metadata(ckpt)


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
        return dict(_read_manifest(manifest).get("metadata", {}))
    if not path.is_file():
        raise FileNotFoundError(f"no encoder export or pretraining checkpoint at {path}")
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("config"), dict):
        raise UserError(f"{path}: expected a pretraining checkpoint dict with 'model' and 'config', got "
                        f"{sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__}")
    return _checkpoint_metadata(ckpt)


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
    try:
        missing, unexpected = encoder.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of the wrong shape
        raise UserError(f"{path}: weights do not fit the encoder config ({str(err).strip().splitlines()[-1]})") \
            from None
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the encoder config (missing {missing}, unexpected "
                         f"{unexpected})")
    encoder.metadata = metadata
    return encoder.to(device).eval()
