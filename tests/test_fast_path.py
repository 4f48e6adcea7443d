"""The fast pretraining path computes what the plain one does: cached teacher features and cached log-mel
(`mamclap precompute`, `pretrain --cache`) give the loss and the gradients of the online front end and
teacher within bf16 rounding (the cache stores bf16), embedding only the kept patches equals embedding
every patch and gathering, and a cache built for other data, geometry or teacher is refused."""
from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder, patchify
from training.pretrain.data import AudioClips
from training.pretrain.feature_cache import FeatureCache, StaleCacheError, build, cache_key
from training.pretrain.mam import MAMPretrainer, PretrainConfig, random_masking
from training.pretrain.teacher import TeacherConfig, init_laion_checkpoint, load_teacher
from training.pretrain.train import TrainConfig, n_samples_for, train

SR = 16000
CFG = PretrainConfig.preset("supmam_clap", size="tiny", n_classes=3)
N_SAMPLES = n_samples_for(CFG.encoder)  # 1.3 s: the tiny grid's 128 frames
VOCAB = [("/m/a", "a"), ("/m/b", "b"), ("/m/c", "c")]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """One shard of six labelled clips: shorter than the crop (zero-padded), equal, and longer (cropped)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    with open(root / "class_labels_indices.csv", "w") as f:
        f.write("index,mid,display_name\n" + "".join(f"{i},{m},{n}\n" for i, (m, n) in enumerate(VOCAB)))
    with tarfile.open(root / "shard-000000.tar", "w") as tar:
        for i, seconds in enumerate([0.6, 1.0, 1.295, 2.0, 3.1, 1.7]):
            t = np.arange(int(seconds * SR)) / SR
            wav = 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.05 * rng.standard_normal(len(t))
            buf = io.BytesIO()
            sf.write(buf, wav.astype(np.float32), SR, format="WAV", subtype="FLOAT")
            meta = json.dumps({"labels": [VOCAB[i % 3][0]]}).encode()
            for name, data in ((f"clip{i:02d}.wav", buf.getvalue()), (f"clip{i:02d}.json", meta)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return root


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory) -> Path:
    return init_laion_checkpoint(tmp_path_factory.mktemp("teacher") / "clap.pt", seed=0)


@pytest.fixture(scope="module")
def teacher(teacher_path):
    return load_teacher(teacher_path, CFG.encoder, TeacherConfig())


@pytest.fixture(scope="module")
def dataset(corpus) -> AudioClips:
    return AudioClips(corpus, n_samples=N_SAMPLES, require_labels=True)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, dataset, teacher, teacher_path) -> Path:
    return build(dataset, CFG.encoder, tmp_path_factory.mktemp("cache") / "features", teacher=teacher,
                 teacher_path=teacher_path, teacher_cfg=TeacherConfig(), batch_size=4, workers=0, progress=False)


def online_batch(dataset, model, teacher, indices):
    items = [dataset[i] for i in indices]
    wav = torch.stack([w for w, _, _ in items])
    with torch.no_grad():
        return model.encoder.frontend(wav), teacher(wav), torch.stack([lab for _, lab, _ in items])


def loss_and_grads(model, mel, targets, labels, noise):
    model.zero_grad(set_to_none=True)
    out = model(mel, teacher=targets, labels=labels, noise=noise)
    out["loss"].backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_cached_inputs_give_the_online_loss_and_gradients(dataset, teacher, cache_dir):
    torch.manual_seed(0)
    model = MAMPretrainer(CFG)
    indices = [4, 0, 2, 5, 1, 3]  # any order: cropped, padded and exact clips
    mel, targets, labels = online_batch(dataset, model, teacher, indices)
    c_mel, c_targets, c_labels, skipped = FeatureCache(cache_dir).batch(indices)
    assert skipped == 0 and torch.equal(c_labels, labels)
    assert c_mel.shape == mel.shape and c_targets.shape == targets.shape == (6, CFG.encoder.n_patches, 768)
    assert relative(c_mel, mel) < 4e-3 and relative(c_targets, targets) < 4e-3  # bf16 storage: 2^-8 per value
    noise = torch.rand(len(indices), CFG.encoder.n_patches)
    ref, ref_grads = loss_and_grads(model, mel, targets, labels, noise)
    out, grads = loss_and_grads(model, c_mel, c_targets, c_labels, noise)
    for name in ("loss", "recon", "distill_visible", "distill_masked", "cls"):
        assert abs(float(out[name].detach()) - float(ref[name].detach())) < 1e-3 * abs(float(ref[name].detach())), name
    assert set(grads) == set(ref_grads)
    worst = max((relative(grads[n], ref_grads[n]), n) for n in grads)
    assert worst[0] < 5e-3, worst  # every parameter's gradient
    # The check can fail: the targets of the wrong clips (rolled by one in the batch) move some gradient
    # by several times that tolerance, although a random teacher's features differ little between clips.
    _, other = loss_and_grads(model, c_mel, c_targets.roll(1, dims=0), c_labels, noise)
    assert max(relative(other[n], ref_grads[n]) for n in other) > 2e-2


def test_trainer_on_the_cache_follows_the_online_run(corpus, teacher_path, cache_dir, tmp_path):
    common = dict(variant="supmam_clap", size="tiny", data=str(corpus), teacher=str(teacher_path), steps=2,
                  batch_size=3, warmup_steps=1, log_every=1, ckpt_every=2, workers=0, device="cpu")
    runs = {}
    for name, extra in (("online", {}), ("teacher_cached", {"cache": str(cache_dir), "cache_mel": False}),
                        ("all_cached", {"cache": str(cache_dir)})):
        out = tmp_path / name
        train(TrainConfig(out_dir=str(out), **common, **extra))
        runs[name] = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    for name in ("teacher_cached", "all_cached"):
        assert len(runs[name]) == 2
        assert np.allclose(runs[name], runs["online"], rtol=1e-2), (name, runs)


def test_fixed_batch_repeats_the_first_batch(corpus, cache_dir, teacher_path, tmp_path):
    # No masking and lr ~0 (1e-30: updates vanish in float32): a step's loss depends only on its batch.
    cfg = TrainConfig(variant="supmam_clap", size="tiny", data=str(corpus), teacher=str(teacher_path), steps=2,
                      batch_size=3, warmup_steps=1, log_every=1, workers=0, device="cpu", cache=str(cache_dir),
                      base_lr=1e-30, overrides=(("mask_ratio", "0.0"),))
    losses = {}
    for fixed in (False, True):
        out = tmp_path / f"fixed_{fixed}"
        train(dataclasses.replace(cfg, fixed_batch=fixed, out_dir=str(out)))
        losses[fixed] = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert abs(losses[True][1] - losses[True][0]) < 1e-5 * abs(losses[True][0]), losses
    assert abs(losses[False][1] - losses[False][0]) > 1e-3 * abs(losses[False][0]), losses  # two batches differ
    assert losses[True][0] == pytest.approx(losses[False][0], rel=1e-6)  # the same first batch


def test_stale_cache_is_refused(corpus, dataset, teacher_path, cache_dir, tmp_path):
    cache = FeatureCache(cache_dir)
    cache.check(cache_key(dataset, CFG.encoder, teacher_path, TeacherConfig()), teacher=True)  # the right key
    other_teacher = init_laion_checkpoint(tmp_path / "other.pt", seed=1)
    with pytest.raises(StaleCacheError, match="teacher.sha256"):
        cache.check(cache_key(dataset, CFG.encoder, other_teacher, TeacherConfig()), teacher=True)
    with pytest.raises(StaleCacheError, match="teacher.projection"):
        cache.check(cache_key(dataset, CFG.encoder, teacher_path, TeacherConfig(projection=True)), teacher=True)
    longer = EncoderConfig.preset("tiny", target_frames=256)
    with pytest.raises(StaleCacheError, match="frontend.target_frames"):
        cache.check(cache_key(AudioClips(corpus, n_samples=n_samples_for(longer)), longer, teacher_path,
                              TeacherConfig()), teacher=True)
    fewer = AudioClips(corpus, n_samples=N_SAMPLES)
    fewer.items = fewer.items[:-1]
    with pytest.raises(StaleCacheError, match="data.fingerprint"):
        cache.check(cache_key(fewer, CFG.encoder), teacher=False)
    # Without distillation the teacher part is not compared; the trainer refuses a stale cache itself.
    cache.check(cache_key(dataset, CFG.encoder, other_teacher, TeacherConfig()), teacher=False)
    with pytest.raises(StaleCacheError, match="teacher.sha256"):
        train(TrainConfig(variant="supmam_clap", size="tiny", data=str(corpus), teacher=str(other_teacher), steps=1,
                          batch_size=2, workers=0, device="cpu", cache=str(cache_dir), out_dir=str(tmp_path / "r")))


def test_mel_only_cache_serves_mam_and_refuses_distillation(corpus, dataset, tmp_path, capsys):
    from training.cli import main
    path = tmp_path / "mel_only"
    assert main(["precompute", "--data", str(corpus), "--preset", "mam", "--size", "tiny", "--out", str(path),
                 "--workers", "0", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip().endswith(str(path))
    cache = FeatureCache(path)
    assert not cache.has_teacher
    mel, targets, labels, _ = cache.batch([0, 1], teacher=False)
    assert targets is None and mel.shape == (2, CFG.encoder.target_frames, CFG.encoder.n_mels)
    with pytest.raises(StaleCacheError, match="no teacher features"):
        cache.check(cache_key(dataset, CFG.encoder), teacher=True)


def test_kept_patch_embedding_equals_embedding_all_then_gathering():
    torch.manual_seed(0)
    enc = MAMCLAPEncoder(EncoderConfig.preset("tiny"))
    mel = torch.randn(3, 128, 64)
    ids_keep, _, _ = random_masking(3, enc.cfg.n_patches, 0.75)

    def reference(mel):  # every patch embedded, then the kept ones gathered (the plain path)
        x = enc.patch_embed(patchify(mel, enc.cfg.patch_size)) + enc.pos_embed
        x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[2]))
        x = torch.cat([enc.cls_token.expand(3, -1, -1), x], dim=1)
        for block in enc.blocks:
            x = block(x)
        return enc.norm(x)

    def grads(fn):
        enc.zero_grad(set_to_none=True)
        out = fn(mel)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in enc.named_parameters()}

    ref, ref_g = grads(reference)
    out, g = grads(lambda m: enc.forward_features(m, ids_keep=ids_keep)[0])
    assert torch.allclose(out, ref, atol=1e-5)
    assert all(torch.allclose(g[n], ref_g[n], atol=1e-5) for n in ref_g)
    other = random_masking(3, enc.cfg.n_patches, 0.75)[0]  # the comparison sees a different mask
    assert not torch.allclose(enc.forward_features(mel, ids_keep=other)[0], ref, atol=1e-3)


def test_augment_batch_mixes_in_the_power_domain_and_keeps_padding():
    """Mixing adds the other row's mel power at a level in [-mix_gain_db, 0] dB and takes the label union;
    gain shifts every frame's level; zero-padded frames stay zero; no draw, no change."""
    from hear_mamclap.frontend import AUDIOSET_MEAN, AUDIOSET_STD
    from training.pretrain.inputs import augment_batch

    g = torch.Generator().manual_seed(0)
    mel = torch.randn(2, 6, 4)
    mel[0, 4:] = 0.0  # padding past row 0's end
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    same, same_labels, no_targets = augment_batch(mel, labels, g, AUDIOSET_MEAN, AUDIOSET_STD)
    assert same is mel and same_labels is labels and no_targets is None
    out, out_labels, _ = augment_batch(mel, labels, torch.Generator().manual_seed(1), AUDIOSET_MEAN, AUDIOSET_STD,
                                       mix_p=1.0, mix_gain_db=0.0)
    scale = 2 * AUDIOSET_STD
    power = torch.exp(mel * scale + AUDIOSET_MEAN)
    expected = (torch.log(power + power.roll(1, 0)) - AUDIOSET_MEAN) / scale  # 0 dB: plain sum of powers
    assert torch.allclose(out[0, :4], expected[0, :4], atol=1e-5)
    assert torch.allclose(out[1], expected[1], atol=1e-5)
    assert torch.equal(out[0, 4:], torch.zeros(2, 4))
    assert torch.equal(out_labels, torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]]))
    gained, gained_labels, _ = augment_batch(mel, labels, torch.Generator().manual_seed(2), AUDIOSET_MEAN,
                                             AUDIOSET_STD, gain_db=6.0)
    shift = (gained - mel)[:, :4].reshape(2, -1)
    assert torch.equal(gained_labels, labels)
    assert (shift.std(dim=1) < 1e-5).all()  # one shift per row
    assert (shift[:, 0].abs() * scale <= 6.0 * np.log(10) / 10 + 1e-5).all() and shift.abs().max() > 0


