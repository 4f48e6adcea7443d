"""Frozen CLAP teachers for MAM-CLAP distillation, with features aligned to the student's patch grid.

    teacher = load_teacher("630k-audioset-best.pt", encoder=EncoderConfig(), cfg=TeacherConfig())
    targets = teacher(wav_16k)          # (B, N) at 16 kHz -> (B, n_time * n_freq, teacher.dim), time-major

`Teacher` is the interface (a frozen, eval-mode, no-grad nn.Module with `dim` and `sample_rate`);
`LaionClapTeacher` implements it with laion-clap's HTS-AT audio branch loaded from a LAION checkpoint, and
`save_laion_checkpoint` writes that layout, so a CLAP teacher trained here loads the same way. The loader
itself (HTS-AT built offline, the checkpoint read and checked, the windows in time) is
hear_mamclap.baselines.laion's, shared with the teacher's HEAR module (hear_mamclap.baselines.clap).

Checkpoint layout (LAION's training/main.py, e.g. 630k-audioset-best.pt): {"epoch", "name", "state_dict",
"optimizer"}, the state dict from a DDP-wrapped CLAP model: "module.audio_branch.*" (HTS-AT),
"module.audio_projection.{0,2}.*" (768/1024 -> 512 -> 512 MLP), "module.audio_transform.*",
"module.text_branch.*" (RoBERTa), "module.text_transform.*", "module.text_projection.*",
"module.logit_scale_a", "module.logit_scale_t". A bare state dict, with or without "module.", also loads.
Only audio_branch (and audio_projection when projection=True) is read, strictly: every missing, unexpected
or mis-shaped key is listed in the error. The HTS-AT size comes from the checkpoint's patch-embedding width
(96 tiny: 630k-audioset-best.pt; 128 base: music_speech_audioset_epoch_15_esc_89.98.pt and the other
music/speech checkpoints). Feature-fusion checkpoints are refused.

Geometry. HTS-AT takes 10 s at 48 kHz (1001 centred STFT frames, hop 10 ms), stretches them bicubically to
1024 frames, folds them into a 256x256 image (4 time chunks of 256 frames stacked along frequency) and ends
in a token map of 2 frequency bands x 32 time steps per window (one step = 1024/32 stretched frames,
0.3128 s). Its frame-level output ("fine_grained_embedding") is that map averaged over the bands, each step
repeated 32 times. Audio is resampled 16 -> 48 kHz here; any length is cut into 10 s windows: a clip up to
10.5 s takes one window (zero-padded when shorter, centred when a little longer: the student's 1024-frame
10.255 s clip costs one window, not two), a longer one ceil(d / 10) windows spread evenly from its start to
its end (overlapping, never padded). Short clips are zero-padded rather than repeated because the student sees the
same zeros; repeating would put real sound where the student has none.

Alignment (TeacherConfig.align), both through true times in seconds: each student time patch t has the
centre time EncoderConfig.patch_times gives (Kaldi frames, snip_edges: 0.0875 s + 0.16 s * t), and each
teacher step s of a window starting at a has the centre a + step_times[s]. A patch reads the window whose
centre is nearest, and interpolates linearly between the two teacher steps around its time (clamped at the
window's edges). So targets line up for any clip length, and padding sits where the student's padding is.
    time_interp    features="frames": the frame sequence interpolated in time, the same vector shared by all
                   frequency patches of a time patch. features="tokenmap": each band interpolated in time,
                   and each frequency patch takes the band nearest to its centre frequency.
    grid_resample  features="tokenmap" only: the 2-D token map resampled bilinearly to (n_time, n_freq), the
                   frequency axis mapped through real frequencies: each student frequency patch's centre
                   (centroid of its Kaldi mel filters, Hz) is placed on the teacher's Slaney mel axis
                   between the two bands' centres (clamped outside them).
Output order is time-major, as hear_mamclap.model's patches: patch (t, f) at index t * n_freq + f.
projection=True applies LAION's audio projection (trained on the pooled clip embedding) to every step,
giving 512-d targets; projection=False keeps the raw 768-d (tiny) / 1024-d (base) HTS-AT features.

Online forward or cache. On a GPU the teacher forward costs about as much as the student's step
(results/perf.md), and the loader gives each item the same waveform every epoch (a crop fixed by its index,
no augmentation), so the targets repeat: training/pretrain/feature_cache.py computes them once per clip
(forward_bands, aligned to that crop's patch grid, G bands per time patch: 64 x 768 bf16 per clip for
features="frames"), keyed on the data, the crop code, the geometry and the checkpoint's hash, and
`pretrain --cache` reads them instead of running the teacher. Any waveform change (the kit's gain, speed,
pitch, reverb, noise and mixing augmentations, other crops) changes the targets non-linearly (a mix's
targets are not the mix of the targets), so once augmentation runs online the online teacher, on exactly
the batch the student sees, is the one that stays right: it remains the default.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torchaudio.functional as AF

from hear_mamclap.baselines.laion import (HTSAT_BY_WIDTH, WINDOW_OVERHANG_S, WindowGeometry,  # noqa: F401
                                          build_clap_audio, linear_weights, load_strict, plan_windows,
                                          read_clap_audio, read_laion_state_dict, time_weights)
from hear_mamclap.frontend import LogMelFrontend
from hear_mamclap.model import EncoderConfig
from training.pretrain.checkpointing import save_atomic


@dataclass(frozen=True)
class TeacherConfig:
    features: Literal["frames", "tokenmap"] = "frames"      # frame-level output, or the last 2-D token map
    align: Literal["time_interp", "grid_resample"] = "time_interp"
    projection: bool = False                                # LAION's 512-d audio projection on each step

    def __post_init__(self) -> None:
        if self.features not in ("frames", "tokenmap"):
            raise ValueError(f"expected features 'frames' or 'tokenmap', got {self.features!r}")
        if self.align not in ("time_interp", "grid_resample"):
            raise ValueError(f"expected align 'time_interp' or 'grid_resample', got {self.align!r}")
        if self.align == "grid_resample" and self.features != "tokenmap":
            raise ValueError("align='grid_resample' resamples the 2-D token map: it needs features='tokenmap' "
                             "(the frame-level output has no frequency axis)")


# ---- alignment helpers (pure functions of times and frequencies; plan_windows, linear_weights and
# time_weights live with the loader in hear_mamclap.baselines.laion, which the teacher's HEAR module shares) ----


def nearest_weights(query: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """(Q,) positions, (K,) knots -> (Q, K) one-hot weights of the nearest knot."""
    nearest = (query[:, None] - knots[None]).abs().argmin(dim=1)
    return torch.nn.functional.one_hot(nearest, len(knots)).to(query.dtype)




def slaney_mel(hz: torch.Tensor) -> torch.Tensor:
    """Slaney's mel scale (librosa's default, which laion-clap's filters use): linear to 1 kHz, then log."""
    log_step = math.log(6.4) / 27.0
    return torch.where(hz < 1000.0, hz * 3.0 / 200.0, 15.0 + torch.log(hz.clamp_min(1e-3) / 1000.0) / log_step)


