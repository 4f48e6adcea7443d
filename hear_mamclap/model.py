"""The MAM-CLAP audio encoder: a ViT over log-mel patches, from raw 16 kHz audio to per-layer features.

Reads top to bottom: patch helpers and positional embeddings, the transformer block, the config with its
presets and frame geometry, the runtime outputs and helpers (audio check, time interpolation), then
`MAMCLAPEncoder`, which holds the front end (log-mel + normalisation) and the ViT. Its `embed` does the
windowing, padding masks, layer choice and time interpolation once, so the adapters (HEAR, s3prl) are thin.

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

from hear_mamclap.frontend import AUDIOSET_MEAN, AUDIOSET_STD, SAMPLE_RATE, LogMelFrontend, ms_to_samples, num_frames


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


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: in training, zero a residual branch for a random share `rate` of the clips of the
    batch and scale the others by 1 / (1 - rate), so the expected output is unchanged."""
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *(1,) * (x.ndim - 1)).bernoulli_(1.0 - rate)  # (B, 1, 1)
    return x * keep / (1.0 - rate)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)); each branch under drop_path
    (0 unless fine-tuning sets it, see MAMCLAPEncoder.set_drop_path)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = 0.0

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x), attn_mask), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


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
    sample_rate: int = SAMPLE_RATE         # Hz; resample other audio before the encoder
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
    # positions: "sincos" is derived from the grid and never saved; "stored" is carried in the weights
    # (encoders converted from AudioMAE/timm, whose position tables follow other conventions; hear_mamclap.convert)
    pos_embed: Literal["sincos", "stored"] = "sincos"

    def __post_init__(self) -> None:
        pt, pf = self.patch_size
        if self.target_frames % pt or self.n_mels % pf:
            raise ValueError(f"patch size {self.patch_size} must divide (target_frames, n_mels) = "
                             f"({self.target_frames}, {self.n_mels})")
        if self.width % self.heads or self.width % 4:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads} and by 4")
        if self.pos_embed not in ("sincos", "stored"):
            raise ValueError(f"pos_embed must be 'sincos' or 'stored', got {self.pos_embed!r}")

    @property
    def grid(self) -> tuple[int, int]:
        """(time patches, frequency patches) of a target_frames input: (64, 8) for the defaults."""
        return self.target_frames // self.patch_size[0], self.n_mels // self.patch_size[1]

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    # frame geometry in samples, as LogMelFrontend computes it

    @property
    def hop_samples(self) -> int:
        """Samples between the starts of two analysis frames: 160 by default (10 ms)."""
        return ms_to_samples(self.sample_rate, self.frame_shift_ms)

    @property
    def window_samples(self) -> int:
        """Samples one analysis frame reads: 400 by default (25 ms); shorter audio gives no frame."""
        return ms_to_samples(self.sample_rate, self.frame_length_ms)

    def samples_for(self, n_frames: int) -> int:
        """Fewest samples that give n_frames analysis frames: window + hop * (n_frames - 1)."""
        return self.window_samples + self.hop_samples * (n_frames - 1)

    def num_frames(self, n_samples: int) -> int:
        """Analysis frames in n_samples samples (Kaldi's snip_edges count; 0 below one window)."""
        return num_frames(n_samples, self.window_samples, self.hop_samples)

    def patch_times(self, n_time_patches: int) -> torch.Tensor:
        """Centre time in seconds of each of the first n_time_patches time patches: the middle of the span
        from its first frame's window start to its last frame's window end (0.0875 s + 0.16 s * i by default).
        Teachers align their features to the patch grid with it; HEAR timestamps come from it."""
        pt = self.patch_size[0]
        first = torch.arange(n_time_patches, dtype=torch.float64) * pt * self.hop_samples  # first sample
        end = first + self.samples_for(pt)  # one past the last sample of its last window
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


@dataclass
class Embeddings:
    """What embed() gives. T = time patches of the longest clip, or the output steps when a hop is given."""
    features: torch.Tensor       # (B, T, D) the chosen layers; per patch zero past a clip's end, at a hop its last held
    timestamps_ms: torch.Tensor  # (T,) centre of each patch or step in ms, float64 on the CPU
    n_patches: torch.Tensor      # (B,) valid time patches per clip
    hidden_states: list[torch.Tensor] = field(default_factory=list)  # depth + 1 of (B, T, D') when asked


