"""Benchmark of the whole pretraining step against the yardstick, in one job, written as one JSON.

    python -m training.bench.pretrain --data CORPUS --teacher CLAP.pt --reference reference_mam_step.py \
        --cache CACHE --batch-size 256 --steps 60 --compile \
        --run online:source=online --run cached:source=cache --run fixed:source=fixed \
        --headline cached --json results/perf/pretrain_step.json

It first runs the yardstick (../shared/bench/reference_mam_step.py --json, a subprocess on the same GPU),
builds the feature cache when a run needs one and CACHE does not hold it yet (`mamclap precompute`; its
time is reported, not counted in any rate), then each --run NAME:FIELD=VALUE,... in turn through the real
trainer (training.pretrain.train), fields over the common flags. A run's `source` says where its inputs
come from: online (loader, front end and teacher in the step), teacher_cache (loader and front end, cached
teacher targets), cache (everything from the GPU-resident cache), fixed (the first cached batch over and
over: the step's rate with no data path). Other fields are TrainConfig's (variant, size, batch_size, ...; `preset` is
the old name of variant) or PretrainConfig's, as `--set` takes them (decoder_attention=local; values without commas).

Per run: samples/s over the second half of the run (after warm-up and compilation, from the trainer's
log), its ratio to the yardstick's eager and compiled rates, peak GPU memory, and MFU: the student's model
FLOPs per sample (3 x forward: encoder on the visible patches, decoder on all, heads; the formula of
reference_mam_step.py, taken from the config) times samples/s, over the bf16 matmul rate measured here.
The teacher's FLOPs are not counted, but its time is in the online rates. Not a test: run it on the GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from training.pretrain.mam import VARIANTS, PretrainConfig
from training.pretrain.train import TrainConfig, _override_fields, override, train

SOURCES = ("online", "teacher_cache", "cache", "fixed")


def train_flops_per_sample(cfg: PretrainConfig) -> float:
    """3 x forward FLOPs (matmuls and attention) of one training sample."""
    enc = cfg.encoder
    n = enc.n_patches
    pt, pf = enc.patch_size
    cls = 1 if enc.cls_token else 0
    kept = max(1, round((1 - cfg.mask_ratio) * n))
    keep = kept + cls
    d, dd = enc.width, cfg.decoder_width
    mlp = enc.mlp_ratio
    per_token = lambda width: 2 * (4 + 2 * mlp) * width * width  # qkv + proj + mlp, 2 FLOPs per MAC
    fwd = enc.depth * (keep * per_token(d) + 4 * keep * keep * d)
    fwd += 2 * kept * pt * pf * d  # patch embedding of the kept patches
    if cfg.uses_decoder:
        if cfg.decoder_attention == "local":  # no CLS; each patch attends to the W patches of its window
            tokens, span = n, cfg.decoder_window[0] * cfg.decoder_window[1]
        else:
            tokens = span = n + cls
        fwd += cfg.decoder_depth * (tokens * per_token(dd) + 4 * tokens * span * dd)
        fwd += 2 * keep * d * dd  # decoder embedding
        heads = (pt * pf if cfg.recon_weight > 0 else 0) + cfg.teacher_dim * (
            (cfg.distill_visible_weight > 0) + (cfg.distill_masked_weight > 0))
        fwd += 2 * n * dd * heads
    if cfg.uses_labels:
        fwd += 2 * d * cfg.n_classes
    return 3.0 * fwd


def matmul_peak_flops() -> float:
    """Measured bf16 dense matmul FLOP/s on the current GPU (8192^3, random data)."""
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
        result.update(mfu=flops_per_sample * rate / peak,
                      peak_mem_gib=max(r.get("peak_mem_gib", 0.0) for r in records))
    return result


def parse_run(text: str) -> tuple[str, dict[str, str]]:
    """NAME:FIELD=VALUE,FIELD=VALUE -> (NAME, {FIELD: VALUE})."""
    name, _, spec = text.partition(":")
    fields = {}
    for item in filter(None, spec.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--run {text!r}: expected NAME:FIELD=VALUE,...")
        fields[key.strip()] = value.strip()
    source = fields.get("source", "cache")
    if source not in SOURCES:
        raise SystemExit(f"--run {text!r}: source must be one of {SOURCES}, got {source!r}")
    return name, fields


def run_config(base: TrainConfig, fields: dict[str, str], cache: str, out_dir: str) -> TrainConfig:
    fields = dict(fields)
    source = fields.pop("source", "cache")
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    values = {}
    overrides = dict(base.overrides)
    pretrain_fields = _override_fields()
    for key, text in fields.items():
        key = "variant" if key == "preset" else key  # the old name
        if key in pretrain_fields and key not in known:  # a PretrainConfig field: as `--set KEY=VALUE`
            overrides[key] = override(f"{key}={text}")[1]
            continue
        if key not in known or key == "overrides":
            raise SystemExit(f"unknown run field {key!r}; expected source, a TrainConfig or a PretrainConfig field")
        default = getattr(base, key)
        values[key] = text.lower() in ("1", "true", "yes") if isinstance(default, bool) else type(default)(text)
    values.update(cache=cache if source != "online" else "", cache_mel=source in ("cache", "fixed"),
                  fixed_batch=source == "fixed", out_dir=out_dir, overrides=tuple(overrides.items()))
    return dataclasses.replace(base, **values)


def ensure_cache(cfg: TrainConfig, path: str) -> float:
    """Build the feature cache for cfg's data, geometry and teacher at `path` unless it is there; seconds."""
    from training.pretrain.data import AudioClips
    from training.pretrain.feature_cache import build
    from training.pretrain.teacher import load_teacher
    from training.pretrain.train import n_samples_for, teacher_config

    if (Path(path) / "key.json").exists():
        return 0.0
    t0 = time.perf_counter()
    encoder = cfg.pretrain_config().encoder
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = load_teacher(cfg.teacher, encoder=encoder, cfg=teacher_config(cfg), device=device) if cfg.teacher else None
    build(AudioClips(cfg.data, n_samples=n_samples_for(encoder)), encoder, path, teacher=teacher,
          teacher_path=cfg.teacher or None, teacher_cfg=teacher_config(cfg), device=device,
          batch_size=64, workers=cfg.workers, progress=False)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--variant", "--preset", default="supmam_clap", choices=VARIANTS)  # --preset: the old name
    p.add_argument("--size", default="base", help="encoder preset: tiny | small | base")
    p.add_argument("--teacher", default="")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--cache", default="", help="feature cache folder (built here when a run needs it)")
    p.add_argument("--reference", default="", help="reference_mam_step.py, run first in this job, or the JSON "
                   "it wrote earlier in the same job")
    p.add_argument("--run", action="append", default=[], metavar="NAME:FIELD=VALUE,...",
                   help="a configuration to time (repeatable); default: one run from the cache")
    p.add_argument("--headline", default="", help="the run the JSON's top-level figures are about, or several "
                   "NAME,NAME: the fastest of them (default: the first run)")
    p.add_argument("--out-dir", default="runs/bench")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    runs = [parse_run(r) for r in args.run] or [("cached", {})]
    candidates = args.headline.split(",") if args.headline else [runs[0][0]]
    if set(candidates) - {name for name, _ in runs}:
        raise SystemExit(f"--headline {args.headline!r} names runs that are not given with --run")
    base = TrainConfig(variant=args.variant, size=args.size, data=args.data, teacher=args.teacher, steps=args.steps,
                       batch_size=args.batch_size, workers=args.workers, compile=args.compile,
                       log_every=max(1, min(10, args.steps // 10)), ckpt_every=args.steps,
                       warmup_steps=min(50, args.steps // 5))
    result = {"command": " ".join(["python -m training.bench.pretrain", *(argv if argv is not None else sys.argv[1:])]),
              "torch": torch.__version__}
    cuda = torch.cuda.is_available()
    if args.reference.endswith(".json"):  # written by the yardstick earlier in the same job
        result["reference"] = json.loads(Path(args.reference).read_text())
    elif args.reference:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, args.reference, "--json", f"{tmp}/ref.json"], check=True)
            result["reference"] = json.loads(Path(f"{tmp}/ref.json").read_text())
    peak = matmul_peak_flops() if cuda else None
    result.update(device=torch.cuda.get_device_name() if cuda else "cpu",
                  matmul_peak_tflops=peak / 1e12 if peak else None)
    if any(f.get("source", "cache") != "online" for _, f in runs):
        if not args.cache:
            raise SystemExit("runs from the cache need --cache DIR")
        result["cache_build_s"] = ensure_cache(base, args.cache)
    result["runs"] = {}
    for name, fields in runs:
        cfg = run_config(base, fields, args.cache, str(Path(args.out_dir) / name))
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            train(cfg)
        except Exception as e:  # one failing configuration must not lose the others' figures
            result["runs"][name] = {"error": f"{type(e).__name__}: {e}"[:2000], **fields}
            print(name, "failed:", result["runs"][name]["error"], flush=True)
            write(result, args.json)
            continue
        wall = time.perf_counter() - t0
        ckpt = torch.load(Path(cfg.out_dir) / "checkpoint.pt", map_location="cpu", weights_only=True)
        pcfg = PretrainConfig.from_dict(ckpt["config"])
        run = summarise(Path(cfg.out_dir), cfg.batch_size * cfg.accum, train_flops_per_sample(pcfg), peak)
        run.update(wall_s=wall, source=fields.get("source", "cache"), variant=cfg.variant, size=cfg.size,
                   batch_size=cfg.batch_size, steps=cfg.steps, compile=cfg.compile, workers=cfg.workers,
                   compile_mode=cfg.compile_mode, attention=cfg.attention,
                   decoder_attention=pcfg.decoder_attention, decoder_window=list(pcfg.decoder_window))
        ref = result.get("reference", {})
        for kind in ("eager", "compiled"):
            if f"train_samples_per_s_{kind}" in ref:
                run[f"vs_yardstick_{kind}"] = run["samples_per_s"] / ref[f"train_samples_per_s_{kind}"]
        result["runs"][name] = run
        from training.eval.plots import plot_losses
        plot_losses([Path(cfg.out_dir) / "log.jsonl"], Path(cfg.out_dir) / "loss.png",
                    title=f"{name}: {cfg.variant} {cfg.size}, batch {cfg.batch_size}")
        print(name, json.dumps(run), flush=True)
        write(result, args.json)  # after every run: a job stopped at its time limit keeps what it measured
        del ckpt
        torch._dynamo.reset()  # free the compiled graphs (and what they hold) before the next run
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    # The data path against no data path: each run from the cache over the fixed-batch run of its setting.
    same = lambda r: tuple(r.get(k) for k in ("variant", "size", "batch_size", "compile", "compile_mode", "attention",
                                             "decoder_attention"))
    fixed = {same(r): r["samples_per_s"] for r in result["runs"].values() if r.get("source") == "fixed"}
    for r in result["runs"].values():
        if r.get("source") in ("cache", "teacher_cache", "online") and same(r) in fixed:
            r["vs_fixed_batch"] = r["samples_per_s"] / fixed[same(r)]
    timed = [n for n in candidates if "samples_per_s" in result["runs"][n]]
    headline = max(timed, key=lambda n: result["runs"][n]["samples_per_s"]) if timed else candidates[0]
    top = result["runs"][headline]
    if "error" not in top:
        result.update(headline=headline, samples_per_s=top["samples_per_s"], mfu=top.get("mfu"),
                      peak_mem_gib=top.get("peak_mem_gib"), ratio_to_compiled_yardstick=top.get("vs_yardstick_compiled"),
                      ratio_to_eager_yardstick=top.get("vs_yardstick_eager"),
                      data_path_vs_fixed_batch=top.get("vs_fixed_batch"))
    print(json.dumps(result, indent=1))
    write(result, args.json)


def write(result: dict, path: str) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
