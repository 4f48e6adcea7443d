"""Converters between this encoder and the timm ViT layout that AudioMAE uses.

AudioMAE's encoder is a timm `VisionTransformer` on a (B, 1, 1024, 128) Kaldi log-mel "image" (time is the
image height, mel bins the width), 16 x 16 patches embedded by a Conv2d, a CLS token, qkv with bias,
LayerNorm eps 1e-6. Its front end and normalisation are ours (hear_mamclap/frontend.py), and its patch order
is ours too: the Conv2d's (64, 8) output grid flattens time-major, patch (t, f) at t * 8 + f. What differs:

- patch embedding: a Conv2d weight (D, 1, pt, pf) here is a Linear weight (D, pt * pf) over patches
  flattened time-major (model.patchify), the same numbers reshaped;
- positions: timm keeps them in the state dict as `pos_embed` (1, [1 +] N, D), the CLS slot first; AudioMAE
  fills it with fixed 2-D sin-cos values in its own channel order. A converted encoder carries them in its
  weights (EncoderConfig.pos_embed = "stored"), so the outputs are identical whatever the convention;
  CLS's position is added to the CLS token, which has no position here;
- block names: mlp.fc1 / mlp.fc2 are mlp.0 / mlp.2 here.

Dropped on the way in, and said so in the returned notes: AudioMAE's decoder and mask token (pretraining
only) and any classification head (`head.*`). A fine-tuned AudioMAE built with global pooling has `fc_norm`
in place of `norm`; it is used as the final norm, which applies it per token rather than after pooling.

`to_timm` writes the reverse: a state dict that a timm VisionTransformer built with `timm_kwargs(cfg)` loads
strictly and that gives the same tokens.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch

from hear_mamclap.errors import UserError
from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder, sincos_pos_embed_2d

# AudioMAE's released ViT-B/16 encoder: 1024 frames x 128 mel bins, (64, 8) patches.
AUDIOMAE = EncoderConfig(n_mels=128, target_frames=1024, patch_size=(16, 16), width=768, depth=12, heads=12,
                         pos_embed="stored")

_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
# timm block parameter names -> ours; AudioMAE uses none of LayerScale (ls1/ls2) or qk-norm.
_BLOCK_NAMES = {"norm1": "norm1", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj", "norm2": "norm2",
                "mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2"}
_DROPPED_PREFIXES = ("decoder_", "mask_token", "head.", "head_dist.")


def _unwrap(obj: dict) -> dict[str, torch.Tensor]:
    """The state dict inside an AudioMAE/timm checkpoint file: {"model": sd}, {"state_dict": sd} or sd itself,
    with DDP's "module." stripped."""
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("expected a timm/AudioMAE state dict (name -> tensor), or a dict holding one under "
                         "'model' or 'state_dict'")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def from_timm(state: dict[str, torch.Tensor], cfg: EncoderConfig = AUDIOMAE) -> tuple[MAMCLAPEncoder, list[str]]:
    """A timm ViT / AudioMAE state dict -> (our encoder with stored positions, notes on what was dropped).

    cfg gives what the weights do not tell (heads, the input grid, the front end); width, depth, patch size
    and the CLS token are read from the weights and must agree with it."""
    state = _unwrap(state)
    notes = sorted({k.split(".")[0] for k in state if k.startswith(_DROPPED_PREFIXES)})
    notes = [f"dropped {name}* (not part of the encoder)" for name in notes]
    proj = state.get("patch_embed.proj.weight")
    if proj is None or proj.ndim != 4 or proj.shape[1] != 1:
        raise ValueError("expected patch_embed.proj.weight of shape (width, 1, patch_t, patch_f): a one-channel "
                         "timm ViT such as AudioMAE's")
    width, _, pt, pf = proj.shape
    depth = 1 + max((int(m.group(1)) for m in map(_BLOCK.match, state) if m), default=-1)
    cfg = replace(cfg, width=width, depth=depth, patch_size=(pt, pf), cls_token="cls_token" in state,
                  pos_embed="stored")
    ours: dict[str, torch.Tensor] = {"patch_embed.weight": proj.reshape(width, pt * pf),
                                     "patch_embed.bias": state["patch_embed.proj.bias"]}
    pos = state["pos_embed"][0]  # ([1 +] N, D)
    n_extra = pos.shape[0] - cfg.n_patches
    if n_extra not in (0, 1):
        raise ValueError(f"pos_embed has {pos.shape[0]} positions; the config's {cfg.grid} grid has "
                         f"{cfg.n_patches} patches (set target_frames / n_mels to the model's input size)")
    ours["pos_embed"] = pos[n_extra:]
    if cfg.cls_token:  # CLS has no position here: fold timm's CLS position (zero in AudioMAE) into the token
        ours["cls_token"] = state["cls_token"] + (pos[:1][None] if n_extra else 0)
    for key, value in state.items():
        m = _BLOCK.match(key)
        if m is None:
            continue
        layer, rest = m.groups()
        name, _, kind = rest.rpartition(".")
        if name not in _BLOCK_NAMES:
            raise ValueError(f"{key}: a timm block part this encoder does not have (LayerScale, qk-norm?)")
        ours[f"blocks.{layer}.{_BLOCK_NAMES[name]}.{kind}"] = value
    norm = "norm" if "norm.weight" in state else "fc_norm" if "fc_norm.weight" in state else None
    if norm is None:
        raise ValueError("no final norm (norm.* or fc_norm.*) in the state dict")
    if norm == "fc_norm":
        notes.append("fc_norm (applied after pooling in timm) used as the final per-token norm")
    ours["norm.weight"], ours["norm.bias"] = state[f"{norm}.weight"], state[f"{norm}.bias"]
    encoder = MAMCLAPEncoder(cfg)
    encoder.load_state_dict({k: v.float() for k, v in ours.items()}, strict=True)
    return encoder.eval(), notes


