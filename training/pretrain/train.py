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

Ctrl-C or SIGTERM stops the run at the next step boundary with a checkpoint (`--resume` continues it); a
second signal stops at once. Every value is checked when the config is made (`--steps 0` is refused before
any data is read), and `--resume` refuses flags that contradict the checkpoint's run.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import logging
import math
import os
import signal
import threading
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from hear_mamclap import atomic
from hear_mamclap.errors import Interrupted, UserError
from hear_mamclap.model import ENCODER_PRESETS
from training import args as checks
from training.pretrain import checkpointing
from training.pretrain.data import AudioClips, StepBatches
from training.pretrain.feature_cache import FeatureCache, cache_key
from training.pretrain.inputs import augment_batch, cached_inputs, fixed_inputs, online_inputs
from training.pretrain.mam import VARIANTS
from training.pretrain.optim import clip_and_step, param_groups, set_lr, setup_device, warmup_cosine

log = logging.getLogger("mamclap.pretrain")


@dataclass(frozen=True)
class TrainConfig:
    variant: str = "supmam_clap"     # mam | mam_clap | supmam | supmam_clap (mam.VARIANT_WEIGHTS)
    size: str = "tiny"               # encoder preset: tiny | small | base
    data: str = ""                   # shards folder, AudioSet CSV, or audio folder (required unless resuming)
    out_dir: str = "runs/pretrain"   # checkpoint.pt, log.jsonl, tb/ and the encoder/ export
    teacher: str = ""                # LAION-layout CLAP checkpoint (needed by variants that distil)
    teacher_features: str = "frames"  # frames | tokenmap (training.pretrain.teacher.TeacherConfig)
    teacher_align: str = "time_interp"  # time_interp | grid_resample
    teacher_projection: bool = False  # LAION's 512-d audio projection on each step
    steps: int = 200                 # length of the run (the learning-rate schedule ends here)
    stop_at: int = 0                 # stop (with a checkpoint) after this step, 0 = at `steps`; resume later
    batch_size: int = 8              # per process and micro-batch
    accum: int = 1                   # micro-batches per optimizer step
    base_lr: float = 2e-4            # scaled by global batch / 256 (AudioMAE)
    weight_decay: float = 1e-4       # AdamW's, on weights (not on biases and norms)
    warmup_steps: int = 20           # linear warm-up of the learning rate, then cosine decay
    clip_grad: float = 1.0           # 0 disables clipping
    ckpt_every: int = 50             # steps between checkpoints (one is also written at the end)
    log_every: int = 10              # steps between log.jsonl / TensorBoard records
    seed: int = 0                    # model init, data order and masks
    workers: int = 2                 # data loader processes (0: load in the main process)
    compile: bool = False            # torch.compile the training step
    compile_mode: str = "default"    # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune
    attention: str = "auto"          # attention kernels on GPU: auto (PyTorch's order) | cudnn (cuDNN's first)
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    cache: str = ""                  # folder from `mamclap precompute`: teacher targets (and log-mel) from it
    cache_mel: bool = True           # with cache: the log-mel too (held on the GPU), so no audio is decoded
    fixed_batch: bool = False        # the first batch over and over: the step without the data path (benchmarks)
    init_from: str = ""              # start the encoder from an export / checkpoint (`mamclap convert` for AudioMAE)
    mix_p: float = 0.0               # share of clips mixed with another clip of the batch (inputs.augment_batch)
    mix_gain_db: float = 10.0        # the other clip's level: uniform in [-mix_gain_db, 0] dB relative
    gain_db: float = 0.0             # random level change of each clip, uniform in [-gain_db, gain_db] dB
    mix_targets: str = "none"        # teacher targets of mixed clips: none (no mixing with a teacher), power
    export_every: int = 0            # also export the encoder every N steps (encoder-step<N>/), 0 = only at the end
    overrides: tuple[tuple[str, str], ...] = ()  # PretrainConfig field overrides (name, value)

    def __post_init__(self) -> None:
        checks.check_fields(self, VALUE_RULES)
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name}: expected one of {list(allowed)}, got {getattr(self, name)!r}")
        if not 0.0 <= self.mix_p <= 1.0:
            raise ValueError(f"mix_p (--mix-p) must be a probability in [0, 1], got {self.mix_p}")
        if self.mix_p > 0 and _uses_teacher(self) and self.mix_targets != "power":
            raise ValueError(f"mix_p (--mix-p) mixes log-mel after the teacher's targets are made, so for a "
                             f"variant with a teacher (--variant {self.variant}) it needs --mix-targets power "
                             "(the targets mixed with the audio's power weights, an approximation)")
        if self.stop_at > self.steps:
            raise ValueError(f"stop_at (--stop-at) must be 0 (run to the end) or a step <= steps (--steps) "
                             f"{self.steps}, got {self.stop_at}")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The config a checkpoint saved (dataclasses.asdict); checkpoints from before the rename name the
        variant "preset"."""
        d = dict(d)
        if "preset" in d:
            d["variant"] = d.pop("preset")
        return cls(**{**d, "overrides": tuple(tuple(kv) for kv in d.get("overrides", ()))})

    def pretrain_config(self):
        """The PretrainConfig this run trains: the variant on the encoder size, with the --set overrides."""
        from training.pretrain.mam import PretrainConfig

        overrides = {k: _parse_value(v) for k, v in self.overrides}
        return PretrainConfig.preset(self.variant, size=self.size, **overrides)


def _uses_teacher(cfg: TrainConfig) -> bool:
    try:
        return cfg.pretrain_config().uses_teacher
    except ValueError:  # a bad --set is reported where the PretrainConfig is made
        return False


# The values each field may take, checked on the command line and in TrainConfig alike.
VALUE_RULES = {"steps": checks.positive_int, "stop_at": checks.nonneg_int, "batch_size": checks.positive_int,
               "accum": checks.positive_int, "base_lr": checks.positive_float, "weight_decay": checks.nonneg_float,
               "warmup_steps": checks.nonneg_int, "clip_grad": checks.nonneg_float,
               "ckpt_every": checks.positive_int, "log_every": checks.positive_int, "seed": checks.seed,
               "workers": checks.nonneg_int, "device": checks.device,
               "mix_gain_db": checks.nonneg_float, "gain_db": checks.nonneg_float, "export_every": checks.nonneg_int}
CHOICES = {"variant": VARIANTS, "size": tuple(ENCODER_PRESETS), "teacher_features": ("frames", "tokenmap"),
           "teacher_align": ("time_interp", "grid_resample"), "attention": ("auto", "cudnn"),
           "mix_targets": ("none", "power"),  # power: both clips' targets by their power shares (augment_batch)
           "compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")}
# Fields a resumed run takes from the command line; every other one comes from the checkpoint.
RESUMABLE = ("steps", "stop_at", "out_dir", "workers", "device", "compile", "data", "teacher", "cache", "cache_mel",
             "fixed_batch", "compile_mode", "attention", "export_every")


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


def _override_fields() -> dict[str, object]:
    """PretrainConfig fields `--set` may change, with their types (the encoder comes from --size)."""
    from training.pretrain.mam import PretrainConfig
    hints = typing.get_type_hints(PretrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(PretrainConfig) if f.name != "encoder"}


def _fits(value, kind) -> bool:
    if typing.get_origin(kind) is typing.Literal:
        return value in typing.get_args(kind)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typing.get_origin(kind) is tuple:  # a JSON list of the tuple's length, each item of its type
        items = typing.get_args(kind)
        return isinstance(value, (list, tuple)) and len(value) == len(items) and all(map(_fits, value, items))
    return isinstance(value, kind)


def override(text: str) -> tuple[str, str]:
    """argparse type of --set: FIELD=VALUE for a known PretrainConfig field and a value of its type."""
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    fields = _override_fields()
    if key not in fields:
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise argparse.ArgumentTypeError(f"unknown PretrainConfig field {key!r}; {hint}fields: {', '.join(fields)}"
                                         + (" (the encoder size is --size)" if key == "encoder" else ""))
    kind = fields[key]
    if not _fits(_parse_value(value), kind):
        want = (" or ".join(repr(a) for a in typing.get_args(kind)) if typing.get_origin(kind) is typing.Literal
                else {float: "a number", int: "an integer", bool: "true or false"}.get(kind, str(kind)))
        raise argparse.ArgumentTypeError(f"{key} expects {want}, got {value!r}")
    return key, value


def _build(cfg: TrainConfig, n_classes: int, cached_teacher_dim: int | None = None):
    """The pretraining wrapper and, for configs that distil, the frozen teacher (None when its features
    come from a cache of teacher_dim cached_teacher_dim)."""
    from training.pretrain.mam import MAMPretrainer

    pcfg = cfg.pretrain_config()
    if pcfg.uses_labels:
        pcfg = dataclasses.replace(pcfg, n_classes=n_classes)
    teacher = None
    if pcfg.uses_teacher:
        if not cfg.teacher:
            raise ValueError(f"variant {cfg.variant!r} distils a CLAP teacher: pass --teacher CKPT (a "
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


def init_encoder(encoder, path: str) -> None:
    """Copy the weights of the encoder at `path` (an export or a checkpoint; an AudioMAE model once converted
    by `mamclap convert audiomae`) into the pretraining wrapper's encoder. The architecture must match; the
    positions stay the pretraining config's (sin-cos), which a converted AudioMAE model shares up to channel
    order, so a stored table is not copied."""
    from hear_mamclap.checkpoint import load_encoder

    source = load_encoder(path)
    mine, theirs = encoder.cfg.to_dict(), source.cfg.to_dict()
    differ = [k for k in mine if k != "pos_embed" and mine[k] != theirs.get(k)]
    if differ:
        raise UserError(f"--init-from {path}: its encoder differs from --size's in "
                        + ", ".join(f"{k} ({theirs.get(k)} vs {mine[k]})" for k in differ))
    state = {k: v for k, v in source.state_dict().items() if k != "pos_embed"}
    encoder.load_state_dict(state, strict=False)  # pos_embed is derived from the config here
    log.info("encoder initialised from %s", path)


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


def _resume_conflicts(cfg: TrainConfig, saved: TrainConfig, given, world: int, saved_world: int) -> list[str]:
    """The flags given with --resume that contradict the checkpoint's run (they would be ignored)."""
    if given is None:  # called from Python: the fields set away from their defaults
        default = TrainConfig()
        given = [f.name for f in dataclasses.fields(TrainConfig) if getattr(cfg, f.name) != getattr(default, f.name)]
    conflicts = []
    for name in given:
        if name in RESUMABLE:
            continue
        ours, theirs = getattr(cfg, name), getattr(saved, name)
        if name == "batch_size":  # the per-process batch may change with the world size, the global batch may not
            theirs = saved.batch_size * saved_world // world
        if name == "overrides":
            ours, theirs = sorted(map(tuple, ours)), sorted(map(tuple, theirs))
        if ours != theirs:
            flag = "--set" if name == "overrides" else "--" + name.replace("_", "-")
            conflicts.append(f"{flag} {ours} (the checkpoint's run has {theirs})")
    return conflicts