def test_teacher_targets_of_mixed_rows_are_weighted_by_the_sources_power_shares():
    """"power" target mixing: a row mixed with the next one at power ratio r gets (T + r T_next) / (1 + r); at
    0 dB that is the plain mean; rows not mixed and the gain keep their targets; the same draws as the audio."""
    from hear_mamclap.frontend import AUDIOSET_MEAN, AUDIOSET_STD
    from training.pretrain.inputs import augment_batch

    mel, labels = torch.randn(3, 6, 4), torch.zeros(3, 2)
    targets = torch.randn(3, 5, 8)
    _, _, even = augment_batch(mel, labels, torch.Generator().manual_seed(1), AUDIOSET_MEAN, AUDIOSET_STD,
                               mix_p=1.0, mix_gain_db=0.0, gain_db=6.0, targets=targets)
    assert torch.allclose(even, (targets + targets.roll(1, 0)) / 2, atol=1e-6)
    mel_only, _, _ = augment_batch(mel, labels, torch.Generator().manual_seed(0), AUDIOSET_MEAN, AUDIOSET_STD,
                                   mix_p=0.5, mix_gain_db=10.0)
    out, _, mixed = augment_batch(mel, labels, torch.Generator().manual_seed(0), AUDIOSET_MEAN, AUDIOSET_STD,
                                  mix_p=0.5, mix_gain_db=10.0, targets=targets)
    assert torch.equal(out, mel_only)  # targets change nothing about the audio's draws
    u = torch.rand(3, 3, generator=torch.Generator().manual_seed(0))
    for i in range(3):
        if u[0, i] < 0.5:
            r = 10 ** (-10.0 * u[1, i] / 10)
            assert torch.allclose(mixed[i], (targets[i] + r * targets[i - 1]) / (1 + r), atol=1e-5)
        else:
            assert torch.equal(mixed[i], targets[i])
    assert (u[0] < 0.5).any() and (u[0] >= 0.5).any()  # this seed exercises both branches


