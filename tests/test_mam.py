"""Pretraining wrapper contracts: presets, masking invariants, gradients everywhere, loss falls, checkpoints."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from hear_mamclap.checkpoint import load_encoder
from hear_mamclap.model import EncoderConfig, patchify
from training.pretrain.mam import VARIANTS, MAMPretrainer, PretrainConfig, random_masking


def batch(cfg: PretrainConfig, size: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised log-mel, teacher features on the patch grid, multi-hot labels."""
    g = torch.Generator().manual_seed(seed)
    enc = cfg.encoder
    mel = torch.randn(size, enc.target_frames, enc.n_mels, generator=g)
    teacher = torch.randn(size, enc.n_patches, cfg.teacher_dim, generator=g)
    labels = (torch.rand(size, cfg.n_classes, generator=g) < 0.3).float()
    return mel, teacher, labels


def test_presets_are_one_config() -> None:
    mam, mam_clap, supmam, both = (PretrainConfig.preset(v) for v in VARIANTS)
    assert mam.encoder.width == 768 and mam.mask_ratio == 0.8 and mam.decoder_width == 512
    assert (mam.uses_teacher, mam.uses_labels) == (False, False)
    assert (mam_clap.uses_teacher, mam_clap.uses_labels) == (True, False)
    assert (supmam.uses_teacher, supmam.uses_labels) == (False, True)
    assert (both.uses_teacher, both.uses_labels) == (True, True)
    assert PretrainConfig.preset("supmam_clap", size="small", lambda_cls=0.1).encoder.width == 384
    with pytest.raises(ValueError, match="unknown pretraining variant"):
        PretrainConfig.preset("mae")
    with pytest.raises(ValueError, match="at least one > 0"):
        PretrainConfig.preset("mam", size="tiny", recon_weight=0.0)
    with pytest.raises(ValueError, match="cls_token=True"):
        PretrainConfig.preset("supmam", size="tiny", cls_pooling="cls",
                              encoder=EncoderConfig.preset("tiny", cls_token=False))


def test_config_dict_round_trip(tmp_path) -> None:
    cfg = PretrainConfig.preset("supmam_clap", size="tiny", cls_pooling="cls")
    torch.save({"config": cfg.to_dict()}, tmp_path / "c.pt")
    assert PretrainConfig.from_dict(torch.load(tmp_path / "c.pt", weights_only=True)["config"]) == cfg


@pytest.mark.parametrize("ratio,n", [(0.8, 32), (0.75, 512), (0.5, 7), (0.0, 5), (0.99, 10)])
def test_masking_invariants(ratio: float, n: int) -> None:
    ids_keep, ids_restore, mask = random_masking(4, n, ratio, generator=torch.Generator().manual_seed(1))
    n_keep = max(1, round((1 - ratio) * n))
    assert ids_keep.shape == (4, n_keep) and ids_restore.shape == mask.shape == (4, n)
    assert (mask.sum(1) == n - n_keep).all()
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    for b in range(4):
        assert len(set(ids_keep[b].tolist())) == n_keep
        assert (mask[b, ids_keep[b]] == 0).all()  # the kept patches are exactly the unmasked ones
    # ids_restore inverts the shuffle: un-shuffling [kept, masked] with it gives patch order back.
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    assert torch.equal(ids_shuffle[:, :n_keep], ids_keep)
    assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), torch.arange(n).expand(4, n))
    # The mask in shuffled order is n_keep zeros then ones, as MAE builds it.
    shuffled_mask = torch.gather(mask, 1, ids_shuffle)
    assert not shuffled_mask[:, :n_keep].any() and shuffled_mask[:, n_keep:].all()


def test_encoder_sees_exactly_the_visible_patches() -> None:
    cfg = PretrainConfig.preset("mam", size="tiny")
    enc = MAMPretrainer(cfg).encoder
    mel, _, _ = batch(cfg, 2)
    ids_keep, _, mask = random_masking(2, cfg.encoder.n_patches, cfg.mask_ratio)
    seen = {}
    enc.blocks[0].register_forward_hook(lambda module, args, output: seen.setdefault("x", args[0]))
    enc.forward_features(mel, ids_keep=ids_keep)
    patches = patchify(mel, cfg.encoder.patch_size)  # (B, N, pt * pf)
    for b in range(2):
        visible = torch.nonzero(mask[b] == 0).flatten()  # unmasked patch indices, ascending
        assert torch.equal(torch.sort(ids_keep[b]).values, visible)
        expected = enc.patch_embed(patches[b, ids_keep[b]]) + enc.pos_embed[ids_keep[b]]  # (L, D)
        torch.testing.assert_close(seen["x"][b, 1:], expected)  # token 0 is CLS
        torch.testing.assert_close(seen["x"][b, 0], enc.cls_token[0, 0])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("overrides", [{}, {"cls_pooling": "cls", "norm_pix_loss": False}])
