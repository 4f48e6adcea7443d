"""`mamclap pretrain`: MAM, MAM-CLAP, SupMAM and SupMAM-CLAP pretraining.

A linear loop in the nanoGPT manner: torchrun is detected from the environment (one process otherwise),
DDP over gloo on CPU or NCCL on GPU, bf16 autocast on GPU, optional torch.compile, AdamW with linear
warm-up and cosine decay, gradient accumulation and clipping, rank-0 logging (progress bar, TensorBoard,
a JSON-lines log), periodic atomic checkpoints, exact `--resume`, and an encoder-only export at the end.

By default the front end (log-mel) and the teacher run on the device inside the step, on the batch of raw
waveforms the loader gives, so a teacher never sees different audio than the student. With `--cache` (a
folder from `mamclap precompute`) the teacher targets and, unless --no-cache-mel, the log-mel come from
features computed once per clip and held on the GPU: no decoding, front end or teacher forward per step
(training/pretrain/inputs.py says where each step's inputs come from).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from training.pretrain import checkpointing
from training.pretrain.data import AudioClips, StepBatches
from training.pretrain.feature_cache import FeatureCache, cache_key
from training.pretrain.inputs import cached_inputs, fixed_inputs, online_inputs

log = logging.getLogger("mamclap.pretrain")


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "supmam_clap"      # mam | mam_clap | supmam | supmam_clap
    size: str = "tiny"               # encoder preset: tiny | small | base
    data: str = ""                   # shards folder, AudioSet CSV, or audio folder
    out_dir: str = "runs/pretrain"
    teacher: str = ""                # LAION-layout CLAP checkpoint (needed by *_clap presets)
    teacher_features: str = "frames"  # frames | tokenmap (training.pretrain.teacher.TeacherConfig)
    teacher_align: str = "time_interp"  # time_interp | grid_resample
    teacher_projection: bool = False  # LAION's 512-d audio projection on each step
    steps: int = 200                 # length of the run (the learning-rate schedule ends here)
    stop_at: int = 0                 # stop (with a checkpoint) after this step, 0 = at `steps`; resume later
    batch_size: int = 8              # per process and micro-batch
    accum: int = 1                   # micro-batches per optimizer step
    base_lr: float = 2e-4            # scaled by global batch / 256 (AudioMAE)
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    clip_grad: float = 1.0           # 0 disables clipping
    ckpt_every: int = 50
    log_every: int = 10
    seed: int = 0
    workers: int = 2
    compile: bool = False
    compile_mode: str = "default"    # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune...
    attention: str = "auto"          # attention kernels on GPU: auto (PyTorch's order) | cudnn (cuDNN's first)
    device: str = "auto"             # auto | cpu | cuda
    cache: str = ""                  # folder from `mamclap precompute`: teacher targets (and log-mel) from it
    cache_mel: bool = True           # with cache: the log-mel too (held on the GPU), so no audio is decoded
    fixed_batch: bool = False        # the first batch over and over: the step without the data path (benchmarks)
    overrides: tuple[tuple[str, str], ...] = ()  # PretrainConfig field overrides (name, value)


def lr_at(step: int, cfg: TrainConfig, peak: float) -> float:
    """Linear warm-up to peak, then cosine decay to zero at cfg.steps."""
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * peak * (1.0 + math.cos(math.pi * min(1.0, progress)))


def masking_noise(seed: int, step: int, global_batch: int, n_patches: int) -> torch.Tensor:
    """(global_batch, n_patches) uniform noise for one optimizer step, a function of (seed, step) only:
    each clip's mask depends on its place in the global batch, not on the number of processes, and a
    resumed run draws the same masks."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.rand(global_batch, n_patches, generator=g)


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment, or a single process."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))


