"""s3prl UpstreamExpert over the mamclap encoder: a list of 16 kHz waveforms -> per-layer frame features.

Frame rate. The encoder gives one feature per 16-frame time patch, 160 ms (2560 samples). SUPERB's
frame-level downstreams expect finer rates (wav2vec2: 20 ms) and s3prl cuts each utterance's features to
round(len(wav) / downsample_rate) frames, so the patch features are linearly interpolated in time (between
patch centres, as the HEAR adapter does for its timestamps) to one frame every HOP_SAMPLES = 640 samples
(40 ms), and get_downsample_rates reports 640. A batch gets exactly round(longest / 640) frames (at least 1),
so s3prl's length check holds with no slack.

Hidden states: the block input and each block's output, depth + 1 layers, each (B, T, D') with the frequency
patches of a time patch concatenated (D' = width x frequency patches, M2D's choice and the HEAR default) or
averaged (D' = width); all layers have the same size, as SUPERB's weighted sum needs. last_hidden_state is the
final, normalised layer (the HEAR "last" features), for `-s last_hidden_state`.

Each utterance's features are independent of the rest of the batch: padding is masked from attention in the
encoder, and interpolation near a clip's end uses only that clip's own patches. Long utterances are encoded
in groups of non-overlapping encoder windows (the encoder's own chunking), so memory beyond the output stays
bounded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import yaml

from hear_mamclap.checkpoint import load_encoder
from hear_mamclap.model import MAMCLAPEncoder

SAMPLE_RATE = 16000
HOP_SAMPLES = 640  # 40 ms output frames: 4 per 160 ms time patch


def check_wavs(wavs, sample_rate: int = SAMPLE_RATE) -> None:
    """A ValueError saying what was expected, for anything but a non-empty list of non-empty, finite, 1-D
    floating-point tensors."""
    if not isinstance(wavs, (list, tuple)):
        raise ValueError(f"expected a list of 1-D waveform tensors at {sample_rate} Hz, got {type(wavs).__name__}")
    if len(wavs) == 0:
        raise ValueError("expected a list of 1-D waveform tensors, got an empty list")
    for i, wav in enumerate(wavs):
        if not isinstance(wav, torch.Tensor):
            raise ValueError(f"wavs[{i}]: expected a torch.Tensor, got {type(wav).__name__}")
        if wav.ndim != 1:
            raise ValueError(f"wavs[{i}]: expected a 1-D waveform (samples,) at {sample_rate} Hz, got shape "
                             f"{tuple(wav.shape)}; mix channels down and pass one tensor per utterance")
        if not wav.is_floating_point():
            raise ValueError(f"wavs[{i}]: expected floating-point samples in [-1, 1], got dtype {wav.dtype}")
        if wav.numel() == 0:
            raise ValueError(f"wavs[{i}]: zero-length waveform; every utterance needs at least one sample")
        if not torch.isfinite(wav).all():
            raise ValueError(f"wavs[{i}]: waveform contains NaN or Inf values")


class UpstreamExpert(nn.Module):
    """What s3prl's `-u mamclap -k CKPT` builds. ckpt: an encoder export (folder or .safetensors) or a
    pretraining checkpoint; or encoder: one already in memory. model_config (`-g`, optional): a YAML file of
    the keyword options freq_reduce and windows_per_forward. refresh: s3prl's re-download flag (-r); nothing
    is downloaded, so it has no effect."""

    def __init__(self, ckpt: str | None = None, model_config: str | None = None, refresh: bool = False, *,
                 encoder: MAMCLAPEncoder | None = None, freq_reduce: Literal["concat", "mean"] = "concat",
                 windows_per_forward: int = 8) -> None:
        super().__init__()
        if (encoder is None) == (not ckpt):
            raise ValueError("the mamclap upstream needs a checkpoint: pass -k PATH (an encoder export folder, "
                             "its encoder.safetensors, or a pretraining checkpoint)" if encoder is None else
                             "give either ckpt or encoder, not both")
        if model_config:
            options = yaml.safe_load(Path(model_config).read_text()) or {}
            unknown = set(options) - {"freq_reduce", "windows_per_forward"}
            if unknown:
                raise ValueError(f"{model_config}: unknown upstream options {sorted(unknown)}; expected "
                                 "freq_reduce, windows_per_forward")
            freq_reduce = options.get("freq_reduce", freq_reduce)
            windows_per_forward = options.get("windows_per_forward", windows_per_forward)
        if freq_reduce not in ("concat", "mean"):
            raise ValueError(f"freq_reduce must be 'concat' or 'mean', got {freq_reduce!r}")
        if not isinstance(windows_per_forward, int) or windows_per_forward < 1:
            raise ValueError(f"windows_per_forward must be an integer >= 1, got {windows_per_forward!r}")
        self.encoder = (encoder if encoder is not None else load_encoder(ckpt)).eval()
        if self.encoder.cfg.sample_rate != SAMPLE_RATE:
            raise ValueError(f"s3prl feeds {SAMPLE_RATE} Hz audio; this encoder expects "
                             f"{self.encoder.cfg.sample_rate} Hz")
        self.freq_reduce, self.windows_per_forward = freq_reduce, windows_per_forward

    def get_downsample_rates(self, key: str) -> int:
        """Samples per output frame, the same for every key."""
        return HOP_SAMPLES

    def patch_features(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(B, N) padded audio, (B,) lengths -> depth + 2 of (B, P, D') per time patch (hidden states, then the
        final normalised layer) and the valid patches per clip (B,). Encodes windows_per_forward encoder
        windows at a time: the encoder cuts at the same window boundaries, so the result is the same."""
        mel, n_frames = self.encoder.mel(audio, lengths)  # (B, T, n_mels), (B,)
        step = self.encoder.cfg.target_frames * self.windows_per_forward
        pieces, n_patches = [], None
        for start in range(0, mel.shape[1], step):
            piece = mel[:, start:start + step]
            out = self.encoder.encode_mel(piece, (n_frames - start).clamp(0, piece.shape[1]),
                                          freq_reduce=self.freq_reduce, hidden_states=True)
            pieces.append([*out.hidden_states, out.frames])
            n_patches = out.n_frames if n_patches is None else n_patches + out.n_frames
        return [torch.cat(layer, dim=1) for layer in zip(*pieces)], n_patches

    def interpolate(self, layers: list[torch.Tensor], n_patches: torch.Tensor, n_out: int) -> list[torch.Tensor]:
        """Patch features (B, P, D') -> (B, n_out, D') at HOP_SAMPLES, linear in time between patch centres;
        each clip only reads its own valid patches (clamped at its last one)."""
        P = layers[0].shape[1]
        centres = self.encoder.frame_times(P).to(layers[0].device)  # (P,) s, float64
        times = (torch.arange(n_out, dtype=torch.float64, device=centres.device) + 0.5) * HOP_SAMPLES / SAMPLE_RATE
        last = (n_patches - 1).clamp_min(0)[:, None]  # (B, 1) last valid patch of each clip
        pos = torch.searchsorted(centres, times)[None]  # (1, n_out): first centre at or after each time
        right = torch.minimum(pos, last)  # (B, n_out)
        left = torch.minimum((pos - 1).clamp_min(0), last)
        span = (centres[right] - centres[left]).clamp_min(1e-9)
        w = ((times[None] - centres[left]) / span).clamp(0, 1).to(layers[0].dtype)[..., None]  # (B, n_out, 1)

        def take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # (B, P, D'), (B, n_out) -> (B, n_out, D')
            return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[2]))

        return [take(x, left) * (1 - w) + take(x, right) * w for x in layers]

    def forward(self, wavs: list[torch.Tensor]) -> dict[str, list[torch.Tensor] | torch.Tensor]:
        """wavs: 1-D 16 kHz tensors -> {"hidden_states": depth + 1 of (B, T, D'), "last_hidden_state":
        (B, T, D')}, T = round(longest / HOP_SAMPLES). Utterances shorter than one 25 ms analysis window are
        zero-padded to one window."""
        check_wavs(wavs)
        device = next(self.encoder.parameters()).device
        min_len = self.encoder.frontend.window_length
        lengths = torch.tensor([max(len(w), min_len) for w in wavs], device=device)  # (B,)
        audio = torch.zeros(len(wavs), int(lengths.max()), device=device)  # (B, N)
        for i, w in enumerate(wavs):
            audio[i, :len(w)] = w.to(device, torch.float32)
        layers, n_patches = self.patch_features(audio, lengths)
        n_out = max(1, round(max(len(w) for w in wavs) / HOP_SAMPLES))
        *hidden, last = self.interpolate(layers, n_patches, n_out)
        return {"hidden_states": hidden, "last_hidden_state": last}
