"""Signal operations that turn a few bank clips into many varied training clips.

Pure numpy/torch/soundfile (torchaudio.functional for resampling and the phase vocoder), so it runs on a
machine with neither the Debian tools nor a network. Every random choice comes from a numpy Generator that
the caller passes in: the same generator state gives the same output, bit for bit, on the same machine.

Operations, all on (N,) float32 mono audio at 16 kHz:

    load_clip        read a bank FLAC, checking rate, channels and finiteness
    gain             scale by decibels
    change_speed     resampling: pitch and tempo change together (like a tape played faster)
    time_stretch     phase vocoder (torchaudio.functional.phase_vocoder): tempo changes, pitch stays
    pitch_shift      phase vocoder stretch then resampling back to the original length: pitch changes,
                     tempo stays
    reverb           convolution with a synthetic impulse response: exponentially decaying noise with a
                     chosen RT60, a short pre-delay and a dry/wet mix
    add_noise        add a noise (a bed or coloured noise) at a signal-to-noise ratio
    colored_noise    white (0), pink (1) or brown (2) noise
    place / mix      sum sources at offsets into a fixed-length canvas over an optional background bed
    normalize_peak   scale so the peak sits at a target level, never above 0 dBFS
    vary             a random chain of the above, ranges in an AugmentConfig
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16000
# Rational approximations of speed and pitch ratios use this denominator: resampling by p/q costs about
# q filter taps per output sample, and 1/200 is a 0.5% step (under a tenth of a semitone).
RATIO_DENOMINATOR = 200
N_FFT, HOP = 512, 128  # phase vocoder frame: 32 ms window, 8 ms hop


def load_clip(path: str | Path) -> np.ndarray:
    """(N,) float32 audio of a 16 kHz mono file; ValueError says what is wrong with a bad file."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (N, C)
    if sr != SAMPLE_RATE:
        raise ValueError(f"{path}: expected {SAMPLE_RATE} Hz audio, got {sr} Hz")
    if data.shape[1] != 1:
        raise ValueError(f"{path}: expected mono audio, got {data.shape[1]} channels")
    x = data[:, 0]
    if len(x) == 0 or not np.isfinite(x).all():
        raise ValueError(f"{path}: empty or not finite")
    return np.ascontiguousarray(x)


def gain(x: np.ndarray, db: float) -> np.ndarray:
    return (x * np.float32(10.0 ** (db / 20.0))).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def _ratio(r: float) -> tuple[int, int]:
    if not (r > 0 and math.isfinite(r)):
        raise ValueError(f"expected a positive finite ratio, got {r}")
    p = max(1, round(r * RATIO_DENOMINATOR))
    g = math.gcd(p, RATIO_DENOMINATOR)
    return p // g, RATIO_DENOMINATOR // g


def _resample(x: np.ndarray, orig: int, new: int) -> np.ndarray:
    if orig == new:
        return x.astype(np.float32, copy=True)
    y = AF.resample(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), orig, new)
    return y.numpy().astype(np.float32, copy=False)


def change_speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Play factor times faster by resampling: length / factor, pitch * factor (both change)."""
    p, q = _ratio(factor)
    return _resample(x, p, q)  # treating the clip as sampled at p/q * 16 kHz and bringing it back to 16 kHz


def time_stretch(x: np.ndarray, rate: float) -> np.ndarray:
    """Phase-vocoder tempo change: length / rate, pitch unchanged."""
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"expected a positive finite stretch rate, got {rate}")
    if rate == 1.0:
        return x.astype(np.float32, copy=True)
    n_out = max(1, round(len(x) / rate))
    wav = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    pad = max(0, N_FFT - len(x))  # stft needs at least one window
    wav = torch.nn.functional.pad(wav, (0, pad))
    window = torch.hann_window(N_FFT)
    spec = torch.stft(wav, N_FFT, HOP, window=window, return_complex=True)  # (F, T)
    advance = torch.linspace(0, math.pi * HOP, spec.shape[0])[:, None]  # (F, 1) expected phase per hop
    stretched = AF.phase_vocoder(spec, rate, advance)  # (F, ceil(T / rate))
    y = torch.istft(stretched, N_FFT, HOP, window=window, length=n_out)
    return y.numpy().astype(np.float32, copy=False)


def pitch_shift(x: np.ndarray, semitones: float) -> np.ndarray:
    """Shift pitch by semitones keeping the length: phase-vocoder stretch, then resample back."""
    if semitones == 0:
        return x.astype(np.float32, copy=True)
    p, q = _ratio(2.0 ** (semitones / 12.0))
    stretched = time_stretch(x, q / p)  # longer by p/q for an upward shift
    y = _resample(stretched, p, q)  # shorter by p/q again, every frequency times p/q
    return fit_length(y, len(x))


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Cut or zero-pad at the end to exactly n samples."""
    if len(x) >= n:
        return x[:n].astype(np.float32, copy=False)
    return np.pad(x, (0, n - len(x))).astype(np.float32, copy=False)


