"""`mamclap finetune`: the paper's fine-tuning protocol, with AudioMAE's recipe as the default.

The encoder (an export, a pretraining checkpoint, or random init for "from scratch") gets a head on its
mean-pooled patch tokens (AudioMAE's global pool: mean, LayerNorm, linear) and is trained end to end, or
with the encoder frozen (the frozen-feature baseline). Every part of the recipe is a field of
`FinetuneConfig`; `FinetuneConfig.for_task` starts from AudioMAE's values for the task (RECIPES):

  layer-wise lr decay     block i trains at lr x layer_decay ** (depth - i); embeddings lower, head at lr
  drop path               stochastic depth rising to drop_path at the last block
  mixup                   a share of the clips is mixed with another clip of the batch (waveforms and
                          targets, lambda ~ Beta(mixup_alpha, mixup_alpha)), as AudioMAE's data set does
  SpecAugment             one frequency band and one time span of the log-mel set to 0 (the data mean)
  patch masking           whole time columns and frequency rows of the patch grid dropped (AudioMAE's mask_2d)
  losses                  BCE for multi-label tasks, cross-entropy with label smoothing for single-label
  weighted sampling       for unbalanced multi-label sets (AS-2M): each epoch draws a share of the clips,
                          without replacement, with probability proportional to the summed inverse class
                          frequencies of their labels (AudioMAE's gen_weight.py)
  schedule                AdamW, linear warm-up then cosine to min_lr, lr = base_lr x global batch / 256

Augmentation is applied in the training step only; `predict` (validation, test) sees clean inputs in eval
mode. Its random draws are a function of (seed, step, micro-batch, rank), the sample order a function of
(seed, step) (training.pretrain.data.StepBatches), and the checkpoint holds every RNG state, so `--resume`
after a kill continues exactly. The model of the best validation epoch is the one tested; the results JSON
(training.eval.results, harness "finetune") carries the command and the checkpoint's pretraining provenance.

Runs under torchrun (DDP, NCCL on GPU, gloo on CPU) or as one process; bf16 autocast on GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder
from training.eval import results as results_mod
from training.eval.finetune_tasks import TASKS, Clips, Example, Fold, TaskData, load_task, score
from training.pretrain import checkpointing
from training.pretrain.data import StepBatches
from training.pretrain.optim import setup_device, warmup_cosine
from training.pretrain.train import _distributed, n_samples_for

log = logging.getLogger("mamclap.finetune")


@dataclass(frozen=True)
class FinetuneConfig:
    task: str = "as20k"              # as20k | as2m | esc50 | spcv2 | spcv2_12 | spcv1_12 (finetune_tasks.TASKS)
    data: str = ""                   # the task's data folder, in its own layout
    init: str = ""                   # encoder export or pretraining checkpoint.pt; "" = random init (from scratch)
    size: str = "base"               # encoder preset for random init: tiny | small | base
    freeze: bool = False             # train the head only, on frozen features (the frozen-feature baseline)
    name: str = ""                   # model name in the results; default from the checkpoint's provenance
    out_dir: str = "runs/finetune"
    results: str = ""                # results JSON; default OUT_DIR/results.json
    frames: int = 0                  # input frames; 0 = the task's (1024 / 512 / 128), at most the encoder's
    # optimisation (AudioMAE main_finetune_as.py and ft_as.sh: AS-20K)
    epochs: int = 60
    batch_size: int = 32             # per process and micro-batch
    accum: int = 1                   # micro-batches per optimizer step
    base_lr: float = 1e-3            # lr = base_lr x global batch / 256
    min_lr: float = 1e-6             # where the cosine ends
    weight_decay: float = 5e-4       # not on biases, norms and the CLS token
    layer_decay: float = 0.75        # layer-wise lr decay (BEiT, AudioMAE); 1 = the same lr everywhere
    warmup_epochs: float = 4.0
    clip_grad: float = 0.0           # gradient-norm clipping; 0 = off (AudioMAE: off)
    drop_path: float = 0.1
    head_init_std: float = 2e-5      # truncated-normal init of the head's weights (AudioMAE)
    # augmentation (training only)
    mixup: float = 0.5               # probability that a clip is mixed with another
    mixup_alpha: float = 10.0        # lambda ~ Beta(alpha, alpha) (AST / AudioMAE: Beta(10, 10))
    freq_mask: float = 0.375         # widest SpecAugment frequency band, share of the mel bins (48 / 128)
    time_mask: float = 0.1875        # widest SpecAugment time span, share of the frames (192 / 1024)
    mask_t_prob: float = 0.2         # share of time-patch columns dropped from the encoder input
    mask_f_prob: float = 0.2         # share of frequency-patch rows dropped
    label_smoothing: float = 0.1     # single-label tasks (cross-entropy); multi-label tasks use plain BCE
    # data
    weighted_sampler: bool = False   # draw clips by inverse class frequency (unbalanced multi-label sets)
    epoch_fraction: float = 1.0      # with the weighted sampler: the share of the training clips per epoch
    valid_fraction: float = 0.1      # validation share held out from training when the task has no valid split
    fold: int = 0                    # ESC-50: run fold k only; 0 = every fold
    # run
    seed: int = 0
    workers: int = 2
    device: str = "auto"             # auto | cpu | cuda
    ckpt_every: int = 0              # steps between checkpoints inside an epoch; 0 = at epoch ends only
    log_every: int = 10
    stop_at: int = 0                 # stop (with a checkpoint) after this step of each fold; resume later

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {sorted(TASKS)}")
        for name in ("mixup", "mask_t_prob", "mask_f_prob", "label_smoothing", "drop_path", "freq_mask",
                     "time_mask", "valid_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0 and not (name == "mixup" and self.mixup == 1.0):
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0.0 < self.epoch_fraction <= 1.0:
            raise ValueError(f"epoch_fraction must be in (0, 1], got {self.epoch_fraction}")
        if self.epochs < 1 or self.batch_size < 1 or self.accum < 1:
            raise ValueError("epochs, batch_size and accum must be >= 1")

    @classmethod
    def for_task(cls, task: str, **overrides) -> FinetuneConfig:
        """AudioMAE's recipe for the task (RECIPES), keyword overrides on top."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
        return cls(**{**RECIPES.get(task, {}), "task": task, **overrides})

    @property
    def kind(self) -> str:
        """finetune | frozen (pretrained encoder) | scratch | scratch-frozen (random encoder)."""
        if self.init:
            return "frozen" if self.freeze else "finetune"
        return "scratch-frozen" if self.freeze else "scratch"


