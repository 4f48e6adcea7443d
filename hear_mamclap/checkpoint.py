"""Encoder export and loading.

An export is a folder with two files: `encoder.safetensors` (the encoder's weights) and `encoder.json`
({"format": "mamclap-encoder", "version": 1, "config": EncoderConfig as a dict, "metadata": {...}}); the
config carries the front-end settings and the normalisation statistics, so nothing else is needed to run it.

A sharded export (version 2; the repository's release, which git holds in files of bounded size) keeps its
weights in `encoder-00001-of-0000N.safetensors` files, possibly in bfloat16, listed in encoder.json under
"weights": {"dtype": "bfloat16", "files": [{"name", "bytes", "sha256"}, ...]}. Loading checks each file's
size and digest (a Git LFS pointer or a partial download is named as such) and gives float32 weights.

A version-1 folder whose encoder.safetensors is absent may instead hold the full state dict in bfloat16
files named `<run>.bf16-00001-of-0000N.safetensors` (what the GPU experiment drivers bring back: the
export's encoder.json plus its weights cut into files of bounded size, results/gpu/scripts,
`bf16_shards`); they are read as one set (all N present, one run name) and loaded as float32, so such a
folder is an export like any other (`mamclap export DIR --release` turns it into the release).

`load_encoder` takes such a folder, its .safetensors file, or a full pretraining checkpoint: a plain dict
saved with torch.save holding "model" (the pretraining wrapper's state dict, encoder weights under
"encoder.") and "config" (the pretraining config as a dict, its encoder config under "encoder"), read with
torch.load(weights_only=True).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save, save_file

from hear_mamclap import atomic
from hear_mamclap.errors import UserError
from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder

EXPORT_FORMAT = "mamclap-encoder"
EXPORT_VERSION = 1  # one float32 file, WEIGHTS_NAME
SHARDED_VERSION = 2  # the files listed under "weights"
READ_VERSIONS = (EXPORT_VERSION, SHARDED_VERSION)
WEIGHTS_NAME = "encoder.safetensors"
CONFIG_NAME = "encoder.json"
SHARD_GLOB = "encoder-*-of-*.safetensors"
BF16_SHARD_GLOB = "*.bf16-*-of-*.safetensors"  # the GPU drivers' shards beside a version-1 encoder.json
_BF16_SHARD = re.compile(r"(?P<run>.+)\.bf16-(?P<index>\d{5})-of-(?P<total>\d{5})\.safetensors")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# A safetensors file is an 8-byte length, a JSON header and the tensors' bytes; a bound on the header's share
# per tensor (its name, dtype, shape and offsets) keeps a planned shard under its limit.
_HEADER_BYTES_PER_TENSOR = 128
_HEADER_BYTES = 256


def shard_name(index: int, total: int) -> str:
    """encoder-00001-of-00003.safetensors for index 0 of 3 (the Hugging Face naming)."""
    return f"encoder-{index + 1:05d}-of-{total:05d}.safetensors"


def plan_shards(state: dict[str, torch.Tensor], max_shard_bytes: int) -> list[list[str]]:
    """The state's keys in order, cut into groups whose safetensors files stay within max_shard_bytes."""
    groups: list[list[str]] = [[]]
    size = _HEADER_BYTES
    for key, tensor in state.items():
        need = tensor.numel() * tensor.element_size() + len(key.encode()) + _HEADER_BYTES_PER_TENSOR
        if need + _HEADER_BYTES > max_shard_bytes:
            raise ValueError(f"tensor {key} {tuple(tensor.shape)} takes {need:,} bytes, more than a shard may hold "
                             f"({max_shard_bytes:,} bytes)")
        if groups[-1] and size + need > max_shard_bytes:
            groups.append([])
            size = _HEADER_BYTES
        groups[-1].append(key)
        size += need
    return groups