def fft_convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Full linear convolution via the real FFT (length len(x) + len(h) - 1)."""
    n = len(x) + len(h) - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[:n]
    return y.astype(np.float32)


def impulse_response(rng: np.random.Generator, rt60: float, predelay: float = 0.01) -> np.ndarray:
    """Synthetic room response: Gaussian noise under an exp decay reaching -60 dB at rt60 seconds.

    High frequencies decay faster in real rooms; a one-pole low-pass whose cutoff falls along the tail
    imitates that cheaply. Normalised to unit energy so wet level does not depend on rt60.
    """
    if not 0.05 <= rt60 <= 5.0:
        raise ValueError(f"rt60 must be within [0.05, 5] seconds, got {rt60}")
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.907755 * t / rt60)  # ln(1000) = 6.9: -60 dB at rt60
    # damping: mix each sample with a running average whose weight grows along the tail
    smooth = np.convolve(tail, np.ones(8) / 8.0, mode="same")
    w = np.clip(t / rt60, 0.0, 1.0)
    tail = (1.0 - w) * tail + w * smooth
    h = np.concatenate([np.zeros(int(predelay * SAMPLE_RATE)), tail])
    return (h / (np.sqrt(np.sum(h ** 2)) + 1e-12)).astype(np.float32)


def reverb(x: np.ndarray, rng: np.random.Generator, rt60: float, wet: float) -> np.ndarray:
    """Dry/wet mix with a synthetic impulse response; the output keeps the reverb tail (longer than x)."""
    if not 0.0 <= wet <= 1.0:
        raise ValueError(f"wet must be within [0, 1], got {wet}")
    h = impulse_response(rng, rt60)
    y = fft_convolve(x, h) * np.float32(wet)  # (len(x) + len(h) - 1,): the tail rings past the end of x
    y[: len(x)] += (1.0 - wet) * x
    # the wet path has unit-energy IR, so its RMS roughly matches the dry RMS; keep the loudness of x
    scale = rms(x) / max(rms(y[: len(x)]), 1e-9)
    return (y * np.float32(scale)).astype(np.float32)


def colored_noise(n: int, rng: np.random.Generator, exponent: float = 1.0) -> np.ndarray:
    """Noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    y = np.fft.irfft(spec / f ** (exponent / 2.0), n)
    return (y / max(rms(y), 1e-12)).astype(np.float32)


