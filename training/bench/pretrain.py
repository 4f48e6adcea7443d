"""Benchmark of the whole pretraining step: data loading, front end, teacher forward, student step.

    python -m training.bench.pretrain --data data/kit-medium-s0/corpus --variant supmam_clap --size base \
        --teacher CLAP.pt --steps 300 --batch-size 64 --out-dir runs/bench --json bench.json

It runs the real trainer (training.pretrain.train) and reads its log: samples/s over the second half of the
run (after warm-up and any compilation), peak GPU memory, and MFU: the student's model FLOPs per sample
(3 x forward: encoder on the visible patches, decoder on all, heads; the reference yardstick's formula
(reference_mam_step.py, a benchmark kept outside this repository), taken from the config) times samples/s, over the bf16 matmul peak
measured on the same GPU. The teacher's FLOPs are not counted, but its time is: this is the end-to-end
rate. It also draws the loss curves (training.eval.plots). Not a test: run it on the GPU beside the reference.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from training.pretrain.mam import VARIANTS, PretrainConfig
from training.pretrain.train import TrainConfig, train


def train_flops_per_sample(cfg: PretrainConfig) -> float:
    """3 x forward FLOPs (matmuls and attention) of one training sample."""
    enc = cfg.encoder
    n = enc.n_patches
    pt, pf = enc.patch_size
    cls = 1 if enc.cls_token else 0
    keep = max(1, round((1 - cfg.mask_ratio) * n)) + cls
    d, dd = enc.width, cfg.decoder_width
    mlp = enc.mlp_ratio
    per_token = lambda width: 2 * (4 + 2 * mlp) * width * width  # qkv + proj + mlp, 2 FLOPs per MAC
    fwd = enc.depth * (keep * per_token(d) + 4 * keep * keep * d)
    fwd += 2 * n * pt * pf * d  # patch embedding (computed for every patch before the gather)
    if cfg.uses_decoder:
        tokens = n + cls
        fwd += cfg.decoder_depth * (tokens * per_token(dd) + 4 * tokens * tokens * dd)
        fwd += 2 * keep * d * dd  # decoder embedding
        heads = (pt * pf if cfg.recon_weight > 0 else 0) + cfg.teacher_dim * (
            (cfg.distill_visible_weight > 0) + (cfg.distill_masked_weight > 0))
        fwd += 2 * n * dd * heads
    if cfg.uses_labels:
        fwd += 2 * d * cfg.n_classes
    return 3.0 * fwd


def matmul_peak_flops() -> float:
    """Measured bf16 dense matmul FLOP/s on the current GPU (8192^3)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    return 2 * 8192 ** 3 * 10 / (time.perf_counter() - t)


def summarise(out_dir: Path, global_batch: int, flops_per_sample: float, peak: float | None) -> dict:
    records = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    half = records[len(records) // 2:]
    if len(half) < 2:
        raise ValueError("too few logged steps to time: raise --steps or lower --log-every")
    steps = half[-1]["step"] - half[0]["step"]
    seconds = half[-1]["elapsed_s"] - half[0]["elapsed_s"]
    rate = steps * global_batch / seconds
    result = {"samples_per_s": rate, "steps_timed": steps, "seconds_timed": seconds,
              "model_tflops_per_sample": flops_per_sample / 1e12, "final_loss": records[-1]["loss"]}
    if peak:
        result.update(matmul_peak_tflops=peak / 1e12, mfu=flops_per_sample * rate / peak,
                      peak_mem_gib=max(r.get("peak_mem_gib", 0.0) for r in records))
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--variant", "--preset", default="supmam_clap", choices=VARIANTS)  # --preset: the old name
    p.add_argument("--size", default="base", help="encoder preset: tiny | small | base")
    p.add_argument("--teacher", default="")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--out-dir", default="runs/bench")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    cfg = TrainConfig(variant=args.variant, size=args.size, data=args.data, teacher=args.teacher,
                      steps=args.steps, batch_size=args.batch_size, workers=args.workers, compile=args.compile,
                      out_dir=args.out_dir, log_every=max(1, min(10, args.steps // 10)), ckpt_every=args.steps, warmup_steps=min(50, args.steps // 5))
    peak = matmul_peak_flops() if torch.cuda.is_available() else None
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    ckpt = torch.load(Path(args.out_dir) / "checkpoint.pt", map_location="cpu", weights_only=True)
    pcfg = PretrainConfig.from_dict(ckpt["config"])
    result = summarise(Path(args.out_dir), args.batch_size, train_flops_per_sample(pcfg), peak)
    result.update(wall_s=wall, variant=args.variant, size=args.size, batch_size=args.batch_size,
                  steps=args.steps, compile=args.compile, device=torch.cuda.get_device_name() if peak else "cpu")
    from training.eval.plots import plot_losses
    plot_losses([Path(args.out_dir) / "log.jsonl"], Path(args.out_dir) / "loss.png",
                title=f"{args.variant} {args.size}, batch {args.batch_size}")
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