# Larger samples overflow float32 in the front end: a frame's power spectrum sums (512 * peak)^2 over 257
# bins, above float32's 3.4e38 from a peak of about 2e15. Audio is [-1, 1]; int16-scaled floats still pass.
MAX_PEAK = 1e12


def check_audio(audio, min_samples: int = 1, *, as_list: bool = False, sample_rate: int = SAMPLE_RATE) -> None:
    """A ValueError saying what was expected unless audio is finite floating-point sound, each at least
    min_samples long: a (n_sounds, n_samples) tensor (the HEAR API) or, with as_list, a non-empty list of 1-D
    (n_samples,) tensors (s3prl). Adapters call it first, before any conversion hides a wrong dtype or shape."""
    if not as_list:
        _check_waveforms(audio, 2, min_samples, sample_rate, "")
        return
    if not isinstance(audio, (list, tuple)):
        raise ValueError(f"expected a list of 1-D waveform tensors at {sample_rate} Hz, got {type(audio).__name__}")
    if len(audio) == 0:
        raise ValueError("expected at least one sound, got an empty list")
    for i, wav in enumerate(audio):
        _check_waveforms(wav, 1, min_samples, sample_rate, f"wavs[{i}]: ")


def _check_waveforms(x, rank: int, min_samples: int, sample_rate: int, where: str) -> None:
    what = "a 1-D waveform (n_samples,)" if rank == 1 else "audio of rank 2 (n_sounds, n_samples)"
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{where}expected a torch.Tensor holding {what}, got {type(x).__name__}")
    if x.ndim != rank:
        mono = "; mix the channels down to mono first" if x.ndim == rank + 1 else ""
        raise ValueError(f"{where}expected {what} at {sample_rate} Hz, got shape {tuple(x.shape)}{mono}")
    if not x.is_floating_point():
        raise ValueError(f"{where}expected floating-point samples in [-1, 1], got dtype {x.dtype}")
    if rank == 2 and x.shape[0] == 0:
        raise ValueError("expected at least one sound, got an empty batch")
    need = max(min_samples, 1)
    if x.shape[-1] < need:
        raise ValueError(f"{where}expected at least {need} samples ({1000 * need / sample_rate:g} ms at {sample_rate} "
                         f"Hz), got {x.shape[-1]}" + (" (zero-length audio)" if x.shape[-1] == 0 else ""))
    if not torch.isfinite(x).all():
        raise ValueError(f"{where}audio contains NaN or Inf values")
    peak = float(x.detach().abs().max())
    if peak > MAX_PEAK:
        raise ValueError(f"{where}audio peak {peak:.3g} is far outside [-1, 1]: expected floating-point audio in "
                         f"[-1, 1] (the front end's power spectrum overflows float32 above {MAX_PEAK:g})")


def interpolate_in_time(x: torch.Tensor, centres_ms: torch.Tensor, times_ms: torch.Tensor, n_valid: torch.Tensor,
                        chunk: int = 4096, out_device: str | torch.device | None = None) -> torch.Tensor:
    """(B, P, D) features at patch centres (P,) -> (B, T, D) at times (T,), linear in time. Clip b reads only
    its first n_valid[b] patches and holds the first and last of them beyond their centres, so it does not
    depend on the rest of the batch. The output is allocated once and filled `chunk` steps at a time: the
    temporaries stay (B, chunk, D) however long the clip (one hour at 40 ms is 90,000 steps). out_device
    (e.g. "cpu") holds the output elsewhere than x, chunk by chunk: one hour at 6,144 dims is 2.1 GiB in
    float32, which then never sits in GPU memory."""
    last = (n_valid.cpu() - 1).clamp_min(0)[:, None]  # (B, 1) each clip's last valid patch
    pos = torch.searchsorted(centres_ms, times_ms)[None]  # (1, T) first centre at or after each time
    right = torch.minimum(pos, last)  # (B, T)
    left = torch.minimum((pos - 1).clamp_min(0), last)
    span = (centres_ms[right] - centres_ms[left]).clamp_min(1e-9)
    w = ((times_ms - centres_ms[left]) / span).clamp(0, 1)  # (B, T) float64
    left, right, w = left.to(x.device), right.to(x.device), w.to(x.device, x.dtype)

    def take(idx: torch.Tensor) -> torch.Tensor:  # (B, c) -> (B, c, D)
        return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[2]))

    device = x.device if out_device is None else torch.device(out_device)
    pin = device.type == "cpu" and x.device.type == "cuda"
    out = torch.empty(x.shape[0], len(times_ms), x.shape[2], dtype=x.dtype, device=device, pin_memory=pin)  # (B, T, D)
    for start in range(0, len(times_ms), chunk):
        s = slice(start, start + chunk)
        out[:, s] = torch.lerp(take(left[:, s]), take(right[:, s]), w[:, s, None]).to(device, non_blocking=pin)
    if pin:
        torch.cuda.current_stream(x.device).synchronize()  # the last non-blocking copies have landed
    return out