def loop_to(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n samples of x, looped from a random start with 10 ms crossfades at the seams (for beds)."""
    if len(x) == 0:
        raise ValueError("cannot loop an empty clip")
    fade = min(160, len(x) // 4)
    out = np.empty(0, np.float32)
    start = int(rng.integers(len(x)))
    piece = x[start:]
    while len(out) < n:
        if fade and len(out) >= fade and len(piece) >= fade:
            ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
            out[-fade:] = out[-fade:] * (1 - ramp) + piece[:fade] * ramp
            piece = piece[fade:]
        out = np.concatenate([out, piece.astype(np.float32)])
        piece = x
    return out[:n]


def add_noise(x: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """x plus noise (looped or cut to len(x)) scaled to snr_db below the RMS of x."""
    bed = loop_to(noise, len(x), rng)
    level = rms(x) / (10.0 ** (snr_db / 20.0))
    return (x + bed * np.float32(level / max(rms(bed), 1e-12))).astype(np.float32)


def place(canvas: np.ndarray, x: np.ndarray, offset: int) -> tuple[int, int]:
    """Add x into canvas at offset (in place; cut at the canvas edges); returns the [start, end) written."""
    start, end = max(0, offset), min(len(canvas), offset + len(x))
    if end > start:
        canvas[start:end] += x[start - offset: end - offset]
    return start, max(start, end)


def normalize_peak(x: np.ndarray, peak_db: float = -1.0) -> np.ndarray:
    """Scale so max |x| = peak_db dBFS (peak_db <= 0); silence is returned unchanged."""
    if peak_db > 0:
        raise ValueError(f"peak_db must be <= 0 dBFS, got {peak_db}")
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak == 0.0:
        return x.astype(np.float32, copy=True)
    return (x * np.float32(10.0 ** (peak_db / 20.0) / peak)).astype(np.float32)


def mix(n: int, parts: list[tuple[np.ndarray, int, float]], bed: np.ndarray | None = None,
        bed_snr_db: float = 20.0, rng: np.random.Generator | None = None, peak_db: float = -1.0) -> np.ndarray:
    """Sum parts (audio, offset in samples, gain in dB) into an n-sample canvas over an optional bed.

    The bed is looped to n samples and set bed_snr_db below the RMS of the summed parts; the result is
    peak-normalised to peak_db, so it never clips.
    """
    canvas = np.zeros(n, np.float32)
    for audio, offset, db in parts:
        place(canvas, gain(audio, db), offset)
    if bed is not None:
        if rng is None:
            raise ValueError("mix with a bed needs rng (the loop start is random)")
        fg = rms(canvas)
        looped = loop_to(bed, n, rng)
        level = (fg / 10.0 ** (bed_snr_db / 20.0)) if fg > 0 else 0.1
        canvas += looped * np.float32(level / max(rms(looped), 1e-12))
    return normalize_peak(canvas, peak_db)


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges for vary(); each op is applied with its probability, values drawn uniformly."""

    gain_db: tuple[float, float] = (-6.0, 6.0)
    speed_p: float = 0.3  # resampling speed change (pitch and tempo together)
    speed: tuple[float, float] = (0.9, 1.1)
    pitch_p: float = 0.2  # phase-vocoder pitch shift
    pitch_semitones: tuple[float, float] = (-2.0, 2.0)
    stretch_p: float = 0.2  # phase-vocoder tempo change
    stretch: tuple[float, float] = (0.85, 1.15)
    reverb_p: float = 0.3
    rt60: tuple[float, float] = (0.2, 1.2)
    wet: tuple[float, float] = (0.1, 0.5)
    noise_p: float = 0.2  # coloured noise
    snr_db: tuple[float, float] = (10.0, 40.0)


def vary(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()) -> tuple[np.ndarray, dict]:
    """A random chain of gain, speed, pitch, stretch, reverb and noise; returns (audio, what was applied).

    The generator is consumed the same way whatever is applied (every draw is made), so one clip's choices
    do not shift the random stream of the next.
    """
    u = rng.random(5)
    gain_db = float(rng.uniform(*cfg.gain_db))
    speed = float(rng.uniform(*cfg.speed))
    semis = float(rng.uniform(*cfg.pitch_semitones))
    stretch = float(rng.uniform(*cfg.stretch))
    rt60, wet = float(rng.uniform(*cfg.rt60)), float(rng.uniform(*cfg.wet))
    snr, color = float(rng.uniform(*cfg.snr_db)), float(rng.uniform(0.0, 2.0))
    sub = np.random.default_rng(rng.integers(2 ** 63))  # impulse response and noise draws
    ops: dict = {"gain_db": round(gain_db, 2)}
    y = x
    if u[0] < cfg.speed_p:
        y, ops["speed"] = change_speed(y, speed), round(speed, 3)
    if u[1] < cfg.pitch_p:
        y, ops["pitch_semitones"] = pitch_shift(y, semis), round(semis, 2)
    if u[2] < cfg.stretch_p:
        y, ops["stretch"] = time_stretch(y, stretch), round(stretch, 3)
    if u[3] < cfg.reverb_p:
        y, ops["reverb"] = reverb(y, sub, rt60, wet), {"rt60": round(rt60, 2), "wet": round(wet, 2)}
    if u[4] < cfg.noise_p:
        y = add_noise(y, colored_noise(len(y), sub, color), snr, sub)
        ops["noise"] = {"snr_db": round(snr, 1), "exponent": round(color, 2)}
    return gain(y, gain_db), ops
