"""Masked audio modelling with CLAP distillation and a supervised branch: one wrapper, four variants.

`MAMPretrainer` wraps a plain `MAMCLAPEncoder` (lucidrains' mae.py layout) and owns everything that exists
only for pretraining: random masking, the decoder and the loss heads. The four variants of the paper are
presets of one `PretrainConfig`, differing only in loss weights (VARIANT_WEIGHTS):

  mam          reconstruction of masked patches (AudioMAE)
  mam_clap     + prediction of the CLAP teacher's features on visible and masked positions
  supmam       + multi-label classification of the clip (lambda_cls)
  supmam_clap  both (the paper's best)

Losses. Reconstruction: MSE between the decoder's patch prediction and the (per-patch normalised, when
norm_pix_loss) log-mel patch, on masked patches only. Distillation: teacher features (B, N, teacher_dim)
aligned to the patch grid in the encoder's time-major patch order are normalised per position with a
parameter-free LayerNorm (data2vec's choice: scale-free targets, so the loss weight means the same for any
teacher), and separate linear heads on the decoder output predict them with MSE, averaged over visible
positions for one term and masked positions for the other. Classification: binary cross-entropy with
logits on a linear head over the encoder output of the visible patches (mean of the patch tokens, or the
CLS token), so the supervised branch costs no second, unmasked pass.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from hear_mamclap.model import Block, EncoderConfig, MAMCLAPEncoder, init_weights, patchify, sincos_pos_embed_2d

# The paper's four methods as data: each variant is PretrainConfig with these loss weights (over the defaults,
# reconstruction alone). Code asks a config what it needs (uses_teacher, uses_labels), never a variant's name.
# lambda_cls 0.5 sits in the paper's range (0.1 .. 1.0).
VARIANT_WEIGHTS: dict[str, dict[str, float]] = {
    "mam": {},
    "mam_clap": {"distill_visible_weight": 1.0, "distill_masked_weight": 1.0},
    "supmam": {"lambda_cls": 0.5},
    "supmam_clap": {"distill_visible_weight": 1.0, "distill_masked_weight": 1.0, "lambda_cls": 0.5},
}
VARIANTS = tuple(VARIANT_WEIGHTS)


@dataclass(frozen=True)
class PretrainConfig:
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig.preset("base"))
    mask_ratio: float = 0.8                # share of patches hidden from the encoder (AudioMAE)
    decoder_width: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    # "global": every decoder block attends over all patches (MAE's default). "local": within windows of
    # decoder_window (time, frequency) patches, every second block's windows shifted by half a window in time
    # (AudioMAE's local decoder, whose 16 Swin blocks use (4, 4) and a (2, 0) shift; here the depth stays
    # decoder_depth and there is no relative position bias). The decoder then has no CLS token.
    decoder_attention: Literal["global", "local"] = "global"
    decoder_window: tuple[int, int] = (4, 4)
    norm_pix_loss: bool = True             # reconstruct per-patch normalised log-mel
    recon_weight: float = 1.0              # 0 removes the reconstruction head
    teacher_dim: int = 768                 # teacher feature size (LAION-CLAP HTS-AT: 768)
    distill_visible_weight: float = 0.0    # teacher prediction on visible positions; 0 = off
    distill_masked_weight: float = 0.0     # ... on masked positions; 0 = off
    lambda_cls: float = 0.0                # multi-label classification; 0 = off
    n_classes: int = 527                   # AudioSet
    cls_pooling: Literal["mean", "cls"] = "mean"  # encoder output pooled for classification

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        weights = (self.recon_weight, self.distill_visible_weight, self.distill_masked_weight, self.lambda_cls)
        if min(weights) < 0 or max(weights) == 0:
            raise ValueError(f"loss weights must be >= 0 with at least one > 0, got recon, distill_visible, "
                             f"distill_masked, lambda_cls = {weights}")
        if self.cls_pooling not in ("mean", "cls"):
            raise ValueError(f"cls_pooling must be 'mean' or 'cls', got {self.cls_pooling!r}")
        if self.cls_pooling == "cls" and self.lambda_cls > 0 and not self.encoder.cls_token:
            raise ValueError("cls_pooling='cls' needs an encoder with cls_token=True")
        object.__setattr__(self, "decoder_window", tuple(self.decoder_window))  # JSON gives a list
        if self.decoder_attention not in ("global", "local"):
            raise ValueError(f"decoder_attention must be 'global' or 'local', got {self.decoder_attention!r}")
        if self.decoder_attention == "local":
            window_layouts(self.encoder.grid, self.decoder_window)  # raises unless the windows tile the grid
        if self.decoder_width % self.decoder_heads or self.decoder_width % 4:
            raise ValueError(f"decoder_width {self.decoder_width} must be divisible by decoder_heads "
                             f"{self.decoder_heads} and by 4")

    @property
    def uses_decoder(self) -> bool:
        """Reconstruction or distillation is on: both predict from the decoder."""
        return self.recon_weight > 0 or self.distill_visible_weight > 0 or self.distill_masked_weight > 0

    @property
    def uses_teacher(self) -> bool:
        """A distillation loss is on: training needs a CLAP teacher's features."""
        return self.distill_visible_weight > 0 or self.distill_masked_weight > 0

    @property
    def uses_labels(self) -> bool:
        """The classification loss is on: training needs labelled data."""
        return self.lambda_cls > 0

    @classmethod
    def preset(cls, variant: str, size: str = "base", **overrides) -> PretrainConfig:
        """A variant (VARIANT_WEIGHTS) on an encoder size (tiny | small | base); keyword overrides on top.

        size="tiny" also shrinks the decoder (tests, CPU smoke runs).
        """
        if variant not in VARIANT_WEIGHTS:
            raise ValueError(f"unknown pretraining variant {variant!r}; expected one of {VARIANTS}")
        cfg = cls(encoder=EncoderConfig.preset(size), **VARIANT_WEIGHTS[variant])
        if size == "tiny":
            cfg = replace(cfg, decoder_width=32, decoder_depth=2, decoder_heads=4)
        return replace(cfg, **overrides)

    def to_dict(self) -> dict:
        return asdict(self)  # plain, nested: loads with torch.load(weights_only=True) and dumps to JSON

    @classmethod
    def from_dict(cls, d: dict) -> PretrainConfig:
        known = {f.name for f in fields(cls)}
        if set(d) - known:
            raise ValueError(f"unknown pretraining config keys {sorted(set(d) - known)}")
        if not isinstance(d.get("encoder"), dict):
            raise ValueError("pretraining config dict has no 'encoder' dict")
        return cls(**{**d, "encoder": EncoderConfig.from_dict(d["encoder"])})


