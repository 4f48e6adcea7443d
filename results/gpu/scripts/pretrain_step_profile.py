"""The pretraining step's probes on the GPU (not part of the package): attention kernels and where a step's time goes.

    python pretrain_step_profile.py attention       # SDPA fwd+bwd per backend at the encoder's and decoder's shapes
    python pretrain_step_profile.py step [SIZE]     # compiled SupMAM-CLAP step on fixed inputs, torch.profiler by kernel kind
"""
from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F


def timed(fn, iters: int = 10) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def attention() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    shapes = {"decoder B256 H16 L513 D32": (256, 16, 513, 32), "encoder-B B256 H12 L103 D64": (256, 12, 103, 64),
              "encoder-S B256 H6 L103 D64": (256, 6, 103, 64)}
    for name, (B, H, L, D) in shapes.items():
        q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        g = torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16)
        flops = 4 * B * H * L * L * D * 3.5  # forward + backward (2.5x)
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
            def step():
                with sdpa_kernel(backend):
                    F.scaled_dot_product_attention(q, k, v).backward(g)
            try:
                ms = timed(step)
                print(f"{name:30s} {backend.name:20s} fwd+bwd {ms:7.3f} ms  {flops / ms / 1e9:6.0f} TFLOP/s", flush=True)
            except RuntimeError as e:
                print(f"{name:30s} {backend.name:20s} failed: {str(e).splitlines()[0][:100]}", flush=True)


def category(name: str) -> str:
    n = name.lower()
    if any(s in n for s in ("flash", "fmha", "attention", "cudnn")):
        return "attention"
    if any(s in n for s in ("gemm", "nvjet", "cutlass", "xmma", "sm90", "matmul")):
        return "matmul"
    if "triton" in n:
        return "fused (triton)"
    if "adam" in n or "multi_tensor" in n:
        return "optimizer"
    return "other"


def step(size: str = "base", attention_choice: str = "auto") -> None:
    from training.pretrain.mam import MAMPretrainer, PretrainConfig
    from training.pretrain.train import attention_kernels
    torch.backends.cuda.matmul.allow_tf32 = True
    B = 256
    cfg = PretrainConfig.preset("supmam_clap", size=size)
    model = MAMPretrainer(cfg).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    fwd = torch.compile(model)
    mel = torch.randn(B, 1024, 128, device="cuda")
    tgt = torch.randn(B, 512, 768, device="cuda", dtype=torch.bfloat16)
    lab = (torch.rand(B, 527, device="cuda") < 0.02).float()

    def one():
        with torch.autocast("cuda", torch.bfloat16), attention_kernels(attention_choice, True):
            out = fwd(mel, teacher=tgt, labels=lab)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = time.perf_counter()
    one()
    torch.cuda.synchronize()
    print(f"first step (compile) {time.perf_counter() - t:.1f} s")
    ms = timed(one)
    print(f"step {size} B={B}: {ms:.1f} ms, {B / ms * 1e3:.0f} samples/s")
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            one()
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    rows = []
    for e in prof.key_averages():
        us = e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
        if us <= 0:
            continue
        totals[category(e.key)] = totals.get(category(e.key), 0.0) + us / 3
        rows.append((us / 3, e.count // 3, e.key))
    total = sum(totals.values())
    print(f"GPU kernel time per step {total / 1e3:.1f} ms (wall {ms:.1f} ms)")
    for k, v in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {k:16s} {v / 1e3:7.2f} ms  {v / total:5.1%}")
    for us, count, key in sorted(rows, reverse=True)[:25]:
        print(f"  {us / 1e3:7.2f} ms x{count:<4d} {key[:110]}")


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "attention":
        attention()
    else:
        step(*sys.argv[2:])