def load_audiomae(path: str | Path, cfg: EncoderConfig = AUDIOMAE) -> tuple[MAMCLAPEncoder, list[str]]:
    """An AudioMAE (or timm ViT) checkpoint file (.pth/.pt via torch.load(weights_only=True), or .safetensors)
    -> from_timm's (encoder, notes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a foreign or broken file fails in many ways
        first = (str(err).strip().splitlines() or [""])[0]
        raise UserError(f"{path}: not a readable checkpoint ({type(err).__name__}: {first}); expected an AudioMAE "
                        "or timm ViT state dict (.pth/.pt, or .safetensors)") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    try:
        return from_timm(obj, cfg)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def to_timm(encoder: MAMCLAPEncoder) -> dict[str, torch.Tensor]:
    """Our encoder -> a state dict for timm's VisionTransformer(**timm_kwargs(encoder.cfg)) (strict load)."""
    cfg = encoder.cfg
    state = encoder.state_dict()
    pt, pf = cfg.patch_size
    pos = state["pos_embed"] if "pos_embed" in state else sincos_pos_embed_2d(cfg.width, cfg.grid)
    out = {"patch_embed.proj.weight": state["patch_embed.weight"].reshape(cfg.width, 1, pt, pf),
           "patch_embed.proj.bias": state["patch_embed.bias"]}
    if cfg.cls_token:
        out["cls_token"] = state["cls_token"]
        pos = torch.cat([pos.new_zeros(1, cfg.width), pos])  # the CLS slot: no position
    out["pos_embed"] = pos[None]
    inverse = {ours: theirs for theirs, ours in _BLOCK_NAMES.items()}
    for key, value in state.items():
        m = _BLOCK.match(key)
        if m:
            layer, rest = m.groups()
            name, _, kind = rest.rpartition(".")
            out[f"blocks.{layer}.{inverse[name]}.{kind}"] = value
    out["norm.weight"], out["norm.bias"] = state["norm.weight"], state["norm.bias"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def timm_kwargs(cfg: EncoderConfig) -> dict:
    """Keyword arguments for timm.models.vision_transformer.VisionTransformer matching cfg (no head)."""
    return dict(img_size=(cfg.target_frames, cfg.n_mels), patch_size=cfg.patch_size, in_chans=1,
                embed_dim=cfg.width, depth=cfg.depth, num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=True,
                class_token=cfg.cls_token, global_pool="token" if cfg.cls_token else "avg", num_classes=0,
                no_embed_class=False)
