"""Speed and memory of the HEAR module (a benchmark script, not a test); prints one JSON object.

    python -m training.bench.hear                                  # CUDA, base encoder, bf16 autocast
    python -m training.bench.hear --reference ref.json --json out.json
    python -m training.bench.hear --device cpu --size tiny         # smoke run on a CPU machine (a minute)

Measures, through hear_mamclap's own get_scene_embeddings / get_timestamp_embeddings (front end included):
  - clips/s for batches of 10.24 s clips (random audio), scene and timestamp embeddings;
  - peak memory for the timestamp embeddings of one clip of an hour (GPU: torch's peak allocated, weights,
    input and output included; CPU: growth of the process's peak resident size);
  - the CPU real-time factor (compute seconds per second of audio) with torch limited to 2 threads.
With --reference, the JSON of the reference yardstick (reference_mam_step.py --json, a benchmark kept outside
this repository) run in the same job, the clips/s are also given as ratios to its
encoder_inference_clips_per_s (bf16, compiled, no front end).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

import hear_mamclap as hear
from hear_mamclap.checkpoint import load_encoder
from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder

CLIP_SECONDS = 10.24
GIB = 2 ** 30


def build_model(size: str, checkpoint: Path | None, device: str) -> hear.HearModel:
    """hear_mamclap's model over a checkpoint, or a fixed-seed random encoder of a preset (same speed)."""
    if checkpoint is not None:
        encoder = load_encoder(checkpoint)
    else:
        torch.manual_seed(0)
        encoder = MAMCLAPEncoder(EncoderConfig.preset(size))
    return hear.HearModel(encoder).to(device).eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn, device: str, iters: int, warmup: int) -> float:
    """Mean seconds per call of fn after warmup calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def clips_per_second(model: hear.HearModel, device: str, batch_size: int, iters: int, warmup: int,
                     bf16: bool) -> dict:
    """Scene and timestamp embeddings of a batch of 10.24 s clips, in clips per second."""
    g = torch.Generator(device=device).manual_seed(0)
    audio = 0.1 * torch.randn(batch_size, round(CLIP_SECONDS * hear.SAMPLE_RATE), device=device, generator=g)
    autocast = torch.autocast(device.split(":")[0], torch.bfloat16) if bf16 else nullcontext()
    out = {}
    for kind, fn in (("scene", hear.get_scene_embeddings), ("timestamp", hear.get_timestamp_embeddings)):
        def call():
            with torch.no_grad(), autocast:
                fn(audio, model)
        seconds = time_call(call, device, iters, warmup)
        out[f"{kind}_clips_per_s"] = batch_size / seconds
        out[f"{kind}_audio_hours_per_s"] = batch_size * CLIP_SECONDS / seconds / 3600
    return out


def _max_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux reports KiB


def long_audio_memory(model: hear.HearModel, device: str, seconds: float, bf16: bool) -> dict:
    """Peak memory of the timestamp embeddings of one clip `seconds` long."""
    audio = 0.1 * torch.randn(1, round(seconds * hear.SAMPLE_RATE), device=device)
    autocast = torch.autocast(device.split(":")[0], torch.bfloat16) if bf16 else nullcontext()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _max_rss_gib()
    start = time.perf_counter()
    with torch.no_grad(), autocast:
        emb, ts = hear.get_timestamp_embeddings(audio, model)
    _sync(device)
    out = {"seconds_of_audio": seconds, "seconds_taken": time.perf_counter() - start,
           "timestamps": emb.shape[1], "dim": emb.shape[2], "dtype": str(emb.dtype).removeprefix("torch."),
           "output_gib": emb.numel() * emb.element_size() / GIB,
           "input_gib": audio.numel() * audio.element_size() / GIB}
    if cuda:
        weights = sum(p.numel() * p.element_size() for p in model.parameters()) / GIB
        out.update(peak_gib=torch.cuda.max_memory_allocated(device) / GIB, weights_gib=weights)
    else:
        out["peak_rss_growth_gib"] = _max_rss_gib() - rss_before  # 0 when an earlier step peaked higher
    return out


def cpu_real_time_factor(model: hear.HearModel, threads: int, seconds: float, iters: int) -> dict:
    """Compute seconds per second of audio on the CPU with `threads` torch threads (float32), for batches
    of 10.24 s clips adding up to about `seconds` of audio."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = model.to("cpu")
        n = max(1, round(seconds / CLIP_SECONDS))
        audio = 0.1 * torch.randn(n, round(CLIP_SECONDS * hear.SAMPLE_RATE), generator=torch.Generator().manual_seed(0))
        out = {"threads": threads, "seconds_of_audio": n * CLIP_SECONDS}
        for kind, fn in (("scene", hear.get_scene_embeddings), ("timestamp", hear.get_timestamp_embeddings)):
            taken = time_call(lambda: fn(audio, model), "cpu", iters, warmup=2)
            out[f"{kind}_rtf"] = taken / (n * CLIP_SECONDS)
        return out
    finally:
        torch.set_num_threads(previous)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--size", default="base", choices=["tiny", "small", "base"], help="encoder preset")
    p.add_argument("--model", type=Path, default=None, help="an encoder export or checkpoint instead of a preset")
    p.add_argument("--batch-size", type=int, default=None, help="clips per call (default 512 on CUDA, 8 on CPU)")
    p.add_argument("--iters", type=int, default=10, help="timed calls per measurement")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="bf16 autocast on CUDA (the CPU figures are always float32)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the encoder (nn.Module.compile) before timing")
    p.add_argument("--long-seconds", type=float, default=None,
                   help="length of the long clip for the memory figure (default 3600 on CUDA, 60 on CPU)")
    p.add_argument("--cpu-threads", type=int, default=2)
    p.add_argument("--cpu-seconds", type=float, default=60.0, help="audio per CPU measurement")
    p.add_argument("--cpu", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the CPU real-time factor")
    p.add_argument("--reference", type=Path, default=None,
                   help="JSON written by reference_mam_step.py --json in the same job")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        p.error("CUDA is not available here; pass --device cpu (and --size tiny for a smoke run)")
    torch.backends.cuda.matmul.allow_tf32 = True  # as the reference script
    torch.backends.cudnn.allow_tf32 = True
    batch = args.batch_size or (512 if cuda else 8)
    bf16 = args.bf16 and cuda
    model = build_model(args.size, args.model, args.device)
    if args.compile:
        model.encoder.compile()
    res = {"torch": torch.__version__, "device": torch.cuda.get_device_name(args.device) if cuda else "cpu",
           "size": args.size if args.model is None else str(args.model), "batch_size": batch, "bf16": bf16,
           "compile": args.compile, "clip_seconds": CLIP_SECONDS,
           "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6}
    warmup = 3 if cuda else 2
    iters = args.iters if cuda else max(1, min(args.iters, 2))
    res.update(clips_per_second(model, args.device, batch, iters, warmup, bf16))
    if args.reference is not None:
        ref = json.loads(args.reference.read_text())["encoder_inference_clips_per_s"]
        res["reference_encoder_inference_clips_per_s"] = ref
        res["scene_ratio_to_reference"] = res["scene_clips_per_s"] / ref
        res["timestamp_ratio_to_reference"] = res["timestamp_clips_per_s"] / ref
    long_seconds = args.long_seconds or (3600.0 if cuda else 60.0)
    res["long_clip"] = long_audio_memory(model, args.device, long_seconds, bf16)
    if args.cpu:
        res["cpu"] = cpu_real_time_factor(model, args.cpu_threads, args.cpu_seconds, iters)
    text = json.dumps(res, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