def test_every_parameter_gets_a_gradient(variant: str, overrides: dict) -> None:
    torch.manual_seed(0)
    cfg = PretrainConfig.preset(variant, size="tiny", **overrides)
    model = MAMPretrainer(cfg)
    mel, teacher, labels = batch(cfg)
    out = model(mel, teacher=teacher if cfg.uses_teacher else None, labels=labels if cfg.uses_labels else None)
    expected_terms = {"recon"} | ({"distill_visible", "distill_masked"} if "clap" in variant else set()) \
        | ({"cls"} if variant.startswith("sup") else set())
    assert set(out) == {"loss"} | expected_terms
    assert all(torch.isfinite(v) and not v.requires_grad for k, v in out.items() if k != "loss")
    out["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} has no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name} has a zero or NaN gradient"


def test_only_active_heads_exist() -> None:
    names = {n.split(".")[0] for n, _ in MAMPretrainer(PretrainConfig.preset("mam", size="tiny")).named_parameters()}
    assert "recon_head" in names and not names & {"visible_head", "masked_head", "cls_head"}
    distill_only = PretrainConfig.preset("mam_clap", size="tiny", recon_weight=0.0, distill_visible_weight=0.0)
    names = {n.split(".")[0] for n, _ in MAMPretrainer(distill_only).named_parameters()}
    assert "masked_head" in names and not names & {"recon_head", "visible_head"}
    cls_only = PretrainConfig.preset("supmam", size="tiny", recon_weight=0.0)
    model = MAMPretrainer(cls_only)
    assert not hasattr(model, "decoder_blocks")
    mel, _, labels = batch(cls_only)
    assert set(model(mel, labels=labels)) == {"loss", "cls"}


def test_missing_or_misshapen_inputs_are_explained() -> None:
    cfg = PretrainConfig.preset("supmam_clap", size="tiny")
    model = MAMPretrainer(cfg)
    mel, teacher, labels = batch(cfg)
    with pytest.raises(ValueError, match="pass teacher features"):
        model(mel, labels=labels)
    with pytest.raises(ValueError, match="pass labels"):
        model(mel, teacher=teacher)
    with pytest.raises(ValueError, match="expected teacher features"):
        model(mel, teacher=teacher[:, :-1], labels=labels)
    with pytest.raises(ValueError, match="expected labels"):
        model(mel, teacher=teacher, labels=labels[:, :-1])


def test_shorter_input_uses_its_own_grid() -> None:
    cfg = PretrainConfig.preset("mam_clap", size="tiny")
    model = MAMPretrainer(cfg)
    mel, teacher, _ = batch(cfg)
    half = cfg.encoder.target_frames // 2
    out = model(mel[:, :half], teacher=teacher[:, : cfg.encoder.n_patches // 2])
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize("patch_size,frames", [((8, 32), 64), ((32, 8), 96)])
def test_other_patch_shapes_and_lengths(patch_size: tuple[int, int], frames: int) -> None:
    enc = EncoderConfig.preset("tiny", patch_size=patch_size, target_frames=frames)
    cfg = PretrainConfig.preset("supmam_clap", size="tiny", encoder=enc)
    assert enc.grid == (frames // patch_size[0], enc.n_mels // patch_size[1])
    model = MAMPretrainer(cfg)
    mel, teacher, labels = batch(cfg)
    assert teacher.shape[1] == enc.grid[0] * enc.grid[1]
    out = model(mel, teacher=teacher, labels=labels)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_loss_falls_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    cfg = PretrainConfig.preset("supmam_clap", size="tiny", teacher_dim=32, n_classes=8)
    model = MAMPretrainer(cfg)
    _, _, labels = batch(cfg, size=4)
    # Learnable structure: each clip repeats one smooth 16-frame texture, so a masked patch can be told from
    # the visible ones; the teacher is a fixed projection of the patches.
    g = torch.Generator().manual_seed(0)
    texture = torch.randn(4, 16, cfg.encoder.n_mels, generator=g)
    texture = torch.nn.functional.avg_pool1d(texture.transpose(1, 2), 5, 1, 2).transpose(1, 2)
    mel = texture.repeat(1, cfg.encoder.target_frames // 16, 1)  # (4, T, n_mels)
    teacher = patchify(mel, cfg.encoder.patch_size) @ torch.randn(256, cfg.teacher_dim, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    history = []
    for _ in range(100):
        out = model(mel, teacher=teacher, labels=labels)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in out.items()})
    for term in ("loss", "recon", "distill_visible", "distill_masked", "cls"):
        before = sum(h[term] for h in history[:5]) / 5
        after = sum(h[term] for h in history[-5:]) / 5
        assert after < 0.7 * before, f"{term}: {before:.3f} -> {after:.3f}"


def test_full_checkpoint_round_trip(tmp_path) -> None:
    cfg = PretrainConfig.preset("supmam_clap", size="tiny")
    model = MAMPretrainer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # differ from a fresh init
    ckpt = {"model": model.state_dict(), "config": cfg.to_dict(), "step": 42}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 42
    loaded = load_encoder(tmp_path / "ckpt.pt")
    assert loaded.cfg == cfg.encoder and loaded.metadata["step"] == 42
    assert loaded.metadata["pretrain_config"] == cfg.to_dict()  # provenance the harnesses record
    x = 0.1 * torch.randn(2, 40000)
    model.eval()
    assert torch.equal(loaded(x).frames, model.encoder(x).frames)
    mel = model.encoder.mel(x)[0][:, :128]
    assert torch.equal(loaded.forward_features(mel)[0], model.encoder.forward_features(mel)[0])
    # A state dict saved from a DDP- or torch.compile-wrapped model loads the same.
    ckpt["model"] = {"module." + k: v for k, v in ckpt["model"].items()}
    torch.save(ckpt, tmp_path / "ddp.pt")
    assert torch.equal(load_encoder(tmp_path / "ddp.pt")(x).frames, model.encoder(x).frames)


# ---- the local (windowed) decoder ----

@pytest.mark.parametrize("window", [(4, 4), (2, 2), (2, 1)])
@pytest.mark.parametrize("depth", [2, 3])
def test_the_local_decoder_equals_dense_attention_under_the_window_mask(window, depth):
    """Windowed blocks, one gather per block, against the same blocks in patch order with a dense mask written
    from the definition: unshifted blocks join patches of the same window; shifted ones (every second block)
    windows offset by half a window in time, the offset's first rows a window of their own (floor division
    instead of the cyclic shift and its mask)."""
    from training.pretrain.mam import MAMPretrainer, PretrainConfig

    torch.manual_seed(0)
    cfg = PretrainConfig.preset("mam", size="tiny", decoder_attention="local", decoder_window=window,
                                decoder_depth=depth)
    model = MAMPretrainer(cfg).eval()
    gt, gf = cfg.encoder.grid
    (wt, wf), shift = window, window[0] // 2
    t = torch.arange(gt).repeat_interleave(gf)
    f = torch.arange(gf).repeat(gt)

    def dense(s: int) -> torch.Tensor:
        group = torch.div(t - s, wt, rounding_mode="floor") * gf + f // wf
        return group[:, None] == group[None, :]

    x = torch.randn(3, gt * gf, cfg.decoder_width)
    ref = x
    for i, block in enumerate(model.decoder_blocks):
        ref = block(ref, dense(shift if i % 2 else 0))
    got = model._local_blocks(x)
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
    if shift:  # the shifted blocks do reach across the unshifted windows' borders
        assert (dense(shift) & ~dense(0)).any()


def test_the_local_decoder_trains_on_shorter_inputs_and_refuses_windows_that_do_not_tile_the_grid():
    from training.pretrain.mam import MAMPretrainer, PretrainConfig

    cfg = PretrainConfig.preset("mam_clap", size="tiny", decoder_attention="local")
    model = MAMPretrainer(cfg)
    assert not any("_local" in k for k in model.state_dict())  # the layouts are derived, never saved
    for frames in (128, 64):  # the full grid (buffers) and a shorter one (made on the fly)
        n = frames // 16 * cfg.encoder.grid[1]
        out = model(torch.randn(2, frames, 64), teacher=torch.randn(2, n, cfg.teacher_dim))
        out["loss"].backward()
        assert torch.isfinite(out["loss"])
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="must tile the patch grid"):
        PretrainConfig.preset("mam", size="tiny", decoder_attention="local", decoder_window=(3, 4))
    with pytest.raises(ValueError, match="decoder_attention must be"):
        PretrainConfig.preset("mam", size="tiny", decoder_attention="swin")
    again = PretrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.decoder_window == (4, 4)


def test_set_takes_the_local_decoder_and_the_flops_formula_counts_its_windows():
    from training.bench.pretrain import train_flops_per_sample
    from training.pretrain.mam import PretrainConfig
    from training.pretrain.train import TrainConfig, override

    assert override("decoder_window=[2, 2]") == ("decoder_window", "[2, 2]")
    with pytest.raises(argparse.ArgumentTypeError, match="decoder_window expects"):
        override("decoder_window=[2, 2, 2]")
    run = TrainConfig(variant="mam", size="small", overrides=(("decoder_attention", "local"),
                                                               ("decoder_window", "[4, 2]")))
    local = run.pretrain_config()
    assert (local.decoder_attention, local.decoder_window) == ("local", (4, 2))
    glob = PretrainConfig.preset("mam", size="small")
    n, dd, depth = glob.encoder.n_patches, glob.decoder_width, glob.decoder_depth
    cls = int(glob.encoder.cls_token)
    per_token = 2 * (4 + 2 * glob.encoder.mlp_ratio) * dd * dd
    # global: n + cls tokens attend to all; local: n tokens attend to the 8 of their window
    expected = 3 * depth * (cls * per_token + 4 * dd * ((n + cls) ** 2 - n * 8))
    assert train_flops_per_sample(glob) - train_flops_per_sample(local) == pytest.approx(expected)
    # the benchmark's --run takes PretrainConfig fields as --set does
    from training.bench.pretrain import run_config
    bench = run_config(TrainConfig(variant="mam"), {"source": "fixed", "decoder_attention": "local"}, "c", "o")
    assert bench.pretrain_config().decoder_attention == "local" and bench.fixed_batch
    with pytest.raises(argparse.ArgumentTypeError, match="decoder_attention expects"):
        run_config(TrainConfig(variant="mam"), {"decoder_attention": "swin"}, "c", "o")
