"""`mamclap finetune` on tiny files in each real layout (AudioSet, ESC-50, Speech Commands V2 and V1) and on
the kit's copies: a short run beats chance on an easy task, layer-wise decay gives each block its lr, no
augmentation reaches evaluation, and kill -9 + --resume ends with the same weights."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from hear_mamclap.checkpoint import export_encoder
from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder
from training.eval import finetune as ft
from training.eval.finetune_tasks import (Clips, Example, TASKS, average_precision, hold_out, load_task, read_clip,
                                          score)
from training.kit.superb_layouts import s3prl_dev_percentage
from training.pretrain import checkpointing

REPO = Path(__file__).resolve().parents[1]

# The easy task: each class is a tone (or noise), which a tiny encoder tells apart in a few dozen steps.
TONES = {"low": 300.0, "mid": 1200.0, "high": 4000.0}


def tone(kind: str, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    noise = rng.normal(0, 0.02, len(t))
    if kind == "noise":
        return (rng.normal(0, 0.3, len(t))).astype(np.float32)
    f = TONES[kind] * rng.uniform(0.95, 1.05)
    return (0.5 * np.sin(2 * np.pi * f * t) + noise).astype(np.float32)


def write(path: Path, x: np.ndarray, sr: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sr, subtype="PCM_16")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """Tiny data sets in the real layouts: AudioSet (16 kHz FLAC), ESC-50 (44.1 kHz WAV), Speech Commands."""
    root = tmp_path_factory.mktemp("layouts")
    rng = np.random.default_rng(0)
    out = {}

    # AudioSet: three classes, clips holding one or two of them.
    aset = root / "audioset"
    (aset / "audio").mkdir(parents=True)
    mids = {"low": "/m/low", "high": "/m/high", "noise": "/m/noise"}
    (aset / "class_labels_indices.csv").write_text(
        "index,mid,display_name\n" + "".join(f'{i},{m},"{k} sound"\n' for i, (k, m) in enumerate(mids.items())))
    combos = [("low",), ("high",), ("noise",), ("low", "high"), ("low", "noise"), ("high", "noise")]
    for csv_name, n, prefix in (("balanced_train_segments.csv", 24, "b"), ("unbalanced_train_segments.csv", 36, "u"),
                                ("eval_segments.csv", 18, "e")):
        lines = ["# Segments csv", "# num_ytids=...", "# YTID, start_seconds, end_seconds, positive_labels"]
        for i in range(n):
            combo = combos[i % len(combos)] if prefix != "u" else combos[min(i % 9, 5)]  # unbalanced: skewed
            x = sum(tone(k, 1.3, 16000, rng) for k in combo)
            key = f"{prefix}{i:03d}"
            write(aset / "audio" / f"{key}.flac", x / len(combo), 16000)
            lines.append(f'{key}, 0.000, 1.300, "{",".join(mids[k] for k in combo)}"')
        (aset / csv_name).write_text("\n".join(lines) + "\n")
    out["audioset"] = aset

    # ESC-50: two categories, 5 folds, 44.1 kHz like the real set (read_clip resamples).
    esc = root / "ESC-50-master"
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for fold in range(1, 6):
        for target, kind in enumerate(("low", "high")):
            for take in "AB":
                src = 1000 * fold + 10 * target + "AB".index(take) // 2
                name = f"{fold}-{src}-{take}-{target}.wav"
                write(esc / "audio" / name, tone(kind, 1.5, 44100, rng), 44100)
                rows.append(f"{name},{fold},{target},{kind}_tone,False,{src},{take}")
    (esc / "meta").mkdir(parents=True)
    (esc / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    out["esc50"] = esc

    # Speech Commands V2: words as tones, speakers split by the two list files; background noise.
    spc = root / "speech_commands_v0.02"
    words = {"yes": "low", "no": "high", "bed": "mid"}
    valid, test = [], []
    for word, kind in words.items():
        for s in range(10):
            speaker = hashlib.sha1(f"v2-{s}".encode()).hexdigest()[:8]
            rel = f"{word}/{speaker}_nohash_0.wav"
            write(spc / rel, tone(kind, 1.0, 16000, rng), 16000)
            (valid if s == 6 else test if s >= 7 else []).append(rel)
    write(spc / "_background_noise_" / "white_noise.wav", tone("noise", 10.0, 16000, rng) * 0.1, 16000)
    (spc / "validation_list.txt").write_text("\n".join(valid) + "\n")
    (spc / "testing_list.txt").write_text("\n".join(test) + "\n")
    out["spcv2"] = spc

    # Speech Commands V1 in s3prl's layout: train/ split by s3prl's hash of the speaker prefix, test/.
    v1 = root / "speech_commands_v1"
    speakers = {"train": [], "valid": []}
    for k in range(10000):
        h = hashlib.sha1(f"v1-{k}".encode()).hexdigest()[:8]
        pct = s3prl_dev_percentage(h)
        split = "valid" if pct < 10 else "train" if pct >= 20 else None
        if split and len(speakers[split]) < (6 if split == "train" else 2):
            speakers[split].append(h)
        if len(speakers["train"]) == 6 and len(speakers["valid"]) == 2:
            break
    for word, kind in (("yes", "low"), ("no", "high"), ("marvin", "mid")):
        for h in speakers["train"] + speakers["valid"]:
            write(v1 / "train" / word / f"{h}_nohash_0.wav", tone(kind, 1.0, 16000, rng), 16000)
        for i in range(2):
            write(v1 / "test" / (word if word != "marvin" else "_unknown_") / f"t{i}{word}_nohash_0.wav",
                  tone(kind, 1.0, 16000, rng), 16000)
    write(v1 / "train" / "_background_noise_" / "pink.wav", tone("noise", 8.0, 16000, rng) * 0.1, 16000)
    for i in range(2):
        write(v1 / "test" / "_silence_" / f"silence_{i}.wav", tone("noise", 1.0, 16000, rng) * 0.1, 16000)
    out["spcv1"] = v1
    return out


# Fast tiny runs: from scratch, the tiny encoder (128 frames), no worker processes.
TINY = dict(size="tiny", batch_size=8, workers=0, base_lr=0.2, warmup_epochs=1.0, log_every=5, device="cpu")


def run(tmp_path: Path, task: str, data: Path, **overrides) -> dict:
    cfg = ft.FinetuneConfig.for_task(task, data=str(data), out_dir=str(tmp_path / task), **{**TINY, **overrides})
    return ft.finetune(cfg, command="pytest")


# ---------------------------------------------------------------------------------------------- layouts


def test_layouts_read_as_their_data_sets_define_them(layouts):
    as20k = load_task("as20k", layouts["audioset"], valid_fraction=0.25)
    assert TASKS["as20k"].multilabel and as20k.vocabulary == ["low sound", "high sound", "noise sound"]
    (fold,) = as20k.folds
    assert len(fold.train) + len(fold.valid) == 24 and len(fold.test) == 18 and len(fold.valid) == 6
    as2m = load_task("as2m", layouts["audioset"], valid_fraction=0.25)
    assert len(as2m.folds[0].train) + len(as2m.folds[0].valid) == 24 + 36  # unbalanced + balanced
    assert {e.labels for e in fold.test} >= {(0,), (0, 1)}

    esc = load_task("esc50", layouts["esc50"], valid_fraction=0.25)
    assert [f.name for f in esc.folds] == [f"fold{k}" for k in range(1, 6)]
    for f in esc.folds:
        k = f.name[-1]
        assert all(Path(e.path).name.startswith(f"{k}-") for e in f.test)
        assert not any(Path(e.path).name.startswith(f"{k}-") for e in f.train + f.valid)
        assert not {e.group for e in f.train} & {e.group for e in f.valid}  # held out by source file

    v2 = load_task("spcv2", layouts["spcv2"])
    assert v2.vocabulary == ["bed", "no", "yes"]
    assert (len(v2.folds[0].train), len(v2.folds[0].valid), len(v2.folds[0].test)) == (18, 3, 9)
    v2_12 = load_task("spcv2_12", layouts["spcv2"])
    assert v2_12.vocabulary[-2:] == ["_unknown_", "_silence_"] and len(v2_12.vocabulary) == 12
    silence = [e for e in v2_12.folds[0].train if e.labels == (11,)]
    assert silence and all(e.path.endswith("white_noise.wav") for e in silence)
    assert {e.labels for e in v2_12.folds[0].train if "bed/" in e.path} == {(10,)}  # other words: _unknown_

    v1 = load_task("spcv1_12", layouts["spcv1"])
    (fold,) = v1.folds
    for e in fold.train + fold.valid:
        if e.labels != (11,):
            pct = s3prl_dev_percentage(Path(e.path).name.split("_nohash_")[0])
            assert (pct < 10) == (e in fold.valid) and not 10 <= pct < 20
    assert {e.labels for e in fold.test} == {(0,), (1,), (10,), (11,)}


def test_bad_layouts_say_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta/esc50.csv"):
        load_task("esc50", tmp_path)
    with pytest.raises(FileNotFoundError, match="validation_list.txt"):
        load_task("spcv2", tmp_path)
    with pytest.raises(ValueError, match="unknown fine-tuning task"):
        load_task("imagenet", tmp_path)


def test_read_clip_resamples_and_fits(tmp_path):
    x = np.sin(2 * np.pi * 440 * np.arange(44100) / 44100).astype(np.float32)
    sf.write(tmp_path / "a.wav", np.stack([x, x], 1), 44100)  # stereo, 44.1 kHz
    y = read_clip(tmp_path / "a.wav", 20000)
    assert y.shape == (20000,) and np.all(y[16010:] == 0) and np.abs(y[:15000]).max() > 0.9
    spectrum = np.abs(np.fft.rfft(y[:16000]))
    assert abs(int(spectrum.argmax()) - 440) <= 2  # still 440 Hz at 16 kHz
    assert read_clip(tmp_path / "a.wav", 8000, start=0.5).shape == (8000,)


def test_hold_out_keeps_groups_apart_and_is_stable():
    examples = [Example(f"{i}.wav", (0,), group=f"g{i // 3}") for i in range(30)]
    train, valid = hold_out(examples, 0.2, seed=0)
    assert len(valid) == 6 and not {e.group for e in train} & {e.group for e in valid}
    assert hold_out(examples, 0.2, seed=0) == (train, valid)
    assert hold_out(examples, 0.2, seed=1)[1] != valid
    assert hold_out(examples, 0.0, seed=0) == (examples, [])


def test_scores():
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 0]], dtype=np.float32)
    assert average_precision(np.array([0.9, 0.1, 0.8, 0.2]), targets[:, 0]) == 1.0
    assert average_precision(np.array([0.1, 0.9, 0.2, 0.8]), targets[:, 0]) == pytest.approx((1 / 3 + 2 / 4) / 2)
    m, details = score("mAP", np.array([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2], [0.2, 0.3]]), targets)
    assert m == 1.0 and details["classes_scored"] == 2
    acc, _ = score("accuracy", np.array([[2.0, 1.0], [0.0, 1.0], [0.0, 1.0]]), targets[:3])
    assert acc == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------- recipe parts


def tiny_model(n_classes: int = 3) -> ft.Classifier:
    torch.manual_seed(0)
    return ft.Classifier(MAMCLAPEncoder(EncoderConfig.preset("tiny")), n_classes)


def test_layer_decay_gives_each_block_its_lr():
    model = tiny_model()
    depth = model.encoder.cfg.depth
    optimizer = torch.optim.AdamW(ft.param_groups(model, 0.05, 0.75))
    peak = 1e-3
    lr = ft.lr_for_step(7, 100, 10, peak, 1e-6)
    assert lr == pytest.approx(peak * 8 / 10)  # still warming up
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    lr_of = {name: g["lr"] for g in optimizer.param_groups for name in g["names"]}
    decay_of = {name: g["weight_decay"] for g in optimizer.param_groups for name in g["names"]}
    assert set(lr_of) == {n for n, _ in model.named_parameters()}
    for name in lr_of:
        if name.startswith("encoder.blocks."):
            i = int(name.split(".")[2])
            assert lr_of[name] == pytest.approx(lr * 0.75 ** (depth - i)), name
        elif name.startswith(("encoder.patch_embed", "encoder.cls_token")):
            assert lr_of[name] == pytest.approx(lr * 0.75 ** (depth + 1)), name
        else:  # final norm, fc_norm, head
            assert lr_of[name] == pytest.approx(lr), name
        no_decay = name.endswith(".bias") or "norm" in name or name.endswith("cls_token")
        assert decay_of[name] == (0.0 if no_decay else 0.05), name
    # cosine after the warm-up, down to min_lr
    assert ft.lr_for_step(100, 100, 10, peak, 1e-6) == pytest.approx(1e-6)
    assert ft.lr_for_step(55, 100, 10, peak, 1e-6) == pytest.approx((peak + 1e-6) / 2)
    assert ft.lr_for_step(10, 100, 10, peak, 1e-6) == pytest.approx(peak)


def test_frozen_encoder_trains_the_head_only():
    model = tiny_model()
    model.encoder.requires_grad_(False)
    names = {n for g in ft.param_groups(model, 0.05, 0.75) for n in g["names"]}
    assert names == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}


def test_augmentations_change_training_inputs():
    rng = np.random.default_rng(0)
    wav = torch.randn(4, 1000)
    target = torch.eye(4)
    mixed, mixed_target = ft.mixup(wav, target, rng, 1.0, 10.0)
    assert not torch.equal(mixed, wav) and torch.allclose(mixed_target.sum(1), torch.ones(4))
    mel = torch.randn(4, 128, 64)
    masked = ft.spec_mask(mel, np.random.default_rng(1), 0.375, 0.1875)
    assert (masked == 0).sum() > (mel == 0).sum()
    ids = ft.patch_keep(4, (8, 4), np.random.default_rng(2), 0.25, 0.25, torch.device("cpu"))
    assert ids.shape == (4, 6 * 3) and all(len(set(row.tolist())) == 18 for row in ids)
    assert ft.patch_keep(4, (8, 4), rng, 0.0, 0.0, torch.device("cpu")) is None


def test_evaluation_sees_clean_inputs(layouts, tmp_path, monkeypatch):
    """Mixup, SpecAugment and patch masking run once per training micro-batch and never in validation or
    test; predict gives the plain eval-mode forward (no drop path) every time."""
    calls = {"mixup": 0, "spec_mask": 0, "patch_keep": 0}
    for name in calls:
        original = getattr(ft, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(ft, name, counted)
    doc = run(tmp_path, "spcv2", layouts["spcv2"], epochs=2, mixup=1.0, drop_path=0.5, mask_t_prob=0.5)
    steps = doc["tasks"]["spcv2"]["extra"]["folds"][0]["steps"]
    assert calls == {"mixup": steps, "spec_mask": steps, "patch_keep": steps}  # 2 validations + 1 test: none

    model = tiny_model()
    model.encoder.set_drop_path(0.5)
    model.train()
    clips = Clips(load_task("spcv2", layouts["spcv2"]).folds[0].test, 3, ft.n_samples_for(model.encoder.cfg))
    env = ft.Env(0, 1, 0, torch.device("cpu"), False)
    first, targets = ft.predict(model, clips, env, batch_size=2, workers=0)
    second, _ = ft.predict(model, clips, env, batch_size=3, workers=0)
    assert model.training  # restored
    model.eval()
    wav = torch.stack([clips[i][0] for i in range(len(clips))])
    with torch.no_grad():
        plain = model(model.encoder.frontend(wav)).numpy()
    np.testing.assert_allclose(first, plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second, plain, rtol=1e-5, atol=1e-6)
    assert targets.argmax(1).tolist() == [clips.examples[i].labels[0] for i in range(len(clips))]


def test_drop_path_is_off_by_default_and_rises_with_depth():
    enc = MAMCLAPEncoder(EncoderConfig.preset("tiny"))
    assert [b.drop_path for b in enc.blocks] == [0.0] * enc.cfg.depth
    enc.set_drop_path(0.2)
    assert [b.drop_path for b in enc.blocks] == pytest.approx([0.0, 0.1, 0.2])
    enc.train()
    x = torch.randn(6, 128, 64)
    assert not torch.equal(enc.forward_features(x)[0], enc.forward_features(x)[0])
    enc.eval()
    assert torch.equal(enc.forward_features(x)[0], enc.forward_features(x)[0])


def test_weighted_sampler_favours_rare_classes():
    examples = [Example(f"{i}", (0,)) for i in range(90)] + [Example(f"r{i}", (1,)) for i in range(10)]
    weights = ft.class_weights(examples, 2)
    sampler = ft.WeightedStepBatches(weights, 20, 10, 1, 1, 0, 0, 0, 40)  # 20 clips a pass, batches of 10
    batches = list(sampler)
    assert len(batches) == 40 and all(len(b) == 10 for b in batches)
    for k in range(0, 40, 2):
        assert len(set(batches[k] + batches[k + 1])) == 20  # without replacement within a pass
    rare = sum(i >= 90 for b in batches for i in b) / 400
    assert 0.3 < rare < 0.45  # 0.37 expected, against the 0.1 a uniform sampler gives
    assert list(ft.WeightedStepBatches(weights, 20, 10, 1, 1, 0, 0, 6, 40)) == batches[6:]  # resumable


# ---------------------------------------------------------------------------------------------- tiny runs


@pytest.mark.parametrize("task,layout,chance,overrides", [
    ("esc50", "esc50", 1 / 2, {"fold": 1, "batch_size": 4, "epochs": 6}),
    ("spcv2", "spcv2", 1 / 3, {"epochs": 8, "mixup": 0.0}),  # mixup slows a run this short down
    ("spcv1_12", "spcv1", 1 / 4, {"epochs": 16, "mixup": 0.0}),  # 4 of the 12 classes in the tiny test set
])
def test_tiny_run_beats_chance(layouts, tmp_path, task, layout, chance, overrides):
    doc = run(tmp_path, task, layouts[layout], **overrides)
    entry = doc["tasks"][task]
    assert doc["harness"] == "finetune" and entry["metric"] == "accuracy"
    assert entry["score"] >= chance + 0.3, entry["extra"]["folds"]
    (fold,) = entry["extra"]["folds"]
    assert fold["best_epoch"] is not None and fold["valid"] is not None


def test_tiny_audioset_run_beats_chance(layouts, tmp_path):
    """AS-2M's layout (unbalanced + balanced CSVs) with its weighted sampler."""
    doc = run(tmp_path, "as2m", layouts["audioset"], epochs=8, epoch_fraction=0.4, valid_fraction=0.2)
    entry = doc["tasks"]["as2m"]
    assert doc["settings"]["config"]["weighted_sampler"]
    assert entry["metric"] == "mAP" and entry["extra"]["folds"][0]["classes_scored"] == 3
    # chance mAP is each class's share of positives (1/2 here); a model that hears the tones gets near 1
    assert entry["score"] >= 0.8, entry["extra"]["folds"]