# AudioMAE's per-task values where they differ from the defaults (the AS-20K recipe). AS-2M: README and
# submit_ft_mask_bal.sh (blr 2e-4, 100 epochs, 10 warm-up, weighted sampler with 200k of 2M clips per epoch).
# ESC-50: main_finetune_esc.py (batch 64, 50 epochs, 5 warm-up, weight decay 0.05, no mixup). Speech Commands:
# no script is published; the AudioSet values with 128 frames, our choice.
RECIPES: dict[str, dict] = {
    "as2m": {"epochs": 100, "warmup_epochs": 10.0, "base_lr": 2e-4, "weighted_sampler": True,
             "epoch_fraction": 0.1, "valid_fraction": 0.01},
    "esc50": {"epochs": 50, "warmup_epochs": 5.0, "batch_size": 64, "weight_decay": 0.05, "mixup": 0.0},
}


# ---------------------------------------------------------------------------------------------- model


class Classifier(nn.Module):
    """The encoder, the mean of its patch tokens, a LayerNorm and a linear head (AudioMAE's global pool)."""

    def __init__(self, encoder: MAMCLAPEncoder, n_classes: int, head_init_std: float = 2e-5) -> None:
        super().__init__()
        self.encoder = encoder
        self.fc_norm = nn.LayerNorm(encoder.cfg.width, eps=encoder.cfg.norm_eps)
        self.head = nn.Linear(encoder.cfg.width, n_classes)
        nn.init.trunc_normal_(self.head.weight, std=head_init_std)
        nn.init.zeros_(self.head.bias)

    def forward(self, mel: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised log-mel (B, T, n_mels), optional kept patch indices (B, L) -> logits (B, n_classes)."""
        tokens, _ = self.encoder.forward_features(mel, ids_keep=ids_keep)  # (B, [1 +] L, D)
        if self.encoder.cls_token is not None:
            tokens = tokens[:, 1:]  # (B, L, D)
        return self.head(self.fc_norm(tokens.mean(1)))  # (B, n_classes)


def layer_id(name: str, depth: int) -> int:
    """Depth of a Classifier parameter for lr decay: 0 for the patch embedding and CLS token, i + 1 for
    block i, depth + 1 for the encoder's final norm and the head."""
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    if name.startswith(("encoder.patch_embed.", "encoder.cls_token")):
        return 0
    return depth + 1


def param_groups(model: Classifier, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups with an "lr_scale" of layer_decay ** (depth + 1 - layer id) each; no weight decay on
    biases, norms and the CLS token. Frozen parameters are left out."""
    depth = model.encoder.cfg.depth
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid = layer_id(name, depth)
        no_decay = p.ndim < 2 or name.endswith(".bias") or name.endswith("cls_token")
        group = groups.setdefault((lid, no_decay), {
            "params": [], "names": [], "layer": lid, "lr_scale": layer_decay ** (depth + 1 - lid),
            "weight_decay": 0.0 if no_decay else weight_decay})
        group["params"].append(p)
        group["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def lr_for_step(step: int, total_steps: int, warmup_steps: int, peak: float, min_lr: float) -> float:
    """Linear warm-up to peak, then cosine from peak to min_lr at total_steps (AudioMAE's lr_sched)."""
    if step < warmup_steps:
        return warmup_cosine(step, peak, warmup_steps, total_steps)
    return min_lr + (peak - min_lr) * warmup_cosine(step, 1.0, warmup_steps, total_steps)


# ---------------------------------------------------------------------------------------------- augmentation


def mixup(wav: torch.Tensor, target: torch.Tensor, rng: np.random.Generator, p: float,
          alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each clip, with probability p, becomes lam x itself + (1 - lam) x another clip of the batch, and its
    target the same mixture of the two targets; lam ~ Beta(alpha, alpha) per clip."""
    B = wav.shape[0]
    if p == 0 or B < 2:
        return wav, target
    partner = torch.from_numpy(rng.permutation(B)).to(wav.device)
    lam = np.where(rng.random(B) < p, rng.beta(alpha, alpha, B), 1.0)
    lam = torch.from_numpy(lam).to(wav.device, wav.dtype)[:, None]  # (B, 1)
    return lam * wav + (1 - lam) * wav[partner], lam * target + (1 - lam) * target[partner]


def spec_mask(mel: torch.Tensor, rng: np.random.Generator, freq_share: float, time_share: float) -> torch.Tensor:
    """SpecAugment: per clip, one band of up to freq_share of the bins and one span of up to time_share of
    the frames set to 0 (the normalised data mean), widths and places uniform. (B, T, F) -> (B, T, F)."""
    B, T, Fr = mel.shape
    keep = torch.ones(B, T, Fr, dtype=torch.bool, device=mel.device)
    for axis, share, n in ((2, freq_share, Fr), (1, time_share, T)):
        widths = rng.integers(0, int(share * n) + 1, size=B)  # 0 .. floor(share * n)
        starts = (rng.random(B) * (n - widths + 1)).astype(np.int64)
        pos = torch.arange(n, device=mel.device)[None]  # (1, n)
        lo = torch.from_numpy(starts).to(mel.device)[:, None]
        hi = lo + torch.from_numpy(widths).to(mel.device)[:, None]
        band = (pos >= lo) & (pos < hi)  # (B, n)
        keep &= ~(band[:, None, :] if axis == 2 else band[:, :, None])
    return mel * keep


def patch_keep(batch: int, grid: tuple[int, int], rng: np.random.Generator, t_prob: float, f_prob: float,
               device: torch.device) -> torch.Tensor | None:
    """AudioMAE's 2-D patch masking: per clip, keep floor((1 - t_prob) x P_t) random time columns and
    floor((1 - f_prob) x P_f) random frequency rows (at least one each) of the (P_t, P_f) grid. Returns the
    kept patch indices (B, kept) in time-major order, or None when nothing is dropped."""
    if t_prob == 0 and f_prob == 0:
        return None
    P_t, P_f = grid
    keep_t, keep_f = max(1, int(P_t * (1 - t_prob))), max(1, int(P_f * (1 - f_prob)))
    ts = np.sort(np.argsort(rng.random((batch, P_t)), axis=1)[:, :keep_t], axis=1)  # (B, keep_t)
    fs = np.sort(np.argsort(rng.random((batch, P_f)), axis=1)[:, :keep_f], axis=1)  # (B, keep_f)
    ids = ts[:, :, None] * P_f + fs[:, None, :]  # (B, keep_t, keep_f) time-major
    return torch.from_numpy(ids.reshape(batch, -1)).to(device)


def step_rng(seed: int, step: int, micro: int, rank: int) -> np.random.Generator:
    """The generator of one micro-batch's augmentation draws: the same in a resumed run."""
    return np.random.default_rng([seed, step, micro, rank])


def loss_fn(logits: torch.Tensor, target: torch.Tensor, multilabel: bool, smoothing: float) -> torch.Tensor:
    """BCE with logits for multi-label targets; cross-entropy against (mixed) soft targets with label
    smoothing for single-label ones."""
    logits = logits.float()
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, target)
    soft = target * (1 - smoothing) + smoothing / target.shape[1]
    return -(soft * F.log_softmax(logits, dim=1)).sum(1).mean()


# ---------------------------------------------------------------------------------------------- sampling


def class_weights(examples: list[Example], n_classes: int) -> np.ndarray:
    """Per clip, the sum over its labels of 1000 / (label count + 0.01) (AudioMAE's gen_weight.py)."""
    counts = np.zeros(n_classes)
    for e in examples:
        counts[list(e.labels)] += 1
    per_label = 1000.0 / (counts + 0.01)
    return np.array([per_label[list(e.labels)].sum() for e in examples])


class WeightedStepBatches(StepBatches):
    """StepBatches whose passes are `per_pass` clips drawn without replacement with probability proportional
    to `weights` (exponential clocks: the smallest Exp(1) / weight come first), seeded by (seed, pass)."""

    def __init__(self, weights: np.ndarray, per_pass: int, *args) -> None:
        super().__init__(per_pass, *args)
        self.weights = np.asarray(weights, dtype=np.float64)
        if int((self.weights > 0).sum()) < per_pass:
            raise ValueError(f"weighted sampling of {per_pass} clips per pass needs as many clips with a "
                             f"positive weight, got {int((self.weights > 0).sum())}")

    def _position(self, pos: int) -> int:
        epoch, offset = divmod(pos, self.n)
        if epoch not in self._perms:
            clocks = np.random.default_rng([self.seed, epoch]).exponential(size=len(self.weights))
            with np.errstate(divide="ignore"):
                order = np.argsort(clocks / self.weights, kind="stable")
            self._perms = {epoch: order[:self.n]}
        return int(self._perms[epoch][offset])


# ---------------------------------------------------------------------------------------------- running


@dataclass
class Env:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    use_cuda: bool

    @property
    def amp(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.use_cuda else torch.autocast("cpu", enabled=False)


def setup(device: str) -> Env:
    """torchrun's process group (NCCL on GPU, gloo on CPU) or one process; TF32 on GPU."""
    rank, world, local_rank = _distributed()
    dev = setup_device(device, local_rank, world)
    use_cuda = dev.type == "cuda"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Env(rank, world, local_rank, dev, use_cuda)


def build_encoder(cfg: FinetuneConfig) -> MAMCLAPEncoder:
    if cfg.init:
        from hear_mamclap.checkpoint import load_encoder
        return load_encoder(cfg.init)
    return MAMCLAPEncoder(EncoderConfig.preset(cfg.size))


def input_frames(cfg: FinetuneConfig, enc: EncoderConfig) -> int:
    """The task's frames (or cfg.frames), at most the encoder's, a whole number of patches."""
    frames = min(cfg.frames or TASKS[cfg.task].frames, enc.target_frames)
    frames -= frames % enc.patch_size[0]
    if frames <= 0:
        raise ValueError(f"{frames} frames: the input must hold at least one patch ({enc.patch_size[0]} frames)")
    return frames


@torch.no_grad()
def predict(model: Classifier, dataset: Clips, env: Env, batch_size: int,
            workers: int) -> tuple[np.ndarray, np.ndarray]:
    """(logits, targets) of every clip in order, in eval mode on clean inputs (no mixup, SpecAugment, patch
    masking or drop path); under DDP each process takes every world-th clip and all gather the results."""
    was_training = model.training
    model.eval()
    mine = list(range(env.rank, len(dataset), env.world))
    loader = DataLoader(Subset(dataset, mine), batch_size=batch_size, shuffle=False, num_workers=workers,
                        generator=torch.Generator())  # its own generator: the global RNG stream stays untouched
    logits, targets = [], []
    for wav, target in loader:
        mel = model.encoder.frontend(wav.to(env.device))  # (B, T, n_mels)
        with env.amp:
            logits.append(model(mel).float().cpu())
        targets.append(target)
    model.train(was_training)
    n_classes = dataset.n_classes
    part = (torch.cat(logits).numpy() if logits else np.zeros((0, n_classes), np.float32),
            torch.cat(targets).numpy() if targets else np.zeros((0, n_classes), np.float32))
    if env.world == 1:
        return part
    parts = [None] * env.world
    dist.all_gather_object(parts, (mine, *part))
    out_logits = np.zeros((len(dataset), n_classes), np.float32)
    out_targets = np.zeros((len(dataset), n_classes), np.float32)
    for idx, lg, tg in parts:
        out_logits[idx], out_targets[idx] = lg, tg
    return out_logits, out_targets


def _weights_only(state: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


@dataclass(frozen=True)
class Schedule:
    """The steps of one fold: an epoch is one pass (per_pass clips) in whole global batches."""
    global_batch: int
    per_pass: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    min_lr: float

    @classmethod
    def of(cls, cfg: FinetuneConfig, n_train: int, world: int) -> Schedule:
        global_batch = cfg.batch_size * cfg.accum * world
        per_pass = max(1, round(cfg.epoch_fraction * n_train)) if cfg.weighted_sampler else n_train
        steps_per_epoch = max(1, per_pass // global_batch)
        return cls(global_batch, per_pass, steps_per_epoch, cfg.epochs * steps_per_epoch,
                   round(cfg.warmup_epochs * steps_per_epoch), cfg.base_lr * global_batch / 256, cfg.min_lr)

    def lr(self, step: int) -> float:
        return lr_for_step(step, self.total_steps, self.warmup_steps, self.peak_lr, self.min_lr)


def build_model(cfg: FinetuneConfig, n_classes: int) -> Classifier:
    """The encoder (seeded when random) and head; drop path on, or the encoder frozen."""
    torch.manual_seed(cfg.seed)
    model = Classifier(build_encoder(cfg), n_classes, cfg.head_init_std)
    if cfg.freeze:
        model.encoder.requires_grad_(False)
    else:
        model.encoder.set_drop_path(cfg.drop_path)
    return model


def training_inputs(model: Classifier, wav: torch.Tensor, target: torch.Tensor, cfg: FinetuneConfig,
                    grid: tuple[int, int], rng: np.random.Generator):
    """One training micro-batch after augmentation: (log-mel (B, T, n_mels), targets (B, K), kept patch
    indices (B, L) or None). Mixup acts on the waveforms, SpecAugment on the log-mel."""
    wav, target = mixup(wav, target, rng, cfg.mixup, cfg.mixup_alpha)
    with torch.no_grad():
        mel = spec_mask(model.encoder.frontend(wav), rng, cfg.freq_mask, cfg.time_mask)  # (B, T, n_mels)
    return mel, target, patch_keep(wav.shape[0], grid, rng, cfg.mask_t_prob, cfg.mask_f_prob, wav.device)


class RunLog:
    """Rank 0's log.jsonl and progress bar; other ranks write nothing."""

    def __init__(self, out_dir: Path, env: Env, total: int, start: int, desc: str) -> None:
        self.file = self.bar = None
        if env.rank == 0:
            from tqdm import tqdm
            out_dir.mkdir(parents=True, exist_ok=True)
            self.file = open(out_dir / "log.jsonl", "a")
            self.bar = tqdm(total=total, initial=start, desc=desc, unit="step")

    def write(self, record: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
            if "loss" in record:
                self.bar.set_postfix(loss=f"{record['loss']:.4f}")

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.file is not None:
            self.bar.close()
            self.file.close()


def train_fold(cfg: FinetuneConfig, task: TaskData, fold: Fold, out_dir: Path, env: Env, resume: bool) -> dict:
    """Fine-tune on one fold and test its best validation epoch; returns the fold's result (also written to
    out_dir/fold.json, which a resumed run reuses instead of training the fold again)."""
    done, ckpt_path = out_dir / "fold.json", out_dir / "checkpoint.pt"
    if resume and done.is_file():
        return json.loads(done.read_text())
    info, n_classes = task.info, len(task.vocabulary)
    model = build_model(cfg, n_classes).to(env.device)
    enc = model.encoder.cfg
    frames = input_frames(cfg, enc)
    n_samples = n_samples_for(dataclasses.replace(enc, target_frames=frames))
    grid = (frames // enc.patch_size[0], enc.grid[1])
    train_set, valid_set, test_set = (Clips(s, n_classes, n_samples) for s in (fold.train, fold.valid, fold.test))
    sched = Schedule.of(cfg, len(train_set), env.world)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.layer_decay), lr=sched.peak_lr,
                                  fused=env.use_cuda)

    # Resume: weights, optimizer, RNG states, step, the validation history and the best epoch's weights.
    start_step, history, best, best_state = 0, [], {"epoch": None, "score": None}, None
    if resume and ckpt_path.is_file():
        state = checkpointing.load(ckpt_path)
        if state.get("world_size", 1) != env.world:
            raise ValueError(f"--resume: {ckpt_path} was written by {state.get('world_size', 1)} processes; "
                             f"resume it on as many (got {env.world})")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        checkpointing.set_rng_state(state["rng"][env.rank])
        start_step, history, best, best_state = state["step"], state["history"], state["best"], state["best_model"]

    def save(step: int) -> None:
        rngs = [None] * env.world
        if env.world > 1:
            dist.all_gather_object(rngs, checkpointing.rng_state())
        else:
            rngs = [checkpointing.rng_state()]
        if env.rank == 0:
            checkpointing.save_atomic({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "rng": rngs,
                "history": history, "best": best, "best_model": best_state, "world_size": env.world,
                "finetune_config": dataclasses.asdict(cfg), "encoder_config": enc.to_dict(),
                "vocabulary": task.vocabulary}, ckpt_path)

    ddp_model = DistributedDataParallel(model, device_ids=[env.local_rank] if env.use_cuda else None) \
        if env.world > 1 else model
    sampler_args = (cfg.batch_size, cfg.accum, env.world, env.rank, cfg.seed, start_step, sched.total_steps)
    sampler = (WeightedStepBatches(class_weights(fold.train, n_classes), sched.per_pass, *sampler_args)
               if cfg.weighted_sampler else StepBatches(len(train_set), *sampler_args))
    # The loader's own generator: drawing its seed must not move the global RNG that drop path uses.
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.workers, pin_memory=env.use_cuda,
                        generator=torch.Generator())
    run_log = RunLog(out_dir, env, sched.total_steps, start_step, f"finetune {cfg.task} {fold.name}")
    model.train()
    step, micro, loss_sum, n_summed = start_step, 0, torch.zeros((), device=env.device), 0
    for wav, target in loader:
        wav, target = wav.to(env.device, non_blocking=True), target.to(env.device, non_blocking=True)
        rng = step_rng(cfg.seed, step, micro, env.rank)
        mel, target, ids_keep = training_inputs(model, wav, target, cfg, grid, rng)
        sync = micro == cfg.accum - 1
        with ddp_model.no_sync() if (env.world > 1 and not sync) else contextlib.nullcontext():
            with env.amp:
                logits = ddp_model(mel, ids_keep)
            loss = loss_fn(logits, target, info.multilabel, cfg.label_smoothing)
            (loss / cfg.accum).backward()
        loss_sum += loss.detach() / cfg.accum  # stays on the device until it is logged
        micro += 1
        if not sync:
            continue
        micro = 0
        lr = sched.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        if cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step, n_summed = step + 1, n_summed + 1
        end_of_epoch = step % sched.steps_per_epoch == 0
        if step % cfg.log_every == 0 or end_of_epoch:
            loss_value = float(loss_sum) / n_summed  # mean over the steps since the last log line
            loss_sum.zero_()
            n_summed = 0
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss is {loss_value} at step {step}: lower --base-lr or check the data "
                                         f"(the last good checkpoint is kept at {ckpt_path})")
            run_log.write({"step": step, "lr": lr, "loss": loss_value})
        run_log.step()
        if end_of_epoch:
            record = {"epoch": step // sched.steps_per_epoch, "step": step}
            if fold.valid:
                record["valid"], _ = score(info.metric, *predict(model, valid_set, env, cfg.batch_size, cfg.workers))
                if best["score"] is None or record["valid"] > best["score"]:
                    best, best_state = {"epoch": record["epoch"], "score": record["valid"]}, \
                        _weights_only(model.state_dict())
            history.append(record)
            run_log.write(record)
            log.info("%s %s epoch %d/%d: %s", cfg.task, fold.name, record["epoch"], cfg.epochs,
                     f"valid {info.metric} {record['valid']:.4f}" if "valid" in record else "no validation set")
        if end_of_epoch or step == cfg.stop_at or (cfg.ckpt_every and step % cfg.ckpt_every == 0):
            save(step)
        if step == cfg.stop_at:
            break
    run_log.close()
    if step < sched.total_steps:  # stopped early at stop_at: resume later
        return {"stopped_at": step}

    # Test the best validation epoch (the last one when there is no validation set).
    final_state = _weights_only(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best = {"epoch": cfg.epochs, "score": None}
    test_score, details = score(info.metric, *predict(model, test_set, env, cfg.batch_size, cfg.workers))
    model.load_state_dict(final_state)
    result = {"fold": fold.name, "test": test_score, "best_epoch": best["epoch"], "valid": best["score"],
              "n_train": len(train_set), "n_valid": len(valid_set), "n_test": len(test_set),
              "steps": sched.total_steps, "frames": frames, **details}
    if env.rank == 0:
        results_mod.write_json_atomic(result, done)
    return result


def default_name(cfg: FinetuneConfig, metadata: dict) -> str:
    if cfg.name:
        return cfg.name
    if not cfg.init:
        return f"scratch-{cfg.size}"
    if metadata.get("variant"):
        return f"{metadata['variant']}-{metadata.get('size') or 'encoder'}"
    return Path(cfg.init).parent.name if Path(cfg.init).is_file() else Path(cfg.init).name


def finetune(cfg: FinetuneConfig, resume: bool = False, command: str | list[str] | None = None) -> dict | None:
    """Fine-tune on every fold of the task (or cfg.fold) and write the results JSON; returns the results
    document (rank 0), or None when the run stopped at stop_at before the end."""
    env = setup(cfg.device)
    out_dir = Path(cfg.out_dir)
    config_path = out_dir / "config.json"
    if resume:
        if not config_path.is_file():
            raise FileNotFoundError(f"--resume: no fine-tuning run in {out_dir} (no config.json)")
        saved = json.loads(config_path.read_text())
        runtime = {k: getattr(cfg, k) for k in ("out_dir", "workers", "device", "stop_at", "results")}
        cfg = FinetuneConfig(**{**saved, **runtime, "data": cfg.data or saved["data"],
                                "init": cfg.init or saved["init"]})
    elif env.rank == 0:
        results_mod.write_json_atomic(dataclasses.asdict(cfg), config_path)
    task = load_task(cfg.task, cfg.data, cfg.valid_fraction, cfg.seed)
    folds = task.folds if cfg.fold == 0 else [task.folds[cfg.fold - 1]]
    fold_results = []
    for fold in folds:
        fold_dir = out_dir if len(task.folds) == 1 else out_dir / fold.name
        result = train_fold(cfg, task, fold, fold_dir, env, resume)
        if "stopped_at" in result:
            return None
        fold_results.append(result)
    if env.world > 1:
        dist.barrier()
    if env.rank != 0:
        return None
    info = task.info
    metadata = {}
    if cfg.init:
        from hear_mamclap.checkpoint import read_metadata
        metadata = read_metadata(cfg.init)
    mean_test = sum(r["test"] for r in fold_results) / len(fold_results)
    entry = results_mod.task_entry(
        info.group, info.metric, mean_test, {info.metric: mean_test}, sum(r["n_test"] for r in fold_results),
        seed=cfg.seed, extra={"kind": cfg.kind, "folds": fold_results, "data": str(cfg.data),
                              "n_classes": len(task.vocabulary), "label": info.label})
    doc = results_mod.new_results(default_name(cfg, metadata), "finetune", {info.name: entry},
                                  checkpoint=cfg.init or None, command=command,
                                  settings={"kind": cfg.kind, "config": dataclasses.asdict(cfg)},
                                  pretraining=metadata)
    results_mod.save_results(doc, Path(cfg.results) if cfg.results else out_dir / "results.json")
    return doc


# ---------------------------------------------------------------------------------------------- command line


def _field_comments(cls: type) -> dict[str, str]:
    """The comment after each field in a dataclass's source: the --help text of its flag."""
    found = (re.match(r"\s+(\w+): [^=]+=.*?#\s*(.+)$", line) for line in inspect.getsource(cls).splitlines())
    return {m[1]: m[2] for m in found if m}


def register(subparsers) -> None:
    """`mamclap finetune`: flags mirror FinetuneConfig's fields; unset ones take the task's recipe."""
    p = subparsers.add_parser("finetune", help="fine-tune an encoder on AudioSet, ESC-50 or Speech Commands",
                              description=__doc__.splitlines()[0])
    defaults, comments = FinetuneConfig(), _field_comments(FinetuneConfig)
    in_recipes = {k for recipe in RECIPES.values() for k in recipe}
    for f in dataclasses.fields(FinetuneConfig):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        text = comments.get(f.name, "").replace("%", "%%")
        if f.name == "task":
            p.add_argument(flag, choices=sorted(TASKS), required=True, help=text)
            continue
        text += f" (default: {value!r}" + (", or the task's recipe)" if f.name in in_recipes else ")")
        if isinstance(value, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        else:
            p.add_argument(flag, type=type(value), default=argparse.SUPPRESS, help=text)
    p.add_argument("--resume", action="store_true", help="continue the run in OUT_DIR")
    p.set_defaults(func=_run)


def _run(args) -> int:
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneConfig) if hasattr(args, f.name)}
    cfg = FinetuneConfig.for_task(**given)
    if not cfg.data and not args.resume:
        raise SystemExit("--data is required: the task's data folder (see `training/eval/finetune_tasks.py`)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    doc = finetune(cfg, resume=args.resume)
    if doc is not None:
        entry = next(iter(doc["tasks"].values()))
        print(json.dumps({"model": doc["model"], "task": cfg.task, "metric": entry["metric"],
                          "score": entry["score"], "folds": entry["extra"]["folds"]}, indent=1))
    return 0