def band_centres_hz(filters: torch.Tensor, fft_hz: torch.Tensor, n_bands: int) -> torch.Tensor:
    """(n_mels, n_bins) filters, (n_bins,) bin frequencies -> (n_bands,) centroid (Hz) of each group of
    n_mels / n_bands consecutive filters."""
    grouped = filters.double().reshape(n_bands, -1, filters.shape[1]).sum(dim=1)  # (n_bands, n_bins)
    return (grouped * fft_hz.double()).sum(dim=1) / grouped.sum(dim=1)


def student_patch_times(encoder: EncoderConfig, n_samples: int) -> torch.Tensor:
    """Centre times (s) of the time patches the student makes of n_samples samples."""
    n_time = encoder.num_frames(n_samples) // encoder.patch_size[0]
    if n_time == 0:
        need = encoder.samples_for(encoder.patch_size[0])
        raise ValueError(f"expected at least {need} samples (one patch of {encoder.patch_size[0]} frames at "
                         f"{encoder.sample_rate} Hz), got {n_samples}")
    return encoder.patch_times(n_time)


def student_band_hz(encoder: EncoderConfig) -> torch.Tensor:
    """Centre frequency (Hz) of each student frequency patch, from the front end's own mel filters."""
    frontend = LogMelFrontend(sample_rate=encoder.sample_rate, n_mels=encoder.n_mels,
                              frame_length_ms=encoder.frame_length_ms, frame_shift_ms=encoder.frame_shift_ms)
    fft_hz = torch.arange(frontend.mel_banks.shape[1]) * encoder.sample_rate / frontend.n_fft
    return band_centres_hz(frontend.mel_banks, fft_hz, encoder.grid[1])


def expand_bands(bands: torch.Tensor, freq_weights: torch.Tensor) -> torch.Tensor:
    """(B, n_time, G, dim) teacher features per time patch and band, (n_freq, G) weights -> (B, n_time *
    n_freq, dim), time-major: each student frequency patch mixes the G bands (G = 1: features="frames")."""
    fw = freq_weights.to(bands.device, bands.dtype)  # (n_freq, G)
    if fw.shape[1] == 1:  # one frame vector shared by every frequency patch: a copy, not a product
        out = bands.expand(-1, -1, fw.shape[0], -1)  # (B, T, n_freq, D)
    else:
        out = torch.einsum("fg,btgd->btfd", fw, bands)  # (B, T, n_freq, D)
    return out.flatten(1, 2)  # time-major: patch (t, f) at t * n_freq + f


