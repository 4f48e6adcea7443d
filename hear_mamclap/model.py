"""The MAM-CLAP audio encoder: a ViT over log-mel patches, from raw 16 kHz audio to per-layer features.

Reads top to bottom: patch helpers and positional embeddings, the transformer block, the config with its
presets, then `MAMCLAPEncoder`, which holds the front end (log-mel + normalisation) and the ViT, so adapters
(HEAR, s3prl) only call it.

Patch order is time-major everywhere (the encoder, the pretraining wrapper, teacher targets): patch
(t, f) of a (P_t, P_f) grid has index t * P_f + f. A shorter input therefore uses the first positions of the
full grid's positional embedding, and its patches are a prefix of a full clip's.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from hear_mamclap.frontend import AUDIOSET_MEAN, AUDIOSET_STD, LogMelFrontend


def patchify(mel: torch.Tensor, patch_size: tuple[int, int]) -> torch.Tensor:
    """(B, T, F) -> (B, P_t * P_f, pt * pf) patches in time-major order, each flattened time-major."""
    B, T, Fr = mel.shape
    pt, pf = patch_size
    x = mel.reshape(B, T // pt, pt, Fr // pf, pf)  # (B, P_t, pt, P_f, pf)
    return x.permute(0, 1, 3, 2, 4).reshape(B, (T // pt) * (Fr // pf), pt * pf)  # (B, N, pt * pf)


def unpatchify(patches: torch.Tensor, patch_size: tuple[int, int], n_freq_patches: int) -> torch.Tensor:
    """Inverse of patchify: (B, P_t * P_f, pt * pf) -> (B, T, F)."""
    B, N, _ = patches.shape
    pt, pf = patch_size
    x = patches.reshape(B, N // n_freq_patches, n_freq_patches, pt, pf)  # (B, P_t, P_f, pt, pf)
    return x.permute(0, 1, 3, 2, 4).reshape(B, (N // n_freq_patches) * pt, n_freq_patches * pf)  # (B, T, F)


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sin-cos embeddings (MAE): half the channels encode time, half frequency. (P_t * P_f, dim)."""
    if dim % 4:
        raise ValueError(f"sin-cos 2-D positional embeddings need a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (dim / 4,)

    def one_axis(positions: torch.Tensor) -> torch.Tensor:
        angles = positions[:, None] * omega[None]  # (n, dim / 4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (n, dim / 2)

    t, f = torch.meshgrid(torch.arange(grid[0], dtype=torch.float64), torch.arange(grid[1], dtype=torch.float64),
                          indexing="ij")  # each (P_t, P_f)
    return torch.cat([one_axis(t.flatten()), one_axis(f.flatten())], dim=1).float()  # (P_t * P_f, dim)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, L, Dh)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, L, Dh)
        return self.proj(x.transpose(1, 2).reshape(B, L, D))  # (B, L, D)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.mlp(self.norm2(x))


def init_weights(module: nn.Module) -> None:
    """MAE initialisation: xavier-uniform linears with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@dataclass(frozen=True)
class EncoderConfig:
    # front end (Kaldi fbank, see frontend.py) and normalisation
    sample_rate: int = 16000               # Hz; resample other audio before the encoder
    n_mels: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    norm_mean: float = AUDIOSET_MEAN       # log-mel statistics: x -> (x - mean) / (2 * std)
    norm_std: float = AUDIOSET_STD
    # patches
    target_frames: int = 1024              # pretraining length (10.24 s); longer inputs are chunked at runtime
    patch_size: tuple[int, int] = (16, 16)  # (time frames, mel bins)
    # transformer (ViT-B/16 by default)
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    cls_token: bool = True                 # prepend a learned CLS token (pretraining may pool it)
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        pt, pf = self.patch_size
        if self.target_frames % pt or self.n_mels % pf:
            raise ValueError(f"patch size {self.patch_size} must divide (target_frames, n_mels) = "
                             f"({self.target_frames}, {self.n_mels})")
        if self.width % self.heads or self.width % 4:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads} and by 4")

    @property
    def grid(self) -> tuple[int, int]:
        """(time patches, frequency patches) of a target_frames input: (64, 8) for the defaults."""
        return self.target_frames // self.patch_size[0], self.n_mels // self.patch_size[1]

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def patch_times(self, n_time_patches: int) -> torch.Tensor:
        """Centre time in seconds of each of the first n_time_patches time patches: the middle of the span
        from its first frame's window start to its last frame's window end (0.0875 s + 0.16 s * i by default).
        Teachers align their features to the patch grid with it; HEAR timestamps come from it."""
        hop = int(self.sample_rate * self.frame_shift_ms / 1000)  # as LogMelFrontend computes them
        window = int(self.sample_rate * self.frame_length_ms / 1000)
        first = torch.arange(n_time_patches, dtype=torch.float64) * self.patch_size[0] * hop  # first sample
        end = first + (self.patch_size[0] - 1) * hop + window  # one past the last sample of its last window
        return (first + end) / 2 / self.sample_rate

    @classmethod
    def preset(cls, name: str, **overrides) -> EncoderConfig:
        """Named sizes: tiny (tests), small (ViT-S), base (ViT-B/16); keyword overrides on top."""
        if name not in ENCODER_PRESETS:
            raise ValueError(f"unknown encoder preset {name!r}; expected one of {sorted(ENCODER_PRESETS)}")
        return replace(ENCODER_PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown encoder config keys {sorted(unknown)}")
        d = dict(d)
        if "patch_size" in d:
            d["patch_size"] = tuple(d["patch_size"])  # JSON gives a list
        return cls(**d)


ENCODER_PRESETS = {
    "tiny": EncoderConfig(n_mels=64, target_frames=128, width=64, depth=3, heads=4),  # 8 x 4 grid
    "small": EncoderConfig(width=384, depth=12, heads=6),
    "base": EncoderConfig(width=768, depth=12, heads=12),
}


@dataclass
class EncoderOutput:
    """Runtime features; P = time patches of the longest clip, D' = feature_dim(freq_reduce)."""
    frames: torch.Tensor         # (B, P, D') final-layer features per time patch, zero past each clip's end
    clip: torch.Tensor           # (B, D') mean of each clip's valid frames
    n_frames: torch.Tensor       # (B,) valid time patches per clip
    hidden_states: list[torch.Tensor] = field(default_factory=list)  # depth + 1 of (B, P, D') when asked


class MAMCLAPEncoder(nn.Module):
    """Front end + ViT. `forward_features` works on normalised log-mel patches (pretraining);
    `forward` goes from raw audio (B, N) to frame- and clip-level features of any length (runtime)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.frontend = LogMelFrontend(sample_rate=cfg.sample_rate, n_mels=cfg.n_mels,
                                       frame_length_ms=cfg.frame_length_ms, frame_shift_ms=cfg.frame_shift_ms,
                                       mean=cfg.norm_mean, std=cfg.norm_std)
        pt, pf = cfg.patch_size
        self.patch_embed = nn.Linear(pt * pf, cfg.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width)) if cfg.cls_token else None
        # Fixed, derived from the config, so not saved: (P_t * P_f, width) for the full grid.
        self.register_buffer("pos_embed", sincos_pos_embed_2d(cfg.width, cfg.grid), persistent=False)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.norm_eps) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.apply(init_weights)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    # ---- pretraining interface: normalised log-mel in, tokens out ----

    def forward_features(self, mel: torch.Tensor, ids_keep: torch.Tensor | None = None,
                         valid: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Normalised log-mel (B, T, n_mels), T a multiple of the patch time <= target_frames ->
        (final tokens after the last norm (B, [1 +] L, D), hidden states: depth + 1 of (B, [1 +] L, D),
        the block input then each block's output). CLS, when configured, is token 0.

        ids_keep (B, L): indices of the patches to encode (MAE masking); L = all patches when None.
        valid (B, N) bool over all patches: False marks padding, which no token attends to.
        """
        B, T, n_mels = mel.shape
        pt, _ = self.cfg.patch_size
        if n_mels != self.cfg.n_mels or T % pt or not 0 < T <= self.cfg.target_frames:
            raise ValueError(f"expected log-mel (batch, frames, {self.cfg.n_mels}) with frames a multiple of {pt} "
                             f"up to {self.cfg.target_frames}, got {tuple(mel.shape)}")
        patches = patchify(mel, self.cfg.patch_size)  # (B, N, pt * pf)
        pos = self.pos_embed[: patches.shape[1]]  # (N, D) time-major: a shorter input takes the first positions
        if ids_keep is not None:  # embed only the kept patches: masked ones never reach the encoder
            patches = torch.gather(patches, 1, ids_keep[..., None].expand(-1, -1, patches.shape[2]))  # (B, L, pt * pf)
            pos = pos[ids_keep]  # (B, L, D)
            if valid is not None:
                valid = torch.gather(valid, 1, ids_keep)  # (B, L)
        x = self.patch_embed(patches) + pos  # (B, L, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # (B, 1 + L, D); CLS has no position
            if valid is not None:
                valid = torch.cat([valid.new_ones(B, 1), valid], dim=1)
        attn_mask = None if valid is None else valid[:, None, None, :]  # (B, 1, 1, keys): True = attend
        hidden = [x]
        for block in self.blocks:
            x = block(x, attn_mask)
            hidden.append(x)
        return self.norm(x), hidden

    # ---- runtime interface: raw audio in, features out ----

    def mel(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N) audio, optional valid sample counts (B,) -> normalised log-mel (B, T, n_mels) and the valid
        frame counts (B,) (Kaldi's count for each clip's own length)."""
        mel = self.frontend(audio)  # (B, T, n_mels)
        B, T, _ = mel.shape
        if lengths is None:
            return mel, torch.full((B,), T, dtype=torch.long, device=mel.device)
        lengths = torch.as_tensor(lengths, device=mel.device)
        if lengths.shape != (B,) or (lengths > audio.shape[1]).any() or (lengths < self.frontend.window_length).any():
            raise ValueError(f"expected lengths (batch,) between {self.frontend.window_length} and {audio.shape[1]} "
                             f"samples, got {lengths.tolist()}")
        return mel, (lengths - self.frontend.window_length) // self.frontend.hop_length + 1  # Kaldi snip_edges

    def feature_dim(self, freq_reduce: Literal["concat", "mean"] = "concat") -> int:
        """Size of a frame (and clip) feature: width x frequency patches for concat, width for mean."""
        return self.cfg.width * (self.cfg.grid[1] if freq_reduce == "concat" else 1)

    def frame_times(self, n_frames: int) -> torch.Tensor:
        """Centre time in seconds of each of the first n_frames runtime frames (time patches)."""
        return self.cfg.patch_times(n_frames)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None,
                freq_reduce: Literal["concat", "mean"] = "concat", hidden_states: bool = False) -> EncoderOutput:
        """Raw audio (B, N) at cfg.sample_rate -> EncoderOutput. See encode_mel."""
        return self.encode_mel(*self.mel(audio, lengths), freq_reduce=freq_reduce, hidden_states=hidden_states)

    def encode_mel(self, mel: torch.Tensor, n_frames: torch.Tensor, freq_reduce: Literal["concat", "mean"] = "concat",
                   hidden_states: bool = False) -> EncoderOutput:
        """Normalised log-mel of any length (B, T, n_mels) and valid frames (B,) -> EncoderOutput.

        The log-mel is zero-padded to a whole number of time patches and cut into consecutive chunks of
        target_frames that do NOT overlap (the last may be shorter), each encoded on its own, as in M2D; a
        clip's features therefore equal those of encoding each of its chunks directly. Within a batch, patches
        past a clip's end are masked from attention, so a clip gets the same features alone as beside longer
        clips. A frame feature is one time patch: its frequency patches' tokens concatenated in frequency
        order (freq_reduce="concat", width x P_f values, keeps spectral layout; M2D's choice) or averaged
        ("mean", width). The CLS token is not returned; the clip feature is the mean of the valid frames.
        """
        if freq_reduce not in ("concat", "mean"):
            raise ValueError(f"freq_reduce must be 'concat' or 'mean', got {freq_reduce!r}")
        pt, _ = self.cfg.patch_size
        chunk_patches, n_freq = self.cfg.grid
        B, T, _ = mel.shape
        n_patches = math.ceil(T / pt)
        # Frames past each clip's end become 0 (the dataset mean), as the patch padding of a clip alone.
        mel = mel * (torch.arange(T, device=mel.device)[None] < n_frames[:, None])[..., None]  # (B, T, n_mels)
        mel = F.pad(mel, (0, 0, 0, n_patches * pt - T))  # (B, n_patches * pt, n_mels)
        valid_patches = torch.div(n_frames + pt - 1, pt, rounding_mode="floor")  # (B,) ceil(n_frames / pt)
        skip_cls = 1 if self.cls_token is not None else 0

        def to_frames(tokens: torch.Tensor, n: int) -> torch.Tensor:  # (B, [1 +] n * P_f, D) -> (B, n, D')
            x = tokens[:, skip_cls:].reshape(B, n, n_freq, -1)  # (B, n, P_f, D)
            return x.flatten(2) if freq_reduce == "concat" else x.mean(2)

        final, hidden = [], []
        for start in range(0, n_patches, chunk_patches):
            n = min(chunk_patches, n_patches - start)
            in_chunk = (valid_patches - start).clamp(0, n)  # (B,) valid time patches in this chunk
            valid_t = torch.arange(n, device=mel.device)[None] < in_chunk[:, None]  # (B, n)
            valid_t |= (in_chunk == 0)[:, None]  # a clip already over attends everywhere (no NaN); output dropped
            valid = None if valid_t.all() else valid_t.repeat_interleave(n_freq, dim=1)  # (B, n * P_f) time-major
            tokens, states = self.forward_features(mel[:, start * pt:(start + n) * pt], valid=valid)
            final.append(to_frames(tokens, n))
            if hidden_states:
                hidden.append([to_frames(h, n) for h in states])
        keep = (torch.arange(n_patches, device=mel.device)[None] < valid_patches[:, None])[..., None]  # (B, P, 1)
        frames = torch.cat(final, dim=1) * keep  # (B, P, D')
        clip = frames.sum(1) / valid_patches.clamp_min(1)[:, None].to(frames.dtype)  # (B, D')
        layers = [torch.cat(per_layer, dim=1) * keep for per_layer in zip(*hidden)]  # depth + 1 of (B, P, D')
        return EncoderOutput(frames=frames, clip=clip, n_frames=valid_patches, hidden_states=layers)