class StopOnSignal:
    """While active (in the main thread), SIGINT and SIGTERM ask the loop to stop at the next step
    boundary, where it saves a checkpoint; a second signal stops at once without saving."""

    def __init__(self) -> None:
        self.signum, self._previous = 0, {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum:
            raise Interrupted(signum, f"{name} again: stopped at once, the last checkpoint is kept")
        self.signum = signum
        log.warning("%s: saving a checkpoint after this step, then stopping (%s again stops at once)", name, name)

    def agreed(self, world: int, group) -> int:
        """The signal to stop for, the same on every process (any process that got one stops them all)."""
        if world == 1:
            return self.signum
        flag = torch.tensor([self.signum])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return int(flag)


def _worker_signals(worker_id: int) -> None:
    """Data loader workers leave Ctrl-C (sent to the whole process group) to the main process, which
    finishes the step and stops them; SIGTERM from the loader's shutdown ends them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def train(cfg: TrainConfig, resume: bool = False, given=None) -> dict:
    """Run (or resume) pretraining; returns a summary dict. Works under torchrun or as one process.

    given: the TrainConfig fields the user set (the CLI's flags); with resume, those that contradict the
    checkpoint's run are refused. None: the fields that differ from TrainConfig's defaults.
    """
    rank, world, local_rank = _distributed()
    device = setup_device(cfg.device, local_rank, world)
    use_cuda = device.type == "cuda"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    out_dir = Path(cfg.out_dir)
    ckpt_path = out_dir / "checkpoint.pt"
    if rank == 0:
        from hear_mamclap.checkpoint import CONFIG_NAME, WEIGHTS_NAME
        for target in (ckpt_path, out_dir / "encoder" / WEIGHTS_NAME, out_dir / "encoder" / CONFIG_NAME):
            for stale in atomic.remove_stale(target):
                log.info("removed %s, left by a run killed while saving", stale)

    start_step, state = 0, None
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        state = checkpointing.load(ckpt_path)
        saved_dict = dataclasses.asdict(TrainConfig.from_dict(state["train_config"]))
        from_cli = {k: getattr(cfg, k) for k in RESUMABLE}
        from_cli.update(data=cfg.data or saved_dict["data"], teacher=cfg.teacher or saved_dict["teacher"],
                        cache=cfg.cache or saved_dict["cache"])
        saved_world = state.get("world_size", 1)
        saved = TrainConfig(**{**saved_dict, **from_cli, "stop_at": 0})
        conflicts = _resume_conflicts(cfg, saved, given, world, saved_world)
        if conflicts:
            raise UserError(f"--resume continues the run saved in {ckpt_path}, but {'; '.join(conflicts)}. A resumed "
                            f"run takes only --{', --'.join(k.replace('_', '-') for k in RESUMABLE)} from the command "
                            "line: drop the others, or start a new run in another --out-dir")
        if state["step"] > cfg.steps:
            raise UserError(f"--steps {cfg.steps}: the checkpoint in {ckpt_path} is already at step {state['step']}")
        if cfg.stop_at and cfg.stop_at <= state["step"]:
            raise UserError(f"--stop-at {cfg.stop_at}: the checkpoint in {ckpt_path} is already at step "
                            f"{state['step']}; stop later, or leave --stop-at out")
        cfg = dataclasses.replace(saved, stop_at=cfg.stop_at)
        # On another number of processes, keep the global batch (so the data order, the masks and the
        # learning rate continue unchanged): the per-process batch absorbs the difference.
        if saved_world != world:
            global_batch = saved.batch_size * saved.accum * saved_world
            if global_batch % (world * saved.accum):
                raise ValueError(f"--resume on {world} processes: the checkpoint's global batch {global_batch} "
                                 f"(batch {saved.batch_size} x accum {saved.accum} x {saved_world} processes) "
                                 f"does not split evenly")
            cfg = dataclasses.replace(cfg, batch_size=global_batch // (world * saved.accum))
        start_step = state["step"]
    torch.manual_seed(cfg.seed)

    dataset = AudioClips(cfg.data, n_samples=1, require_labels=cfg.pretrain_config().uses_labels)
    cache = FeatureCache(cfg.cache, device) if cfg.cache else None
    model, teacher = _build(cfg, dataset.n_classes, cache.teacher_dim if cache is not None and cache.has_teacher
                            else None)
    dataset.n_samples = n_samples_for(model.cfg.encoder)
    if cache is not None:  # refuse a cache built for other data, geometry or teacher
        cache.check(cache_key(dataset, model.cfg.encoder, cfg.teacher if model.cfg.uses_teacher else None,
                              teacher_config(cfg)), teacher=model.cfg.uses_teacher)
    if cfg.init_from and state is None:
        init_encoder(model.encoder, cfg.init_from)
    model.to(device)
    if teacher is not None:
        teacher.to(device)

    global_batch = cfg.batch_size * cfg.accum * world
    peak_lr = cfg.base_lr * global_batch / 256
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=peak_lr, betas=(0.9, 0.95),
                                  fused=use_cuda)
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
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.workers, pin_memory=use_cuda,
                            persistent_workers=False, worker_init_fn=_worker_signals if cfg.workers else None)
        inputs = online_inputs(loader, model.encoder.frontend, teacher, device, amp, sampler=sampler,
                               cache=cache if model.cfg.uses_teacher else None)
    if cfg.fixed_batch:
        inputs = fixed_inputs(inputs, len(sampler))
    # The stop flag is agreed over a CPU group, so checking it each step never waits for the GPU.
    stop_group = dist.new_group(backend="gloo") if world > 1 and use_cuda else None

    writer = None
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        from training.compat import prepare_tensorboard
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

    def export(folder: Path, at_step: int) -> None:
        from hear_mamclap.checkpoint import export_encoder
        # Provenance the harnesses copy into every results file, so tables can group runs by variant,
        # seed and loss weights without parsing run names; clips_seen places a snapshot on a scaling curve.
        export_encoder(model.encoder, folder, metadata={
            "variant": cfg.variant, "size": cfg.size, "seed": cfg.seed, "step": at_step, "world_size": world,
            "clips_seen": at_step * global_batch,
            "pretrain_config": model.cfg.to_dict(), "train_config": dataclasses.asdict(cfg)})

    step, skipped, t0, last_losses = start_step, 0, time.perf_counter(), {}
    progress = None
    if rank == 0:
        from tqdm import tqdm
        progress = tqdm(total=cfg.steps, initial=start_step, desc=f"pretrain {cfg.variant}", unit="step")
    stopper = StopOnSignal()
    with contextlib.ExitStack() as finish:
        finish.enter_context(stopper)
        if rank == 0:
            for close in (log_file.close, writer.close, progress.close):
                finish.callback(close)
        micro = 0
        sums: dict[str, torch.Tensor] = {}
        unchecked: list[tuple[int, torch.Tensor]] = []  # (step, loss on the device) not yet read on the host
        for mel, targets, labels, n_skipped in inputs:  # (B, T, n_mels), (B, n_patches, D) or None, (B, classes)
            skipped += n_skipped
            sync = micro == cfg.accum - 1
            noise = masking_noise(cfg.seed, step, global_batch, model.cfg.encoder.n_patches)
            row = (micro * world + rank) * cfg.batch_size
            if cfg.mix_p > 0 or cfg.gain_db > 0:  # draws depend on (seed, step, row): resumable, world-size free
                gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) * 65_537 + row + 1)
                fe = model.encoder.frontend
                mel, labels, targets = augment_batch(mel, labels, gen, fe.mean, fe.std, cfg.mix_p, cfg.mix_gain_db,
                                                     cfg.gain_db, targets if cfg.mix_targets == "power" else None)
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
            stop_signal = stopper.agreed(world, stop_group)  # a stop saves after this step: check its loss first
            nxt = step + 1
            read_now = (nxt % cfg.log_every == 0 or nxt % cfg.ckpt_every == 0 or nxt in (cfg.steps, cfg.stop_at)
                        or bool(stop_signal))
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
                    raise FloatingPointError(msg)
                loss_value = values[-1]
            lr = warmup_cosine(step, peak_lr, cfg.warmup_steps, cfg.steps)
            set_lr(optimizer, lr)
            grad_norm = clip_and_step(model, optimizer, cfg.clip_grad)
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
            if step % cfg.ckpt_every == 0 or step == cfg.steps or step == cfg.stop_at or stop_signal:
                save(step)
            if rank == 0 and cfg.export_every and step % cfg.export_every == 0 and step < cfg.steps:
                export(out_dir / f"encoder-step{step:06d}", step)  # a point of the scaling curve
            if stop_signal and step < cfg.steps:
                raise Interrupted(stop_signal, f"stopped by {signal.Signals(stop_signal).name} at step {step} of "
                                               f"{cfg.steps}: checkpoint saved to {ckpt_path}; continue with "
                                               f"`mamclap pretrain --out-dir {out_dir} --steps {cfg.steps} --resume`")
            if step == cfg.stop_at:
                break
    if rank == 0:
        export(out_dir / "encoder", step)
    if world > 1:
        dist.barrier()
    return {"step": step, "losses": {k: float(v) for k, v in last_losses.items()}, "skipped": skipped}



def register(subparsers) -> None:
    """`mamclap pretrain`: flags mirror TrainConfig's fields, each checked as it is parsed (--preset is the
    old name of --variant)."""
    p = subparsers.add_parser("pretrain", help="pretrain MAM / MAM-CLAP / SupMAM / SupMAM-CLAP",
                              description=__doc__.splitlines()[0])
    # Flags default to None (the help shows TrainConfig's default), so --resume can tell which were given.
    checks.add_config_arguments(p, TrainConfig, {**VALUE_RULES, **FLAG_TYPES}, CHOICES, skip=("overrides",),
                                default_none=True, aliases={"variant": ["--preset"]})
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", type=override,
                   help="override a PretrainConfig field, e.g. --set lambda_cls=0.1 --set "
                        "distill_visible_weight=0 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoint.pt")
    p.set_defaults(func=_run)


# Flag types beyond VALUE_RULES: paths checked when parsed (TrainConfig holds them as strings).
FLAG_TYPES = {"data": checks.existing_path, "out_dir": checks.out_dir, "teacher": checks.existing_file,
              "init_from": checks.existing_path,
              "cache": checks.existing_path}


def _run(args) -> int:
    given = {k: str(v) if isinstance(v, Path) else v
             for k, v in checks.given_fields(args, TrainConfig, skip=("overrides",)).items()}
    cfg = TrainConfig(**given, overrides=tuple(args.set))
    if not cfg.data and not args.resume:
        raise UserError("--data is required: a folder of shards, an AudioSet CSV or a folder of audio")
    if not args.resume:  # the whole PretrainConfig, before any data is read: --set values that clash fail here
        try:
            cfg.pretrain_config()
        except ValueError as err:
            raise UserError(f"--variant {cfg.variant} --size {cfg.size}" + "".join(
                f" --set {k}={v}" for k, v in cfg.overrides) + f": {err}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    summary = train(cfg, resume=args.resume, given=[*given, *(["overrides"] if args.set else [])])
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(summary, indent=1, default=float))
    return 0