def random_masking(batch: int, n_patches: int, mask_ratio: float, device: torch.device | str = "cpu",
                   generator: torch.Generator | None = None,
                   noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE masking by argsort of uniform noise: each clip keeps round((1 - mask_ratio) * n_patches) (>= 1)
    random patches. `noise` (B, N) may be given instead of drawn, so that a trainer can make each clip's
    mask depend only on the clip's place in the global batch (the same on 1 or many processes).

    Returns ids_keep (B, L) (kept patch indices, in shuffle order), ids_restore (B, N) (position of each patch
    in the shuffled order, so gathering [kept tokens, mask tokens] with it restores patch order), and mask
    (B, N) float, 1 = masked.
    """
    n_keep = max(1, round((1.0 - mask_ratio) * n_patches))
    if noise is None:
        noise = torch.rand(batch, n_patches, device=device, generator=generator)  # (B, N)
    elif noise.shape != (batch, n_patches):
        raise ValueError(f"expected masking noise (batch, patches) = {(batch, n_patches)}, got {tuple(noise.shape)}")
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the smallest n_keep noises are kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # inverse permutation
    ids_keep = ids_shuffle[:, :n_keep]  # (B, L)
    mask = torch.ones(batch, n_patches, device=device)
    mask[:, :n_keep] = 0
    return ids_keep, ids_restore, torch.gather(mask, 1, ids_restore)  # mask in patch order


def window_layouts(grid: tuple[int, int], window: tuple[int, int]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The local decoder's two layouts of a (time, frequency) patch grid: unshifted windows, and windows shifted
    by half a window in time (Swin's cyclic shift: the patches it wraps round share a window with the last
    ones but do not attend to them). Each layout is (order (N,): the patch index at each place when the
    patches are laid out window by window, attend (windows, W, W) bool or None when every pair may attend)."""
    (gt, gf), (wt, wf) = grid, tuple(window)
    if len(window) != 2 or min(wt, wf) < 1 or gt % wt or gf % wf:
        raise ValueError(f"decoder_window {tuple(window)} must tile the patch grid {tuple(grid)} (time, frequency)")
    t = torch.arange(gt).repeat_interleave(gf)  # (N,) time-major patch order
    f = torch.arange(gf).repeat(gt)
    layouts = []
    for shift in (0, wt // 2):
        ts = (t - shift) % gt  # time after the cyclic shift
        place = ((ts // wt) * (gf // wf) + f // wf) * (wt * wf) + (ts % wt) * wf + f % wf  # (N,)
        order = torch.empty_like(place)
        order[place] = torch.arange(gt * gf)
        attend = None
        if shift:
            wrapped = (t < shift)[order].view(-1, wt * wf)  # (windows, W)
            attend = wrapped[:, :, None] == wrapped[:, None, :]  # (windows, W, W)
        layouts.append((order, attend))
    return layouts


def _masked_mean(per_patch: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of per_patch (B, N) over positions with weight 1."""
    return (per_patch * weights).sum() / weights.sum().clamp_min(1.0)


class MAMPretrainer(nn.Module):
    """Encoder + masking + decoder + heads. forward(mel, teacher, labels) -> dict of losses."""

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = MAMCLAPEncoder(cfg.encoder)
        enc = cfg.encoder
        pt, pf = enc.patch_size
        if cfg.uses_decoder:
            self.decoder_embed = nn.Linear(enc.width, cfg.decoder_width)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_width))
            self.register_buffer("decoder_pos_embed", sincos_pos_embed_2d(cfg.decoder_width, enc.grid),
                                 persistent=False)  # (N, decoder_width), fixed
            self.decoder_blocks = nn.ModuleList(Block(cfg.decoder_width, cfg.decoder_heads, enc.mlp_ratio, enc.norm_eps)
                                                for _ in range(cfg.decoder_depth))
            self.decoder_norm = nn.LayerNorm(cfg.decoder_width, eps=enc.norm_eps)
            if cfg.decoder_attention == "local":  # the pretraining grid's layouts; buffers stay out of the state dict
                for name, value in zip(("_local0", "_local1"), self._local_indices(enc.grid, "cpu")):
                    self.register_buffer(name, value, persistent=False)
        # Heads exist only for losses that are on, so every parameter always receives a gradient.
        self.recon_head = nn.Linear(cfg.decoder_width, pt * pf) if cfg.recon_weight > 0 else None
        self.visible_head = nn.Linear(cfg.decoder_width, cfg.teacher_dim) if cfg.distill_visible_weight > 0 else None
        self.masked_head = nn.Linear(cfg.decoder_width, cfg.teacher_dim) if cfg.distill_masked_weight > 0 else None
        self.cls_head = nn.Linear(enc.width, cfg.n_classes) if cfg.uses_labels else None
        for name, module in self.named_children():
            if name != "encoder":
                module.apply(init_weights)
        if cfg.uses_decoder:
            nn.init.normal_(self.mask_token, std=0.02)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Encoder tokens (B, [1 +] L, D) of the kept patches -> decoder output (B, N, decoder_width) in patch
        order (with global attention CLS, if any, takes part and is then dropped; the local decoder drops it)."""
        x = self.decoder_embed(latent)  # (B, [1 +] L, Dd)
        skip = 1 if self.encoder.cls_token is not None else 0
        cls, kept = x[:, :skip], x[:, skip:]
        B, N = ids_restore.shape
        x = torch.cat([kept, self.mask_token.expand(B, N - kept.shape[1], -1)], dim=1)  # (B, N, Dd) shuffled
        x = torch.gather(x, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))  # (B, N, Dd) patch order
        x = x + self.decoder_pos_embed[:N]
        if self.cfg.decoder_attention == "local":
            return self.decoder_norm(self._local_blocks(x))
        x = torch.cat([cls, x], dim=1)  # (B, [1 +] N, Dd)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_norm(x)[:, skip:]  # (B, N, Dd)

    def _local_indices(self, grid: tuple[int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
        """For window_layouts(grid): (gather indices (5, N): patch order into layout 0, layout 0 into 1, 1 into
        0, layout 0 back to patch order, 1 back to patch order; the shifted layout's attend mask (windows, W, W))."""
        (o0, _), (o1, a1) = window_layouts(grid, self.cfg.decoder_window)
        i0, i1 = o0.argsort(), o1.argsort()  # patch index -> place in the layout
        W = self.cfg.decoder_window[0] * self.cfg.decoder_window[1]
        attend = a1 if a1 is not None else torch.ones(len(o0) // W, W, W, dtype=torch.bool)  # no shift: all pairs
        return torch.stack([o0, i0[o1], i1[o0], i0, i1]).to(device), attend.to(device)

    def _local_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder blocks with windowed attention on (B, N, Dd) in patch order. The tokens move from one
        layout to the next with one gather per block (the index composes leaving one layout and entering the
        next) and back to patch order at the end."""
        B, N, Dd = x.shape
        gf = self.cfg.encoder.grid[1]
        moves, attend = ((self._local0, self._local1) if N == self.cfg.encoder.n_patches
                         else self._local_indices((N // gf, gf), x.device))  # a shorter input: made here
        W = self.cfg.decoder_window[0] * self.cfg.decoder_window[1]
        nw = N // W
        mask = attend.expand(B, nw, W, W).reshape(B * nw, 1, W, W)  # (B * windows, 1, W, W), batch-major
        x = x[:, moves[0]]  # layout 0
        for i, block in enumerate(self.decoder_blocks):
            shifted = i % 2 == 1
            x = block(x.reshape(B * nw, W, Dd), mask if shifted else None).reshape(B, N, Dd)
            if i + 1 < len(self.decoder_blocks):
                x = x[:, moves[2] if shifted else moves[1]]  # into the other layout
        return x[:, moves[4] if len(self.decoder_blocks) % 2 == 0 else moves[3]]  # back to patch order

    def reconstruction_loss(self, mel: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE between predicted and true patches (B, N, pt * pf), on masked patches."""
        target = patchify(mel, self.cfg.encoder.patch_size)  # (B, N, pt * pf)
        if self.cfg.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return _masked_mean((pred - target).pow(2).mean(-1), mask)

    def forward(self, mel: torch.Tensor, teacher: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Normalised log-mel (B, T, n_mels) (T a multiple of the patch time, normally target_frames),
        teacher features (B, N, teacher_dim) on the patch grid (needed when distillation is on), multi-hot
        labels (B, n_classes) (needed when lambda_cls > 0), optional masking noise (B, N) (drawn when None)
        -> {"loss": weighted sum (with grad)} plus each
        active term detached ("recon", "distill_visible", "distill_masked", "cls"; call float() to log).
        """
        cfg = self.cfg
        B, T, _ = mel.shape
        n_patches = (T // cfg.encoder.patch_size[0]) * cfg.encoder.grid[1]
        if cfg.uses_teacher:
            if teacher is None:
                raise ValueError("this config distills a teacher (distill_*_weight > 0): pass teacher features "
                                 f"(batch, {n_patches}, {cfg.teacher_dim})")
            if teacher.shape != (B, n_patches, cfg.teacher_dim):
                raise ValueError(f"expected teacher features (batch, patches, teacher_dim) = "
                                 f"{(B, n_patches, cfg.teacher_dim)}, got {tuple(teacher.shape)}")
        if cfg.uses_labels:
            if labels is None:
                raise ValueError(f"this config has a classification loss (lambda_cls > 0): pass labels "
                                 f"(batch, {cfg.n_classes})")
            if labels.shape != (B, cfg.n_classes):
                raise ValueError(f"expected labels (batch, n_classes) = {(B, cfg.n_classes)}, got "
                                 f"{tuple(labels.shape)}")

        ids_keep, ids_restore, mask = random_masking(B, n_patches, cfg.mask_ratio, mel.device, noise=noise)
        latent, _ = self.encoder.forward_features(mel, ids_keep=ids_keep)  # (B, [1 +] L, D)
        terms: dict[str, tuple[float, torch.Tensor]] = {}
        if cfg.uses_decoder:
            decoded = self.forward_decoder(latent, ids_restore)  # (B, N, Dd)
        if self.recon_head is not None:
            terms["recon"] = cfg.recon_weight, self.reconstruction_loss(mel, self.recon_head(decoded), mask)
        if cfg.uses_teacher:
            target = F.layer_norm(teacher.float(), teacher.shape[-1:])  # (B, N, teacher_dim), per position
            for name, head, weight, where in (("distill_visible", self.visible_head, cfg.distill_visible_weight,
                                               1.0 - mask),
                                              ("distill_masked", self.masked_head, cfg.distill_masked_weight, mask)):
                if head is not None:
                    terms[name] = weight, _masked_mean((head(decoded) - target).pow(2).mean(-1), where)
        if self.cls_head is not None:
            skip = 1 if self.encoder.cls_token is not None else 0
            pooled = latent[:, 0] if cfg.cls_pooling == "cls" else latent[:, skip:].mean(1)  # (B, D)
            terms["cls"] = cfg.lambda_cls, F.binary_cross_entropy_with_logits(self.cls_head(pooled), labels.float())
        out = {"loss": sum(weight * value for weight, value in terms.values())}
        out.update({name: value.detach() for name, (_, value) in terms.items()})
        return out
