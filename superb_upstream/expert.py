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

All of it is `MAMCLAPEncoder.embed`, as for the HEAR module: each utterance's features are independent of the
rest of the batch (padding is masked from attention, interpolation near a clip's end uses only that clip's
own patches), and long utterances are encoded in groups of non-overlapping encoder windows, so memory beyond
the output stays bounded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import yaml

from hear_mamclap.checkpoint import load_encoder
from hear_mamclap.model import SAMPLE_RATE, MAMCLAPEncoder, check_audio

HOP_SAMPLES = 640  # 40 ms output frames: 4 per 160 ms time patch


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
        self.encoder = (encoder if encoder is not None else load_encoder(ckpt)).eval()
        if self.encoder.cfg.sample_rate != SAMPLE_RATE:
            raise ValueError(f"s3prl feeds {SAMPLE_RATE} Hz audio; this encoder expects "
                             f"{self.encoder.cfg.sample_rate} Hz")
        self.encoder.check_embed_options(freq_reduce=freq_reduce, windows_per_forward=windows_per_forward)
        self.freq_reduce, self.windows_per_forward = freq_reduce, windows_per_forward

    def get_downsample_rates(self, key: str) -> int:
        """Samples per output frame, the same for every key."""
        return HOP_SAMPLES

    def forward(self, wavs: list[torch.Tensor]) -> dict[str, list[torch.Tensor] | torch.Tensor]:
        """wavs: 1-D 16 kHz tensors -> {"hidden_states": depth + 1 of (B, T, D'), "last_hidden_state":
        (B, T, D')}, T = round(longest / HOP_SAMPLES). Utterances shorter than one 25 ms analysis window are
        zero-padded to one window."""
        check_audio(wavs, as_list=True)
        device = next(self.encoder.parameters()).device
        lengths = torch.tensor([max(len(w), self.encoder.cfg.window_samples) for w in wavs], device=device)  # (B,)
        audio = torch.zeros(len(wavs), int(lengths.max()), device=device)  # (B, N)
        for i, w in enumerate(wavs):
            audio[i, :len(w)] = w.to(device, torch.float32)
        out = self.encoder.embed(audio, lengths, freq_reduce=self.freq_reduce, hidden_states=True,
                                 hop_ms=1000 * HOP_SAMPLES / SAMPLE_RATE,
                                 n_steps=max(1, round(max(len(w) for w in wavs) / HOP_SAMPLES)),
                                 windows_per_forward=self.windows_per_forward)
        return {"hidden_states": out.hidden_states, "last_hidden_state": out.features}