class MAMCLAPEncoder(nn.Module):
    """Front end + ViT. `forward_features` works on normalised log-mel patches (pretraining); `forward` goes
    from raw audio (B, N) to frame- and clip-level features of any length, and `embed` adds what the HEAR and
    s3prl adapters need on top: layer choice, bounded memory on long audio, a regular time hop (runtime)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.frontend = LogMelFrontend(sample_rate=cfg.sample_rate, n_mels=cfg.n_mels,
                                       frame_length_ms=cfg.frame_length_ms, frame_shift_ms=cfg.frame_shift_ms,
                                       mean=cfg.norm_mean, std=cfg.norm_std)
        pt, pf = cfg.patch_size
        self.patch_embed = nn.Linear(pt * pf, cfg.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width)) if cfg.cls_token else None
        # (P_t * P_f, width) for the full grid, never trained; saved only when the config says "stored".
        self.register_buffer("pos_embed", sincos_pos_embed_2d(cfg.width, cfg.grid),
                             persistent=cfg.pos_embed == "stored")
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.norm_eps) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.apply(init_weights)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth rising linearly from 0 at the first block to `rate` at the last (timm's rule);
        a training-time regulariser for fine-tuning, not part of the config or of exports."""
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {rate}")
        for i, block in enumerate(self.blocks):
            block.drop_path = rate * i / max(1, len(self.blocks) - 1)

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

    # ---- saving and loading in the Hugging Face convention (hear_mamclap.hub) ----

    @classmethod
    def from_pretrained(cls, name_or_path, device="cpu", revision=None) -> MAMCLAPEncoder:
        """A local export / checkpoint, or a Hub repository id (needs huggingface_hub)."""
        from hear_mamclap.hub import from_pretrained

        return from_pretrained(name_or_path, device=device, revision=revision)

    def save_pretrained(self, out_dir, metadata: dict | None = None):
        """The export (encoder.safetensors + encoder.json) and a generated README.md model card."""
        from hear_mamclap.hub import save_pretrained

        return save_pretrained(self, out_dir, metadata=metadata)

    # ---- runtime interface: raw audio in, features out ----

    def mel(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N) audio, optional valid sample counts (B,) -> normalised log-mel (B, T, n_mels) and the valid
        frame counts (B,) (Kaldi's count for each clip's own length)."""
        mel = self.frontend(audio)  # (B, T, n_mels)
        return mel, self.valid_frames(audio, lengths)

    def valid_frames(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Analysis frames (B,) of each clip of a (B, N) batch: N's count for every clip when lengths is None,
        else each clip's own (lengths (B,) valid samples, at least one window each)."""
        (B, N), window = audio.shape, self.cfg.window_samples
        if lengths is None:
            if N < window:
                raise ValueError(f"expected at least {window} samples (one analysis window), got {N}")
            return torch.full((B,), self.cfg.num_frames(N), dtype=torch.long, device=audio.device)
        lengths = torch.as_tensor(lengths, device=audio.device)
        if lengths.shape != (B,) or (lengths > N).any() or (lengths < window).any():
            raise ValueError(f"expected lengths (batch,) between {window} and {N} samples, got {lengths.tolist()}")
        return (lengths - window) // self.cfg.hop_samples + 1  # Kaldi snip_edges

    def feature_dim(self, freq_reduce: Literal["concat", "mean"] = "concat") -> int:
        """Size of a frame (and clip) feature: width x frequency patches for concat, width for mean."""
        return self.cfg.width * (self.cfg.grid[1] if freq_reduce == "concat" else 1)

    def frame_times(self, n_frames: int) -> torch.Tensor:
        """Centre time in seconds of each of the first n_frames runtime frames (time patches)."""
        return self.cfg.patch_times(n_frames)

    def check_embed_options(self, layers: str = "last", last_k: int = 1, freq_reduce: str = "concat",
                            windows_per_forward: int = 8) -> None:
        """A ValueError for any option embed() refuses, so an adapter can refuse its options when built."""
        if layers not in ("last", "mean", "concat"):
            raise ValueError(f"layers must be 'last', 'mean' or 'concat', got {layers!r}")
        if not 1 <= last_k <= self.cfg.depth:
            raise ValueError(f"last_k must be between 1 and the encoder depth {self.cfg.depth}, got {last_k}")
        if freq_reduce not in ("concat", "mean"):
            raise ValueError(f"freq_reduce must be 'concat' or 'mean', got {freq_reduce!r}")
        if not isinstance(windows_per_forward, int) or windows_per_forward < 1:
            raise ValueError(f"windows_per_forward must be an integer >= 1, got {windows_per_forward!r}")

    def embed_dim(self, layers: str = "last", last_k: int = 1, freq_reduce: str = "concat") -> int:
        """Size of an embed() feature: feature_dim(freq_reduce), last_k times that for layers="concat"."""
        return self.feature_dim(freq_reduce) * (last_k if layers == "concat" else 1)

    def embed(self, audio: torch.Tensor, lengths: torch.Tensor | None = None, *,
              layers: Literal["last", "mean", "concat"] = "last", last_k: int = 1,
              freq_reduce: Literal["concat", "mean"] = "concat", hidden_states: bool = False,
              hop_ms: float | None = None, n_steps: int | None = None, windows_per_forward: int = 8,
              out_device: str | torch.device | None = None) -> Embeddings:
        """Raw audio (B, N) at cfg.sample_rate, optional valid samples per clip (B,) -> Embeddings: the one
        runtime path under the HEAR module and the s3prl upstream.

        Features per time patch of the chosen layers: "last" the final, normalised layer; "mean" or "concat"
        the outputs of the last last_k blocks. hidden_states adds every layer (the block input, then each
        block's output). With hop_ms, all of them are interpolated linearly in time between patch centres
        (interpolate_in_time) to n_steps steps centred at (i + 0.5) * hop_ms; by default enough steps to cover
        the longest clip. The audio is read windows_per_forward encoder windows (target_frames frames each)
        at a time, each group with the look-ahead its last frame's window needs, so memory beyond the output
        stays bounded on long audio while the features equal forward()'s on the whole clip: the same for a
        clip alone, beside others (padding masked) and in any grouping. out_device ("cpu") puts the
        interpolated outputs in host memory as they are made, so hours of audio fit a small GPU budget.
        """
        self.check_embed_options(layers, last_k, freq_reduce, windows_per_forward)
        cfg = self.cfg
        n_frames = self.valid_frames(audio, lengths)  # (B,)
        if lengths is not None:
            audio = audio[:, :int(torch.as_tensor(lengths).max())]  # padding past the longest clip is never read
        group = cfg.target_frames * windows_per_forward  # frames per encoder pass
        chosen, hidden, n_patches = [], [], 0
        for first in range(0, int(n_frames.max()), group):
            start = first * cfg.hop_samples
            mel = self.frontend(audio[:, start:start + cfg.samples_for(group)])  # (B, <= group, n_mels)
            out = self.encode_mel(mel, (n_frames - first).clamp(0, mel.shape[1]), freq_reduce=freq_reduce,
                                  hidden_states=hidden_states or layers != "last")
            if layers == "last":
                chosen.append(out.frames)  # (B, p, D')
            else:
                last = out.hidden_states[-last_k:]
                chosen.append(torch.stack(last).mean(0) if layers == "mean" else torch.cat(last, dim=-1))
            hidden.append(out.hidden_states if hidden_states else [])
            n_patches = n_patches + out.n_frames
        features = torch.cat(chosen, dim=1)  # (B, P, D)
        hidden = [torch.cat(layer, dim=1) for layer in zip(*hidden)]  # depth + 1 of (B, P, D')
        centres = 1000.0 * self.frame_times(features.shape[1])  # (P,) ms
        if hop_ms is None:
            return Embeddings(features, centres, n_patches, hidden)
        if n_steps is None:
            n_steps = max(1, math.ceil(1000.0 * audio.shape[1] / cfg.sample_rate / hop_ms))
        times = (torch.arange(n_steps, dtype=torch.float64) + 0.5) * hop_ms  # (T,) ms

        def at_hop(x: torch.Tensor) -> torch.Tensor:  # (B, P, D) -> (B, T, D)
            return interpolate_in_time(x, centres, times, n_patches, out_device=out_device)

        return Embeddings(at_hop(features), times, n_patches, [at_hop(h) for h in hidden])

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