# ---- the interface ----


class Teacher(nn.Module):
    """Frozen feature teacher: (B, N) audio at `sample_rate` -> (B, n_time * n_freq, dim) targets on the
    student's patch grid (time-major). Always in eval mode, without gradients."""

    sample_rate: int = 16000
    dim: int

    def __init__(self, encoder: EncoderConfig) -> None:
        super().__init__()
        if encoder.sample_rate != self.sample_rate:
            raise ValueError(f"expected a {self.sample_rate} Hz student, got encoder.sample_rate="
                             f"{encoder.sample_rate}")
        self.encoder = encoder

    def freeze(self) -> Teacher:
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> Teacher:
        """A teacher stays in eval mode (no dropout, BatchNorm statistics fixed), whatever its owner does."""
        return super().train(False)

    def _check_audio(self, wav: torch.Tensor) -> None:
        if wav.ndim != 2 or not wav.is_floating_point():
            raise ValueError(f"expected float audio (batch, samples) at {self.sample_rate} Hz, got "
                             f"{wav.dtype} {tuple(wav.shape)}")


class LaionClapTeacher(Teacher):
    """LAION-CLAP's HTS-AT audio branch (laion-clap 1.1.7 code, built offline), features aligned to the
    student's grid as the module docstring describes. Build it with `load_teacher`."""

    def __init__(self, encoder: EncoderConfig, cfg: TeacherConfig, model: str = "HTSAT-tiny",
                 joint_dim: int = 512) -> None:
        super().__init__(encoder)
        self.cfg = cfg
        self.model_name = model
        self.audio_branch, self.audio_projection, audio_cfg = build_clap_audio(
            model, joint_dim if cfg.projection else None)
        branch = self.audio_branch
        self.dim = joint_dim if cfg.projection else branch.num_features  # 512, or 768 (tiny) / 1024 (base)

        # Window geometry (see the module docstring): 48 kHz, 10 s, 32 steps of 32 stretched frames.
        # Geometry tensors are plain float64 attributes, not buffers, so .to(dtype) never rounds them.
        geometry = WindowGeometry.of(branch, audio_cfg)
        self.teacher_rate, self.window_samples, self.window_s = geometry.rate, geometry.samples, geometry.seconds
        self.n_steps, self.n_bands = geometry.n_steps, geometry.n_bands
        self.step_times = geometry.step_times  # (S,) s

        # Frequency geometry: teacher band and student patch centres on the teacher's Slaney mel axis.
        mel_w = branch.logmel_extractor.melW.detach()  # (n_fft // 2 + 1, mel_bins)
        fft_hz = torch.arange(mel_w.shape[0]) * self.teacher_rate / audio_cfg.window_size
        band_mel = slaney_mel(band_centres_hz(mel_w.T, fft_hz, self.n_bands))  # (G,)
        patch_mel = slaney_mel(student_band_hz(encoder))  # (n_freq,)
        if cfg.features == "frames":
            freq_w = torch.ones(len(patch_mel), 1, dtype=torch.float64)  # one frame vector, shared
        elif cfg.align == "time_interp":
            freq_w = nearest_weights(patch_mel, band_mel)
        else:
            freq_w = linear_weights(patch_mel, band_mel)
        self.freq_weights = freq_w  # (n_freq, G)

        # The token map is the input of HTS-AT's last conv (tscam_conv), after the chunks are regrouped in
        # time: (M, C, bands, steps). A pre-hook hands it over; forward_features does not return it.
        self._token_map: torch.Tensor | None = None
        branch.tscam_conv.register_forward_pre_hook(self._keep_token_map)
        self.freeze()

    def _keep_token_map(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self._token_map = args[0]

    def window_features(self, windows: torch.Tensor) -> torch.Tensor:
        """(M, window_samples) at 48 kHz -> (M, steps, bands, dim); bands is 1 for features="frames"."""
        out = self.audio_branch({"waveform": windows}, device=windows.device)
        token_map, self._token_map = self._token_map, None
        if self.cfg.features == "frames":
            fine = out["fine_grained_embedding"]  # (M, 1024, C), each step repeated
            feats = fine[:, :: fine.shape[1] // self.n_steps, None]  # (M, S, 1, C)
        else:
            feats = token_map.permute(0, 3, 2, 1)  # (M, C, G, S) -> (M, S, G, C)
        if self.audio_projection is not None:
            feats = self.audio_projection(feats)  # per step: (M, S, G, 512)
        return feats

    @torch.no_grad()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, N) audio at 16 kHz -> (B, n_time * n_freq, dim), n_time = the student's time patches for N."""
        return self.expand_bands(self.forward_bands(wav))

    def expand_bands(self, bands: torch.Tensor) -> torch.Tensor:
        """(B, n_time, G, dim) from forward_bands -> (B, n_time * n_freq, dim); see expand_bands."""
        return expand_bands(bands, self.freq_weights)

    @torch.no_grad()
    def forward_bands(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, N) audio at 16 kHz -> (B, n_time, G, dim): features aligned to the student's time patches,
        before the frequency patches are filled. The compact form a cache stores (G rows per time patch
        instead of n_freq)."""
        self._check_audio(wav)
        B, N = wav.shape
        device = self.audio_branch.patch_embed.proj.weight.device
        patch_times = student_patch_times(self.encoder, N).to(device)  # (T,)
        x = AF.resample(wav.to(device, torch.float32), self.sample_rate, self.teacher_rate)  # (B, 3N)
        offsets = [round(s * self.teacher_rate) for s in plan_windows(N / self.sample_rate, self.window_s)]
        x = nn.functional.pad(x, (0, max(0, offsets[-1] + self.window_samples - x.shape[1])))  # pad short clips
        windows = torch.stack([x[:, o:o + self.window_samples] for o in offsets], dim=1)  # (B, W, 480000)
        dtype = self.audio_branch.patch_embed.proj.weight.dtype  # resampling stays in float32 either way
        feats = self.window_features(windows.flatten(0, 1).to(dtype))  # (B * W, S, G, D)
        feats = feats.reshape(B, len(offsets) * self.n_steps, *feats.shape[2:])  # (B, W * S, G, D)
        starts = torch.tensor(offsets, dtype=torch.float64, device=device) / self.teacher_rate
        tw = time_weights(patch_times, starts, self.step_times.to(device), self.window_s)  # (T, W * S)
        return torch.einsum("ts,bsgd->btgd", tw.to(feats.dtype), feats)  # (B, T, G, D)


# ---- LAION checkpoints (read and checked by hear_mamclap.baselines.laion.read_clap_audio) ----


def init_laion_checkpoint(path: str | Path, model: str = "HTSAT-tiny", seed: int = 0) -> Path:
    """A CLAP checkpoint in LAION's layout whose audio branch and projection are randomly initialised (seeded):
    a stand-in teacher for benchmarks and tests, costing what a trained one costs per step. `mamclap teacher
    init` writes one."""
    torch.manual_seed(seed)
    teacher = LaionClapTeacher(EncoderConfig.preset("tiny"), TeacherConfig(projection=True), model=model)
    state = {f"audio_branch.{k}": v for k, v in teacher.audio_branch.state_dict().items()}
    state.update({f"audio_projection.{k}": v for k, v in teacher.audio_projection.state_dict().items()})
    save_laion_checkpoint(path, state, name=f"mamclap-random-{model}-seed{seed}")
    return Path(path)


def load_teacher(path: str | Path, encoder: EncoderConfig, cfg: TeacherConfig = TeacherConfig(),
                 device: str | torch.device = "cpu") -> LaionClapTeacher:
    """A frozen LaionClapTeacher from a LAION-layout checkpoint (HTS-AT size read from the checkpoint)."""
    model, audio, projection = read_clap_audio(path)
    if cfg.projection and "0.weight" not in projection:
        raise ValueError(f"{path}: projection=True needs audio_projection.* weights, which this checkpoint lacks")
    joint_dim = projection["0.weight"].shape[0] if projection else 512
    teacher = LaionClapTeacher(encoder, cfg, model=model, joint_dim=joint_dim)
    load_strict(teacher.audio_branch, audio, f"{path}: audio_branch vs laion-clap {model}")
    if teacher.audio_projection is not None:
        load_strict(teacher.audio_projection, projection, f"{path}: audio_projection vs the CLAP projection")
    return teacher.freeze().to(device)


def save_laion_checkpoint(path: str | Path, state_dict: Mapping[str, torch.Tensor], epoch: int = 0,
                          name: str = "mamclap-clap", optimizer: dict | None = None) -> None:
    """Write a CLAP model's state dict (CLAP.state_dict() key names: audio_branch.*, audio_projection.*,
    text_branch.*, logit_scale_a, ...) in LAION's checkpoint layout, atomically; load_teacher reads it."""
    for prefix in ("audio_branch.", "audio_projection."):
        if not any(k.startswith(prefix) for k in state_dict):
            raise ValueError(f"expected a CLAP state dict with {prefix}* keys (LAION's layout); got names like "
                             f"{sorted(state_dict)[:6]}")
    ckpt = {"epoch": int(epoch), "name": name,
            "state_dict": {"module." + k.removeprefix("module."): v.detach().cpu() for k, v in state_dict.items()}}
    if optimizer is not None:
        ckpt["optimizer"] = optimizer
    save_atomic(ckpt, path)