def test_mixing_with_a_teacher_needs_power_target_mixing_and_snapshots_are_exported(corpus, tmp_path):
    with pytest.raises(ValueError, match="needs --mix-targets power"):
        TrainConfig(variant="mam_clap", mix_p=0.5)
    assert TrainConfig(variant="mam_clap", mix_p=0.5, mix_targets="power").mix_targets == "power"
    with pytest.raises(ValueError, match="mix_targets"):
        TrainConfig(variant="mam_clap", mix_targets="sum")
    cfg = TrainConfig(variant="supmam", size="tiny", data=str(corpus), steps=4, batch_size=2, workers=0,
                      warmup_steps=1, ckpt_every=2, log_every=1, out_dir=str(tmp_path / "run"), device="cpu",
                      mix_p=0.5, gain_db=3.0, export_every=2)
    train(cfg)
    meta = json.loads((tmp_path / "run" / "encoder-step000002" / "encoder.json").read_text())
    assert meta["metadata"]["step"] == 2 and meta["metadata"]["clips_seen"] == 4
    assert (tmp_path / "run" / "encoder" / "encoder.json").is_file()
    assert not (tmp_path / "run" / "encoder-step000004").exists()  # the last step is the final export


def test_a_distilling_run_with_mixing_hands_the_teacher_targets_to_the_mixer(corpus, cache_dir, teacher_path,
                                                                              tmp_path, monkeypatch):
    """The training loop passes each micro-batch's teacher targets through augment_batch and trains on what
    comes back (here: targets zeroed by a wrapped mixer, so the distillation loss is the student's own norm)."""
    import math

    import training.pretrain.train as train_mod

    seen = []
    real = train_mod.augment_batch

    def spy(mel, labels, gen, mean, std, mix_p, mix_gain_db, gain_db, targets=None):
        seen.append(targets is not None and targets.shape[0] == mel.shape[0])
        return real(mel, labels, gen, mean, std, mix_p, mix_gain_db, gain_db, targets)

    monkeypatch.setattr(train_mod, "augment_batch", spy)
    cfg = TrainConfig(variant="supmam_clap", size="tiny", data=str(corpus), teacher=str(teacher_path), steps=2,
                      batch_size=3, warmup_steps=1, log_every=1, workers=0, device="cpu", cache=str(cache_dir),
                      mix_p=1.0, mix_targets="power", out_dir=str(tmp_path / "run"))
    train(cfg)
    assert seen == [True, True]
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(logs) == 2 and all(math.isfinite(v) for log in logs for k, v in log.items() if k == "loss")


def test_floors_of_a_teacher_cache_include_the_distillation_floors(cache_dir, tmp_path):
    from training import cli

    out = tmp_path / "floors.json"
    assert cli.main(["diagnose", "floors", "--cache", str(cache_dir), "--size", "tiny", "--out", str(out)]) == 0
    floors = json.loads(out.read_text())
    assert abs(floors["distill_zero"] - 1.0) < 0.01  # layer-normed targets
    assert floors["distill_position_mean"] < floors["distill_zero"] and "recon_position_mean" in floors