def export_encoder(encoder: MAMCLAPEncoder, out_dir: str | Path, metadata: dict | None = None,
                   dtype: torch.dtype | None = None, max_shard_bytes: int | None = None) -> Path:
    """Write out_dir/encoder.safetensors and out_dir/encoder.json, each to a temp name renamed into place.

    metadata: JSON-serialisable provenance (pretraining variant, step, ...) kept in encoder.json.
    dtype (e.g. torch.bfloat16) or max_shard_bytes: a sharded export instead (see the module docstring),
    the floating-point weights in dtype, each file at most max_shard_bytes (one file without a limit).
    Returns out_dir.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    manifest = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "config": encoder.cfg.to_dict(),
                "metadata": metadata or {}}
    # Weights first, config last: a reader never finds a config pointing at missing or partial weights.
    if dtype is None and max_shard_bytes is None:
        with atomic.file(out_dir / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": EXPORT_FORMAT})
    else:
        dtype = dtype or torch.float32
        names = {v: k for k, v in DTYPES.items()}
        if dtype not in names:
            raise ValueError(f"export dtype must be one of {sorted(DTYPES)}, got {dtype}")
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        groups = plan_shards(state, max_shard_bytes) if max_shard_bytes is not None else [list(state)]
        files = []
        for i, keys in enumerate(groups):
            path = out_dir / shard_name(i, len(groups))
            # Bytes written by atomic.write_bytes: safetensors' save_file makes its file private to its owner.
            atomic.write_bytes(path, save({k: state[k] for k in keys}, metadata={"format": EXPORT_FORMAT}))
            size = path.stat().st_size
            if max_shard_bytes is not None and size > max_shard_bytes:  # the header bound above failed
                raise RuntimeError(f"{path}: {size} bytes, over the shard limit of {max_shard_bytes}")
            files.append({"name": path.name, "bytes": size, "sha256": atomic.sha256_file(path)})
        manifest.update(version=SHARDED_VERSION, weights={"dtype": names[dtype], "files": files})
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


def _weight_files(manifest: dict, manifest_path: Path) -> list[Path]:
    """The weight files an export's manifest names, each checked against its recorded size and digest."""
    folder = manifest_path.parent
    if manifest["version"] == EXPORT_VERSION:
        if (folder / WEIGHTS_NAME).is_file():
            return [folder / WEIGHTS_NAME]
        shards = bf16_shard_files(folder)
        if not shards:
            raise FileNotFoundError(f"no encoder at {folder / WEIGHTS_NAME} (nor bfloat16 shards "
                                    f"{BF16_SHARD_GLOB} beside {manifest_path.name})")
        return shards
    weights = manifest.get("weights")
    files = weights.get("files") if isinstance(weights, dict) else None
    if not files or not all(isinstance(f, dict) and {"name", "bytes", "sha256"} <= set(f) for f in files):
        raise UserError(f"{manifest_path}: a version {SHARDED_VERSION} export lists its weight files under "
                        "\"weights\": {\"files\": [{\"name\", \"bytes\", \"sha256\"}, ...]}")
    paths = []
    for f in files:
        path = folder / Path(f["name"]).name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; {manifest_path} lists {len(files)} weight files")
        size = path.stat().st_size
        if size != f["bytes"]:
            raise UserError(f"{path}: {size} bytes, {manifest_path} says {f['bytes']} (a Git LFS pointer or a "
                            "partial copy?); fetch the file again")
        if atomic.sha256_file(path) != f["sha256"]:
            raise UserError(f"{path}: its SHA-256 differs from the one in {manifest_path} (a corrupt or "
                            "replaced file); fetch the file again")
        paths.append(path)
    return paths


def bf16_shard_files(folder: str | Path) -> list[Path]:
    """The GPU drivers' bfloat16 shards in folder (`<run>.bf16-00001-of-00003.safetensors`, ...) in order;
    [] without any. A set with a file missing, or files of several sets, is refused."""
    folder = Path(folder)
    found = {p: m for p in folder.glob(BF16_SHARD_GLOB) if (m := _BF16_SHARD.fullmatch(p.name))}
    if not found:
        return []
    sets = sorted({(m["run"], int(m["total"])) for m in found.values()})
    if len(sets) > 1:
        raise UserError(f"{folder}: bfloat16 shards of {len(sets)} sets "
                        f"({', '.join(f'{run} of {total}' for run, total in sets)}); keep one encoder's files")
    (run, total), = sets
    have = {int(m["index"]) for m in found.values()}
    missing, extra = sorted(set(range(1, total + 1)) - have), sorted(have - set(range(1, total + 1)))
    if missing or extra:
        raise UserError(f"{folder}: {run}.bf16 shards of {total}: "
                        + "; ".join([*([f"{', '.join(map(str, missing))} missing"] if missing else []),
                                     *([f"{', '.join(map(str, extra))} out of range"] if extra else [])])
                        + "; copy the whole set")
    return sorted(found, key=lambda p: int(found[p]["index"]))