def test_esc50_averages_five_folds_and_results_carry_provenance(layouts, tmp_path):
    export = export_encoder(MAMCLAPEncoder(EncoderConfig.preset("tiny")), tmp_path / "export",
                            metadata={"variant": "supmam_clap", "size": "tiny", "seed": 3, "step": 10})
    doc = run(tmp_path, "esc50", layouts["esc50"], epochs=1, init=str(export), freeze=True)
    entry = doc["tasks"]["esc50"]
    folds = entry["extra"]["folds"]
    assert [f["fold"] for f in folds] == [f"fold{k}" for k in range(1, 6)]
    assert entry["score"] == pytest.approx(sum(f["test"] for f in folds) / 5)
    assert entry["n_test"] == 20 and entry["extra"]["kind"] == "frozen"
    assert doc["model"] == "supmam_clap-tiny" and doc["pretraining"]["variant"] == "supmam_clap"
    assert doc["checkpoint"] == str(export) and doc["command"] == "pytest"
    saved = json.loads((tmp_path / "esc50" / "results.json").read_text())
    assert saved["tasks"]["esc50"]["score"] == entry["score"]
    # frozen: the encoder's weights are the export's
    ckpt = checkpointing.load(tmp_path / "esc50" / "fold1" / "checkpoint.pt")
    original = MAMCLAPEncoder(EncoderConfig.preset("tiny"))
    from hear_mamclap.checkpoint import load_encoder
    original = load_encoder(export)
    for k, v in original.state_dict().items():
        assert torch.equal(ckpt["model"][f"encoder.{k}"], v), k


