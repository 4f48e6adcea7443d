"""What the pretraining loop and the CLAP trainer share: device set-up, AdamW groups, the learning rate."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from hear_mamclap.errors import UserError


def resolve_device(device: str = "auto", local_rank: int = 0, world: int = 1) -> torch.device:
    """auto | cpu | cuda | cuda:N -> this process's device (cuda:local_rank under torchrun); UserError for a
    device that is not there, rather than a silent fall-back to the CPU."""
    if device != "auto" and device != "cpu" and not (device == "cuda" or device.startswith("cuda:")):
        raise UserError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is visible (torch.cuda.is_available() is False); "
                        "use --device cpu or auto")
    if not device.startswith("cuda:"):
        return torch.device(f"cuda:{local_rank}")
    if world > 1:
        raise UserError(f"--device {device}: under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda")
    index = device.split(":", 1)[1]
    if not index.isdigit() or int(index) >= torch.cuda.device_count():
        raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device(device)


def setup_device(device: str = "auto", local_rank: int = 0, world: int = 1) -> torch.device:
    """resolve_device, then on CUDA make it the current device and let float32 matmuls and convolutions
    (what runs outside bf16 autocast) use TF32."""
    dev = resolve_device(device, local_rank, world)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on parameters of 2 or more dimensions, none on the 1-d and 0-d ones
    (biases, norm weights, the logit scale)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, peak: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up to `peak` over warmup_steps, then
    cosine decay to zero at total_steps, and zero after."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * peak * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_and_step(model: nn.Module, optimizer: torch.optim.Optimizer, clip_grad: float) -> torch.Tensor:
    """Clip the gradient norm to clip_grad (0: no clipping), step and clear the gradients; returns the norm
    before clipping (for the log)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad if clip_grad > 0 else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