def _from_export(folder: Path, given: Path) -> tuple[EncoderConfig, dict, dict]:
    manifest_path = folder / CONFIG_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{given} has no {CONFIG_NAME} beside it; an encoder export is a folder with "
                                f"{WEIGHTS_NAME} and {CONFIG_NAME} (hear_mamclap.checkpoint.export_encoder)")
    manifest = _read_manifest(manifest_path)
    if manifest.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{manifest_path} is not a {EXPORT_FORMAT} manifest (format={manifest.get('format')!r})")
    if manifest.get("version") not in READ_VERSIONS:
        raise ValueError(f"{manifest_path} has export version {manifest.get('version')}, this code reads "
                         f"{' and '.join(map(str, READ_VERSIONS))}")
    cfg = _encoder_config(manifest.get("config"), manifest_path)
    if not given.exists():
        raise FileNotFoundError(f"no encoder at {given}")
    state: dict[str, torch.Tensor] = {}
    for weights in _weight_files(manifest, manifest_path):
        try:
            part = load_file(str(weights))
        except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError, and OSError
            raise UserError(f"{weights}: not a readable safetensors file ({err}); re-export the encoder") from err
        twice = sorted(set(part) & set(state))
        if twice:
            raise UserError(f"{weights}: holds {twice[:3]}, already read from another weight file")
        state.update(part)
    # Weights stored in bfloat16 (a release) run in float32, as every other export does.
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return cfg, state, manifest.get("metadata", {})


def _export_path(path: Path) -> Path | None:
    """The export folder that `path` (a folder, its encoder.json, or one of its weight files) belongs to;
    None for anything else (a pretraining checkpoint)."""
    if path.is_dir():
        return path
    if path.suffix == ".safetensors" or path.name == CONFIG_NAME:
        return path.parent
    return None


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
    metadata = {k: ckpt[k] for k in ("step", "world_size") if k in ckpt}
    train = ckpt.get("train_config")
    if isinstance(train, dict):
        # "preset": the variant's name in checkpoints written before TrainConfig called it "variant".
        metadata.update(variant=train.get("variant", train.get("preset")), size=train.get("size"),
                        seed=train.get("seed"), train_config=train)
    metadata["pretrain_config"] = ckpt["config"]
    return metadata


def read_metadata(path: str | Path) -> dict:
    """The provenance of an encoder export (its encoder.json "metadata") or of a pretraining checkpoint
    (variant, size, seed, step, world_size, pretrain_config, train_config); {} for an export written without
    any.
    Reads no weights from an export."""
    path = Path(path)
    folder = _export_path(path)
    if folder is not None:
        manifest = folder / CONFIG_NAME
        if not manifest.is_file():
            raise FileNotFoundError(f"{path}: no {CONFIG_NAME} {'in it' if path.is_dir() else 'beside it'} (an "
                                    f"encoder export is a folder with {WEIGHTS_NAME} and {CONFIG_NAME})")
        return dict(_read_manifest(manifest).get("metadata", {}))
    if not path.is_file():
        raise FileNotFoundError(f"no encoder export or pretraining checkpoint at {path}")
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("config"), dict):
        raise UserError(f"{path}: expected a pretraining checkpoint dict with 'model' and 'config', got "
                        f"{sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__}")
    return _checkpoint_metadata(ckpt)


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> MAMCLAPEncoder:
    """An encoder in eval mode from an export folder (single-file or sharded), one of its files, or a
    pretraining checkpoint.

    The metadata of the source (export metadata, or the checkpoint's step) is kept as `encoder.metadata`.
    """
    path = Path(path)
    folder = _export_path(path)
    if folder is not None and (folder / CONFIG_NAME).is_file():
        cfg, state, metadata = _from_export(folder, path)
    else:
        if path.is_dir():
            path = path / WEIGHTS_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no encoder at {path}")
        cfg, state, metadata = (_from_export(path.parent, path) if path.suffix == ".safetensors"
                                else _from_training_checkpoint(path))
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