def final_weights(out: Path) -> dict:
    return checkpointing.load(out / "checkpoint.pt")["model"]


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_same_weights(layouts, tmp_path):
    args = [sys.executable, "-m", "training.cli", "finetune", "--task", "spcv2", "--data", str(layouts["spcv2"]),
            "--size", "tiny", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--epochs", "6",
            "--ckpt-every", "2", "--log-every", "1", "--drop-path", "0.3", "--base-lr", "0.05"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run([*args, "--out-dir", str(tmp_path / "full")], cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=600)
    out = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--out-dir", str(out)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        log = out / "log.jsonl"
        if log.exists() and sum('"loss"' in line for line in log.read_text().splitlines()) >= 11:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = checkpointing.load(out / "checkpoint.pt")["step"]
    total = checkpointing.load(tmp_path / "full" / "checkpoint.pt")["step"]
    assert 2 <= saved < total
    # A kill -9 that lands while a checkpoint is written leaves that write's temp file (nothing can remove it),
    # never a partial checkpoint.pt: the load above read a whole one; only temp names may sit beside it.
    assert all(p.name.endswith(".tmp") for p in out.glob("checkpoint.pt.*"))
    subprocess.run([*args, "--out-dir", str(out), "--resume"], cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=600)
    full, resumed = final_weights(tmp_path / "full"), final_weights(out)
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    a = json.loads((tmp_path / "full" / "results.json").read_text())["tasks"]["spcv2"]
    b = json.loads((out / "results.json").read_text())["tasks"]["spcv2"]
    assert a["score"] == b["score"] and a["extra"]["folds"] == b["extra"]["folds"]


# ---------------------------------------------------------------------------------------------- the kit's layouts


def test_balanced_subset_fills_rare_classes_first():
    from training.kit.finetune_layouts import _take, balanced_subset
    rows = [(f"c{i}", (0,)) for i in range(50)] + [(f"r{i}", (0, 1)) for i in range(3)] + [("x", (2,))]
    keys = balanced_subset(rows, 2, seed=0)
    assert "x" in keys and sum(k.startswith("r") for k in keys) == 2 and len(keys) == 3  # class 0 rides along
    assert balanced_subset(rows, 2, seed=0) == keys
    assert [_take(i) for i in (0, 1, 25, 26, 27)] == ["A", "B", "Z", "AA", "AB"]


@pytest.mark.slow
def test_kit_builds_each_task_in_its_real_layout(tmp_path):
    """`mamclap data build --finetune` writes AudioSet, ESC-50 and Speech Commands V2 layouts whose test
    splits share no bank clip with the corpus; each reads with load_task, and a short run goes through."""
    from training.kit.build import build_kit, check_kit, data_root, kit_dir
    build_kit("tiny", seed=0, data_dir=tmp_path, bank_dir=data_root() / "bank", progress=False,
              finetune_layouts=True)
    kit = kit_dir("tiny", 0, tmp_path)
    check_kit(kit)  # checksums cover finetune/, and its test splits are held out of the corpus
    stage = json.loads((kit / "finetune" / "stage.json").read_text())
    hear = json.loads((kit / "hear" / "stage.json").read_text())
    assert stage["esc50"]["test"] == sorted({i for f, ids in hear["mini_esc"].items() if f.startswith("fold")
                                             for i in ids})  # the mini_esc clips
    corpus = set(json.loads((kit / "corpus" / "corpus.json").read_text())["bank_ids"])
    assert stage["test_ids"] and not corpus & set(stage["test_ids"])
    for task, folder in (("as20k", "finetune/audioset"), ("as2m", "finetune/audioset"), ("esc50", "finetune/esc50"),
                         ("spcv2", "finetune/speech_commands_v2"), ("spcv2_12", "finetune/speech_commands_v2"),
                         ("spcv1_12", "superb/speech_commands")):
        data = load_task(task, kit / folder)
        assert all(f.train and f.test for f in data.folds), task
    as2m, as20k = load_task("as2m", kit / "finetune/audioset"), load_task("as20k", kit / "finetune/audioset")
    assert len(as20k.folds[0].train) < len(as2m.folds[0].train)
    assert len(load_task("spcv2", kit / "finetune/speech_commands_v2").vocabulary) == 35
    for task, folder in (("as20k", "finetune/audioset"), ("esc50", "finetune/esc50"),
                         ("spcv2", "finetune/speech_commands_v2")):
        doc = run(tmp_path, task, kit / folder, epochs=1, fold=1 if task == "esc50" else 0)
        assert doc["tasks"][task]["score"] is not None


@pytest.mark.slow
def test_two_process_ddp_run_scores_like_one_process(layouts, tmp_path):
    """Under torchrun (gloo, 2 processes) each rank predicts half the clips; the gathered test score is the
    one a single process gets from the same best-epoch weights."""
    out = tmp_path / "ddp"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "-m", "training.cli", "finetune", "--task", "spcv2", "--data", str(layouts["spcv2"]),
                    "--size", "tiny", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--epochs", "2",
                    "--mixup", "0", "--out-dir", str(out)], cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                   check=True, capture_output=True, timeout=600)
    doc = json.loads((out / "results.json").read_text())
    state = checkpointing.load(out / "checkpoint.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    model = tiny_model()
    model.load_state_dict(state["best_model"])
    task = load_task("spcv2", layouts["spcv2"])
    clips = Clips(task.folds[0].test, 3, ft.n_samples_for(model.encoder.cfg))
    logits, targets = ft.predict(model, clips, ft.Env(0, 1, 0, torch.device("cpu"), False), 4, 0)
    assert doc["tasks"]["spcv2"]["n_test"] == len(clips) == 9
    assert doc["tasks"]["spcv2"]["score"] == pytest.approx(score("accuracy", logits, targets)[0])