def _parse_value(text: str):
    """A --set value: JSON (numbers, true/false, lists) when it parses, else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _build(cfg: TrainConfig, n_classes: int, cached_teacher_dim: int | None = None):
    """The pretraining wrapper and, for presets that distil, the frozen teacher (None when its features
    come from a cache of teacher_dim cached_teacher_dim)."""
    from training.pretrain.mam import MAMPretrainer, PretrainConfig

    overrides = {k: _parse_value(v) for k, v in cfg.overrides}
    pcfg = PretrainConfig.preset(cfg.preset, size=cfg.size, **overrides)
    if pcfg.uses_labels:
        pcfg = dataclasses.replace(pcfg, n_classes=n_classes)
    teacher = None
    if pcfg.uses_teacher:
        if not cfg.teacher:
            raise ValueError(f"preset {cfg.preset!r} distils a CLAP teacher: pass --teacher CKPT (a "
                             "LAION-layout checkpoint, e.g. one from `mamclap teacher train`)")
        from training.pretrain.teacher import load_teacher
        if cached_teacher_dim is not None:
            return MAMPretrainer(dataclasses.replace(pcfg, teacher_dim=cached_teacher_dim)), None
        # Built without drawing from the global RNG (its weights come from the checkpoint): the student's
        # initial weights then depend on the seed alone, the same with a cached teacher.
        with torch.random.fork_rng(devices=[]):
            teacher = load_teacher(cfg.teacher, encoder=pcfg.encoder, cfg=teacher_config(cfg))
        pcfg = dataclasses.replace(pcfg, teacher_dim=teacher.dim)
    return MAMPretrainer(pcfg), teacher


def attention_kernels(choice: str, use_cuda: bool):
    """The scaled-dot-product attention kernels to prefer: PyTorch's own order, or cuDNN's fused attention
    first (the others stay as fallbacks for shapes it does not take)."""
    if choice not in ("auto", "cudnn"):
        raise ValueError(f"attention must be 'auto' or 'cudnn', got {choice!r}")
    if choice == "auto" or not use_cuda:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                        SDPBackend.MATH], set_priority=True)


def teacher_config(cfg: TrainConfig):
    from training.pretrain.teacher import TeacherConfig
    return TeacherConfig(features=cfg.teacher_features, align=cfg.teacher_align, projection=cfg.teacher_projection)


def n_samples_for(enc) -> int:
    """Samples giving exactly target_frames Kaldi frames (snip_edges): window + hop * (frames - 1)."""
    hop = round(enc.sample_rate * enc.frame_shift_ms / 1000)
    window = round(enc.sample_rate * enc.frame_length_ms / 1000)
    return window + hop * (enc.target_frames - 1)


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Run (or resume) pretraining; returns a summary dict. Works under torchrun or as one process."""
    rank, world, local_rank = _distributed()
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out_dir = Path(cfg.out_dir)
    ckpt_path = out_dir / "checkpoint.pt"

    start_step, state = 0, None
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        state = checkpointing.load(ckpt_path)
        saved = TrainConfig(**{**state["train_config"], "overrides": tuple(
            tuple(kv) for kv in state["train_config"]["overrides"])})
        cfg = dataclasses.replace(saved, steps=cfg.steps, stop_at=cfg.stop_at, out_dir=cfg.out_dir, workers=cfg.workers,
                                  device=cfg.device, compile=cfg.compile, data=cfg.data or saved.data,
                                  teacher=cfg.teacher or saved.teacher, cache=cfg.cache or saved.cache,
                                  cache_mel=cfg.cache_mel, fixed_batch=cfg.fixed_batch,
                                  compile_mode=cfg.compile_mode, attention=cfg.attention)
        # On another number of processes, keep the global batch (so the data order, the masks and the
        # learning rate continue unchanged): the per-process batch absorbs the difference.
        saved_world = state.get("world_size", 1)
        if saved_world != world:
            global_batch = saved.batch_size * saved.accum * saved_world
            if global_batch % (world * saved.accum):
                raise ValueError(f"--resume on {world} processes: the checkpoint's global batch {global_batch} "
                                 f"(batch {saved.batch_size} x accum {saved.accum} x {saved_world} processes) "
                                 f"does not split evenly")
            cfg = dataclasses.replace(cfg, batch_size=global_batch // (world * saved.accum))
        start_step = state["step"]
    torch.manual_seed(cfg.seed)

    dataset = AudioClips(cfg.data, n_samples=1, require_labels=cfg.preset.startswith("sup"))
    cache = FeatureCache(cfg.cache, device) if cfg.cache else None
    model, teacher = _build(cfg, dataset.n_classes, cache.teacher_dim if cache is not None and cache.has_teacher
                            else None)
    dataset.n_samples = n_samples_for(model.cfg.encoder)
    if cache is not None:  # refuse a cache built for other data, geometry or teacher
        cache.check(cache_key(dataset, model.cfg.encoder, cfg.teacher if model.cfg.uses_teacher else None,
                              teacher_config(cfg)), teacher=model.cfg.uses_teacher)
    model.to(device)
    if teacher is not None:
        teacher.to(device)

    global_batch = cfg.batch_size * cfg.accum * world
    peak_lr = cfg.base_lr * global_batch / 256
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=peak_lr, betas=(0.9, 0.95), fused=use_cuda)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        checkpointing.set_rng_state(state["rng"][min(rank, len(state["rng"]) - 1)])
    ddp_model = DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None) \
        if world > 1 else model
    step_fn = torch.compile(ddp_model, mode=cfg.compile_mode) if cfg.compile else ddp_model

    sampler = StepBatches(len(dataset), cfg.batch_size, cfg.accum, world, rank, cfg.seed,
                          start_step, cfg.steps)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if use_cuda else torch.autocast("cpu", enabled=False)
    if cache is not None and cfg.cache_mel:
        inputs = cached_inputs(cache, sampler, teacher=model.cfg.uses_teacher)
    else:
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.workers,
                            pin_memory=use_cuda, persistent_workers=False)
        inputs = online_inputs(loader, model.encoder.frontend, teacher, device, amp, sampler=sampler,
                               cache=cache if model.cfg.uses_teacher else None)
    if cfg.fixed_batch:
        inputs = fixed_inputs(inputs, len(sampler))

    writer = None
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        from hear_mamclap.compat import prepare_tensorboard
        prepare_tensorboard()  # no TensorFlow import (slow, and it breaks triton) for a few scalars
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out_dir / "tb"))
        log_file = open(out_dir / "log.jsonl", "a")

    def save(step: int) -> None:
        rngs = [None] * world
        if world > 1:
            dist.all_gather_object(rngs, checkpointing.rng_state())
        else:
            rngs = [checkpointing.rng_state()]
        if rank == 0:
            checkpointing.save_atomic({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "step": step, "rng": rngs, "config": model.cfg.to_dict(),
                "train_config": dataclasses.asdict(cfg), "world_size": world,
                "vocabulary": [list(v) for v in dataset.vocabulary]}, ckpt_path)

    step, skipped, t0, last_losses = start_step, 0, time.perf_counter(), {}
    progress = None
    if rank == 0:
        from tqdm import tqdm
        progress = tqdm(total=cfg.steps, initial=start_step, desc=f"pretrain {cfg.preset}", unit="step")
    micro = 0
    sums: dict[str, torch.Tensor] = {}
    unchecked: list[tuple[int, torch.Tensor]] = []  # (step, loss on the device) not yet read on the host
    for mel, targets, labels, n_skipped in inputs:  # (B, T, n_mels), (B, n_patches, D) or None, (B, n_classes)
        skipped += n_skipped
        sync = micro == cfg.accum - 1
        noise = masking_noise(cfg.seed, step, global_batch, model.cfg.encoder.n_patches)
        row = (micro * world + rank) * cfg.batch_size
        noise = noise[row:row + mel.shape[0]]  # this micro-batch's rows of the global batch
        # Pinned and non-blocking: a plain copy would make the host wait for the GPU every step.
        noise = noise.pin_memory().to(device, non_blocking=True) if use_cuda else noise
        ctx = ddp_model.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
        if cfg.compile:  # a new iteration for CUDA graphs (compile_mode reduce-overhead); a no-op otherwise
            torch.compiler.cudagraph_mark_step_begin()
        with ctx:
            with amp, attention_kernels(cfg.attention, use_cuda):
                out = step_fn(mel, teacher=targets, labels=labels if model.cfg.uses_labels else None,
                              noise=noise)
            (out["loss"] / cfg.accum).backward()
        # Loss values stay on the device: reading them on the host every micro-batch would make the CPU wait
        # for the GPU each time. They are read where they are needed (logging, checkpoints, the end).
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float() / cfg.accum
        micro += 1
        if not sync:
            continue
        micro = 0
        loss_t = sums["loss"]
        if world > 1:
            loss_t = loss_t.clone()
            dist.all_reduce(loss_t)
            loss_t = loss_t / world
        unchecked.append((step, loss_t))
        nxt = step + 1
        read_now = nxt % cfg.log_every == 0 or nxt % cfg.ckpt_every == 0 or nxt in (cfg.steps, cfg.stop_at)
        if read_now:
            # Every loss since the last read, in one transfer; a non-finite one stops the run before this
            # step's update and before any checkpoint is written after it, so the last checkpoint is good.
            values = torch.stack([t for _, t in unchecked]).tolist()
            bad = [(s, v) for (s, _), v in zip(unchecked, values) if not math.isfinite(v)]
            unchecked.clear()
            if bad:
                msg = (f"loss is {bad[0][1]} at step {bad[0][0]}: stopping. The last good checkpoint "
                       f"(step {checkpointing.load(ckpt_path)['step'] if ckpt_path.exists() else 'none'}) "
                       f"is kept at {ckpt_path}; lower --base-lr or check the data.")
                if rank == 0:
                    progress.close()
                raise FloatingPointError(msg)
            loss_value = values[-1]
        lr = lr_at(step, cfg, peak_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                   cfg.clip_grad if cfg.clip_grad > 0 else float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        last_losses = {**sums, "loss": loss_t}
        sums = {}
        if rank == 0:
            progress.update(1)
            if read_now:
                progress.set_postfix(loss=f"{loss_value:.4f}")
            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - t0
                record = {"step": step, "lr": lr, "grad_norm": float(grad_norm), "skipped": skipped,
                          **{k: float(v) for k, v in last_losses.items()}, "elapsed_s": elapsed}
                if use_cuda:
                    record["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                for k, v in record.items():
                    if k != "step":
                        writer.add_scalar(f"train/{k}", v, step)
        if step % cfg.ckpt_every == 0 or step == cfg.steps or step == cfg.stop_at:
            save(step)
        if step == cfg.stop_at:
            break
    if rank == 0:
        progress.close()
        writer.close()
        log_file.close()
        from hear_mamclap.checkpoint import export_encoder
        # Provenance the harnesses copy into every results file, so tables can group runs by variant,
        # seed and loss weights without parsing run names.
        export_encoder(model.encoder, out_dir / "encoder", metadata={
            "variant": cfg.preset, "size": cfg.size, "seed": cfg.seed, "step": step,
            "pretrain_config": model.cfg.to_dict(), "train_config": dataclasses.asdict(cfg)})
    if world > 1:
        dist.barrier()
    return {"step": step, "losses": {k: float(v) for k, v in last_losses.items()}, "skipped": skipped}



def register(subparsers) -> None:
    """`mamclap pretrain`: flags mirror TrainConfig's fields."""
    p = subparsers.add_parser("pretrain", help="pretrain MAM / MAM-CLAP / SupMAM / SupMAM-CLAP",
                              description=__doc__.splitlines()[0])
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name == "overrides":
            continue
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            p.add_argument(flag, type=type(value), default=value)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a PretrainConfig field, e.g. --set lambda_cls=0.1 --set "
                        "distill_visible_weight=0 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoint.pt")
    p.set_defaults(func=_run)


def _run(args) -> int:
    overrides = []
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects FIELD=VALUE, got {item!r}")
        overrides.append((key.strip(), value.strip()))
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name != "overrides"}
    cfg = TrainConfig(**fields, overrides=tuple(overrides))
    if not cfg.data and not args.resume:
        raise SystemExit("--data is required: a folder of shards, an AudioSet CSV or a folder of audio")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    summary = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(summary, indent=1, default=float))
    return 0
