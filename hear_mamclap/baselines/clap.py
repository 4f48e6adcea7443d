"""The CLAP teacher scored by its own frozen features, as a HEAR 2021 module:

    python -m heareval.embeddings.runner hear_mamclap.baselines.clap --model clap.pt [--model-options '{"scene": "embedding"}']

`clap.pt` is a LAION-layout CLAP checkpoint (LAION's own, e.g. 630k-audioset-best.pt, one from `mamclap teacher
train`, or a random one from `mamclap teacher init`), read by the teacher's loader (hear_mamclap.baselines.laion):
laion-clap's HTS-AT audio branch and CLAP's audio projection. Needs laion-clap 1.1.7 and the `clap` extra.

Input. 16 kHz audio is resampled to the teacher's 48 kHz (torchaudio, as the teacher does) and cut into 10 s
windows as the teacher cuts them (plan_windows: one window up to 10.5 s, centred when longer than 10 s; a longer
clip ceil(d / 10) overlapping windows from its start to its end, never padded). A clip shorter than a window is
filled as LAION's own inference fills it (option fill "repeat", the default: laion_clap's "repeatpad", the clip
tiled a whole number of times, then zeros), or with zeros ("zeros": the teacher's distillation input).

Scene embeddings (option scene):
    "projection" (default)  LAION's audio embedding, what laion_clap's CLAP_Module.get_audio_embedding_from_data
                            returns: HTS-AT's pooled embedding through CLAP's audio projection, L2-normalised
                            (512-d). It is the teacher's clip-level output and what third-party benchmarks score
                            as LAION-CLAP (EVAR's LAION-CLAP wrapper calls get_audio_embedding_from_data), so the
                            teacher is scored as others score it.
    "embedding"             HTS-AT's pooled embedding itself (768-d tiny, 1024-d base), before the projection:
                            the mean of its last token map, which is also the mean of the window's frame features
                            (the features the students distil).
A clip of several windows pools the windows' embeddings (their mean) before the projection.

Timestamp embeddings: the frame-level output (HTS-AT's "fine_grained_embedding": the token map averaged over
its frequency bands, 32 distinct steps per 10 s window, 312.8 ms apart, 768-d tiny / 1024-d base), placed at the
steps' true centre times, read as the teacher's distillation targets are (each time reads the window whose
centre is nearest and interpolates linearly between its two steps around it, clamped at the window's edges), on
a regular grid of `timestamp_hop_ms` (40 ms by default, as hear_mamclap's; HEAR asks for at most 50 ms),
centred at (i + 0.5) * hop, covering the clip.

Options: scene "projection" | "embedding"; fill "repeat" | "zeros"; timestamp_hop_ms; windows_per_forward
(windows through HTS-AT at once: memory against speed). `mamclap hear readout` gives this module one readout,
its default ("default": the module's own scene embedding), as it does log-mel's and CREPE's.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio.functional as AF

from hear_mamclap import SAMPLE_RATE, TIMESTAMP_HOP_MS, check_audio
from hear_mamclap.baselines.laion import (WindowGeometry, build_clap_audio, load_strict, plan_windows,
                                          read_clap_audio, time_weights)

__all__ = ["ClapTeacher", "load_model", "get_scene_embeddings", "get_timestamp_embeddings"]

SCENES = ("projection", "embedding")
FILLS = ("repeat", "zeros")


class ClapTeacher(nn.Module):
    """A LAION-CLAP audio branch (and projection) with the embedding options; what load_model returns."""

    sample_rate = SAMPLE_RATE

    def __init__(self, branch: nn.Module, projection: nn.Module | None, geometry: WindowGeometry,
                 scene: str = "projection", fill: str = "repeat", timestamp_hop_ms: float = TIMESTAMP_HOP_MS,
                 windows_per_forward: int = 8) -> None:
        super().__init__()
        if scene not in SCENES:
            raise ValueError(f"scene must be one of {', '.join(map(repr, SCENES))}, got {scene!r}")
        if scene == "projection" and projection is None:
            raise ValueError("scene='projection' needs the checkpoint's audio_projection.* weights, which it lacks "
                             "(scene='embedding' reads the audio branch alone)")
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {', '.join(map(repr, FILLS))}, got {fill!r}")
        if not (isinstance(timestamp_hop_ms, (int, float)) and 0 < timestamp_hop_ms <= 50):
            raise ValueError(f"timestamp_hop_ms must be in (0, 50] (HEAR), got {timestamp_hop_ms!r}")
        if not isinstance(windows_per_forward, int) or windows_per_forward < 1:
            raise ValueError(f"windows_per_forward must be a positive integer, got {windows_per_forward!r}")
        self.audio_branch, self.audio_projection, self.geometry = branch, projection, geometry
        self.scene, self.fill = scene, fill
        self.timestamp_hop_ms, self.windows_per_forward = float(timestamp_hop_ms), windows_per_forward
        self.timestamp_embedding_size = int(branch.num_features)
        self.scene_embedding_size = int(projection[-1].out_features) if scene == "projection" else self.timestamp_embedding_size
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ClapTeacher:
        """Always in eval mode (no dropout, no SpecAugment, BatchNorm statistics fixed), as the teacher."""
        return super().train(False)

    def windows(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N) 16 kHz audio -> (B, W, window samples) windows at 48 kHz, (W,) their start times (s, float64)."""
        g = self.geometry
        device = self.audio_branch.patch_embed.proj.weight.device
        x = AF.resample(audio.to(device, torch.float32), SAMPLE_RATE, g.rate)  # (B, 3N)
        offsets = [round(s * g.rate) for s in plan_windows(audio.shape[1] / SAMPLE_RATE, g.seconds)]
        if x.shape[1] < g.samples and self.fill == "repeat":  # laion_clap's repeatpad
            x = x.repeat(1, g.samples // x.shape[1])
        x = F.pad(x, (0, max(0, offsets[-1] + g.samples - x.shape[1])))
        windows = torch.stack([x[:, o:o + g.samples] for o in offsets], dim=1)
        return windows, torch.tensor(offsets, dtype=torch.float64, device=device) / g.rate

    @torch.no_grad()
    def embed(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N) 16 kHz audio -> (frame features (B, W * S, D) window-major, window starts (W,) in s,
        HTS-AT's pooled embedding per window (B, W, D))."""
        check_audio(audio)
        windows, starts = self.windows(audio)
        B, W = windows.shape[:2]
        flat = windows.flatten(0, 1)
        frames, pooled = [], []
        for i in range(0, len(flat), self.windows_per_forward):
            chunk = flat[i:i + self.windows_per_forward]
            out = self.audio_branch({"waveform": chunk}, device=chunk.device)
            fine = out["fine_grained_embedding"]  # (M, 1024, D): each of the S steps repeated 1024 / S times
            frames.append(fine[:, :: fine.shape[1] // self.geometry.n_steps])
            pooled.append(out["embedding"])
        frames = torch.cat(frames).reshape(B, W * self.geometry.n_steps, -1)
        return frames, starts, torch.cat(pooled).reshape(B, W, -1)

    def frames_at(self, frames: torch.Tensor, starts: torch.Tensor, times_s: torch.Tensor) -> torch.Tensor:
        """Frame features from `embed` read at times (T,) in s: (B, T, D), as the teacher reads its targets."""
        g = self.geometry
        tw = time_weights(times_s.to(frames.device, torch.float64), starts, g.step_times.to(frames.device), g.seconds)
        return torch.einsum("ts,bsd->btd", tw.to(frames.dtype), frames)

    def scene_embedding(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, W, D) pooled embeddings per window -> (B, scene_embedding_size)."""
        clip = pooled.mean(1)
        if self.scene == "embedding":
            return clip
        return F.normalize(self.audio_projection(clip), dim=-1)


def load_model(model_file_path: str = "", scene: str = "projection", fill: str = "repeat",
               timestamp_hop_ms: float = TIMESTAMP_HOP_MS, windows_per_forward: int = 8) -> ClapTeacher:
    """HEAR entry point: a LAION-layout CLAP checkpoint (no default: this baseline is a trained teacher's)."""
    if not model_file_path:
        raise ValueError("hear_mamclap.baselines.clap scores a CLAP teacher: pass its LAION-layout checkpoint "
                         "(--model clap.pt; `mamclap teacher init --out clap.pt` writes a random one)")
    model, audio, projection = read_clap_audio(model_file_path)
    joint_dim = projection["0.weight"].shape[0] if projection else None
    branch, proj, audio_cfg = build_clap_audio(model, joint_dim)
    load_strict(branch, audio, f"{model_file_path}: audio_branch vs laion-clap {model}")
    if proj is not None:
        load_strict(proj, projection, f"{model_file_path}: audio_projection vs the CLAP projection")
    return ClapTeacher(branch, proj, WindowGeometry.of(branch, audio_cfg), scene, fill, timestamp_hop_ms,
                       windows_per_forward)


def get_timestamp_embeddings(audio: torch.Tensor, model: ClapTeacher) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_sounds, n_samples) -> frame features (n_sounds, T, D) and their timestamps (n_sounds, T) in ms,
    centred at (i + 0.5) * timestamp_hop_ms, enough of them to cover the clip."""
    frames, starts, _ = model.embed(audio)
    hop = model.timestamp_hop_ms
    n = max(1, math.ceil(1000.0 * audio.shape[1] / SAMPLE_RATE / hop))
    times_ms = (torch.arange(n, dtype=torch.float64) + 0.5) * hop
    emb = model.frames_at(frames, starts, times_ms / 1000.0)
    return emb, times_ms.to(torch.float32, copy=True)[None].expand(audio.shape[0], -1).to(emb.device)


def get_scene_embeddings(audio: torch.Tensor, model: ClapTeacher) -> torch.Tensor:
    """(n_sounds, n_samples) -> (n_sounds, scene_embedding_size): see the module docstring's scene option."""
    _, _, pooled = model.embed(audio)
    return model.scene_embedding(pooled)
