"""CLAP teacher: LAION checkpoint layout (strict load, clear errors, save round trip), feature shapes for any
clip length, alignment of teacher time and frequency to the student's patch grid, frozen module.

The HTS-AT here is laion-clap's real HTSAT-tiny with random weights (no LAION weights offline); its layout
checks (a tone burst moves the features most at its own time patch) need no training: the Swin
transformer's local windows and residual paths keep a local change strongest where it happened.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from hear_mamclap.frontend import num_frames
from hear_mamclap.model import EncoderConfig
from training.compat import htsat_audio_config, load_htsat_module
from training.pretrain.teacher import (LaionClapTeacher, TeacherConfig, linear_weights, load_teacher, plan_windows,
                              read_laion_state_dict, save_laion_checkpoint, student_patch_times, time_weights)

ENC = EncoderConfig()  # 128 mel bins, 16x16 patches: grid (64, 8), 0.16 s per time patch
SR = 16000
FRAMES = TeacherConfig()
TOKENS = TeacherConfig(features="tokenmap", align="grid_resample", projection=True)


def roberta_keys(layers: int = 12) -> list[str]:
    """RoBERTa-base parameter names as LAION's text_branch holds them (position_ids: saved by the
    transformers of 2022, which kept it as a persistent buffer)."""
    keys = ["embeddings.position_ids", "embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
            "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"]
    for i in range(layers):
        for sub in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                    "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm"):
            keys += [f"encoder.layer.{i}.{sub}.weight", f"encoder.layer.{i}.{sub}.bias"]
    return keys + ["pooler.dense.weight", "pooler.dense.bias"]


def clap_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A CLAP.state_dict() as LAION's HTSAT-tiny + RoBERTa model has it: real HTS-AT and projection weights
    (random init); the text side with LAION's names but tiny tensors (the teacher never reads it)."""
    torch.manual_seed(seed)
    branch = load_htsat_module().create_htsat_model(htsat_audio_config("HTSAT-tiny"))
    mlp = lambda d_in: nn.Sequential(nn.Linear(d_in, 512), nn.ReLU(), nn.Linear(512, 512))  # noqa: E731
    state = {f"audio_branch.{k}": v for k, v in branch.state_dict().items()}
    state |= {f"audio_projection.{k}": v for k, v in mlp(768).state_dict().items()}
    state |= {f"text_branch.{k}": torch.zeros(2) for k in roberta_keys()}
    for name in ("audio_transform", "text_transform"):  # MLPLayers([512, 512, 512]): Linear at 0 and 3
        state |= {f"{name}.sequential.{i}.{p}": torch.zeros(2) for i in (0, 3) for p in ("weight", "bias")}
    state |= {f"text_projection.{i}.{p}": torch.zeros(2) for i in (0, 2) for p in ("weight", "bias")}
    state |= {"logit_scale_a": torch.tensor(math.log(1 / 0.07)), "logit_scale_t": torch.tensor(math.log(1 / 0.07))}
    return state


def laion_checkpoint(state: dict[str, torch.Tensor]) -> dict:
    """Wrapped as LAION's training/main.py saves it (630k-audioset-best.pt): DDP "module." names."""
    return {"epoch": 45, "name": "htsat-tiny-roberta", "optimizer": {"state": {}, "param_groups": []},
            "state_dict": {f"module.{k}": v for k, v in state.items()}}


@pytest.fixture(scope="module")
def clap_state() -> dict[str, torch.Tensor]:
    return clap_state_dict()


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory, clap_state) -> str:
    path = tmp_path_factory.mktemp("clap") / "630k-audioset-best.pt"
    torch.save(laion_checkpoint(clap_state), path)
    return str(path)


@pytest.fixture(scope="module")
def teachers(ckpt_path) -> dict[str, LaionClapTeacher]:
    return {"frames": load_teacher(ckpt_path, ENC, FRAMES), "tokens": load_teacher(ckpt_path, ENC, TOKENS)}


def write(tmp_path, obj, name="bad.pt") -> str:
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


# ---- checkpoint layout ----


def test_real_laion_layout_loads_strictly(ckpt_path, clap_state, teachers):
    teacher = teachers["tokens"]
    assert teacher.model_name == "HTSAT-tiny" and teacher.dim == 512 and teachers["frames"].dim == 768
    loaded = {f"audio_branch.{k}": v for k, v in teacher.audio_branch.state_dict().items()}
    loaded |= {f"audio_projection.{k}": v for k, v in teacher.audio_projection.state_dict().items()}
    expected = {k: v for k, v in clap_state.items() if k.startswith(("audio_branch.", "audio_projection."))}
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_bare_state_dict_without_module_prefix_loads(tmp_path, clap_state):
    teacher = load_teacher(write(tmp_path, clap_state, "bare.pt"), ENC)
    assert torch.equal(teacher.audio_branch.patch_embed.proj.weight, clap_state["audio_branch.patch_embed.proj.weight"])


@pytest.mark.parametrize("edit, cfg, message", [
    (lambda s: s.pop("audio_branch.layers.2.blocks.5.mlp.fc2.bias"), FRAMES,
     "1 missing: layers.2.blocks.5.mlp.fc2.bias"),
    (lambda s: s.update({"audio_branch.head2.weight": torch.zeros(3)}), FRAMES, "1 unexpected: head2.weight"),
    (lambda s: s.update({"audio_branch.norm.weight": torch.zeros(1024)}), FRAMES,
     "shape mismatches (checkpoint vs model): norm.weight (1024,) vs (768,)"),
    (lambda s: s.update({"audio_projection.2.bias": torch.zeros(7)}), TOKENS, "audio_projection"),
    (lambda s: [s.pop(k) for k in list(s) if k.startswith("audio_projection.")], TOKENS,
     "projection=True needs audio_projection"),
    (lambda s: [s.pop(k) for k in list(s) if k.startswith("audio_branch.")], FRAMES, "no audio_branch.* keys"),
    (lambda s: s.update({"audio_branch.fusion_model.local_att.0.weight": torch.zeros(1)}), FRAMES,
     "feature-fusion checkpoint"),
])
def test_mismatched_checkpoints_fail_clearly(tmp_path, clap_state, edit, cfg, message):
    state = dict(clap_state)
    edit(state)
    with pytest.raises(ValueError) as err:
        load_teacher(write(tmp_path, laion_checkpoint(state)), ENC, cfg)
    assert message in str(err.value)


def test_unreadable_files_fail_clearly(tmp_path):
    garbage = tmp_path / "corrupt.pt"
    garbage.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        read_laion_state_dict(garbage)
    with pytest.raises(ValueError, match="expected a LAION CLAP checkpoint"):
        read_laion_state_dict(write(tmp_path, {"epoch": 3, "state_dict": {"a": 1}}))
    with pytest.raises(FileNotFoundError):
        read_laion_state_dict(tmp_path / "missing.pt")


def test_saved_checkpoint_has_laion_layout_and_loads(tmp_path, clap_state):
    path = tmp_path / "trained_clap.pt"
    save_laion_checkpoint(path, clap_state, epoch=7, name="mamclap-clap")
    saved = torch.load(path, weights_only=True)
    assert {"epoch", "name", "state_dict"} <= saved.keys() and saved["epoch"] == 7
    assert saved["state_dict"].keys() == laion_checkpoint(clap_state)["state_dict"].keys()
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically, no temp file left
    teacher = load_teacher(path, ENC, TOKENS)
    assert torch.equal(teacher.audio_projection[2].weight, clap_state["audio_projection.2.weight"])
    with pytest.raises(ValueError, match="audio_projection"):
        save_laion_checkpoint(tmp_path / "x.pt", {k: v for k, v in clap_state.items() if "projection" not in k})


# ---- geometry ----


@pytest.mark.parametrize("seconds", [1.0, 5.0, 10.24, 10.255, 25.0, 31.3])
def test_windows_cover_the_clip(seconds):
    starts = plan_windows(seconds, 10.0)
    assert starts[0] <= 0.25 and starts[-1] + 10.0 >= seconds - 0.25  # at most a 0.25 s overhang per side
    assert all(b - a <= 10.0 for a, b in zip(starts, starts[1:]))  # consecutive windows leave no gap
    assert len(starts) == (1 if seconds <= 10.5 else math.ceil(seconds / 10))


def test_interpolation_weights():
    knots = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    w = linear_weights(torch.tensor([-1.0, 0.0, 0.5, 2.0, 3.0, 9.0], dtype=torch.float64), knots)
    assert torch.allclose(w, torch.tensor([[1, 0, 0], [1, 0, 0], [0.5, 0.5, 0], [0, 0.5, 0.5], [0, 0, 1], [0, 0, 1]],
                                          dtype=torch.float64))
    steps = torch.tensor([0.25, 0.75], dtype=torch.float64)  # two windows of 1 s starting at 0 and 0.5
    w = time_weights(torch.tensor([0.25, 1.25], dtype=torch.float64), torch.tensor([0.0, 0.5], dtype=torch.float64),
                     steps, 1.0)
    assert torch.equal(w, torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]], dtype=torch.float64))


# ---- features ----


def burst(seconds: float, at: float | None, hz: float = 1000.0, seed: int = 0) -> torch.Tensor:
    """Quiet noise, plus an 80 ms Hann-shaped tone burst centred at `at` seconds; (1, N) at 16 kHz."""
    g = torch.Generator().manual_seed(seed)
    n = round(seconds * SR)
    wav = 0.003 * torch.randn(n, generator=g)
    if at is not None:
        t = torch.arange(int(0.08 * SR)) / SR
        start = round((at - 0.04) * SR)
        wav[start:start + len(t)] += 0.5 * torch.hann_window(len(t), periodic=False) * torch.sin(2 * math.pi * hz * t)
    return wav[None]


def test_batch_and_feature_kinds_at_the_pretraining_length(teachers):
    wav = torch.cat([burst(10.24, None), burst(10.24, 3.0)])
    out = teachers["frames"](wav)
    assert out.shape == (2, 63 * 8, 768)
    assert torch.allclose(out[0], teachers["frames"](wav[:1])[0], atol=1e-4)  # batch items are independent
    assert teachers["tokens"](wav).shape == (2, 63 * 8, 512)
    # tokenmap + time_interp gives each frequency patch its nearest band; the frame output is the mean of
    # the two bands, so this also checks the token map is read in LAION's own (time) order
    per_band = LaionClapTeacher(ENC, TeacherConfig(features="tokenmap"))
    per_band.audio_branch.load_state_dict(teachers["frames"].audio_branch.state_dict())
    bands = per_band(wav[:1]).reshape(63, 8, 768)
    assert torch.allclose(bands[:, [0, 7]].mean(1), out[0].reshape(63, 8, 768)[:, 0], atol=1e-4)


@pytest.mark.parametrize("kind, seconds, at", [("frames", 1.0, 0.55), ("frames", 5.0, 3.3), ("frames", 10.24, 7.1),
                                               ("frames", 25.0, 18.4), ("tokens", 10.24, 7.1), ("tokens", 25.0, 18.4)])
def test_tone_burst_lines_up_with_its_student_patch(teachers, kind, seconds, at):
    """Any clip length gives (B, n_time * n_freq, D), and a burst moves the features most at its patch."""
    teacher = teachers[kind]
    both = torch.cat([burst(seconds, None), burst(seconds, at)])  # same noise, with and without the burst
    out = teacher(both)
    n_time, n_freq = num_frames(both.shape[1]) // 16, ENC.grid[1]
    assert out.shape == (2, n_time * n_freq, teacher.dim) and torch.isfinite(out).all()
    change = (out[1] - out[0]).reshape(n_time, n_freq, teacher.dim).norm(dim=-1).mean(dim=1)  # (n_time,)
    expected = int((student_patch_times(ENC, both.shape[1]) - at).abs().argmin())
    assert abs(int(change.argmax()) - expected) <= 1, (change.argmax(), expected)


def test_grid_resample_keeps_frequency(teachers):
    """A low tone changes the low frequency patches most, a high tone the high ones."""
    teacher, at = teachers["tokens"], 4.0
    quiet, low, high = burst(6.0, None), burst(6.0, at, hz=250.0), burst(6.0, at, hz=6000.0)
    out = teacher(torch.cat([quiet, low, high]))  # (3, n_time * n_freq, D)
    t = int((student_patch_times(ENC, quiet.shape[1]) - at).abs().argmin())
    grid = out.reshape(3, -1, ENC.grid[1], teacher.dim)[:, t]  # (3, n_freq, D) at the burst's time patch
    low_change, high_change = (grid[1] - grid[0]).norm(dim=-1), (grid[2] - grid[0]).norm(dim=-1)
    assert low_change[0] > low_change[-1] and high_change[-1] > high_change[0]


# ---- frozen module and input checks ----


def test_teacher_is_frozen(teachers):
    teacher = teachers["tokens"]
    teacher.train()
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not any(m.training for m in teacher.modules())
    wav = burst(1.0, 0.5).requires_grad_(True)
    assert not teacher(wav).requires_grad


def test_bad_input_is_refused(teachers):
    with pytest.raises(ValueError, match="expected float audio"):
        teachers["frames"](torch.zeros(16000))
    with pytest.raises(ValueError, match="expected at least 2800 samples"):
        teachers["frames"](torch.zeros(1, 2000))
    with pytest.raises(ValueError, match="needs features='tokenmap'"):
        TeacherConfig(align="grid_resample")


def test_teacher_init_writes_a_random_laion_checkpoint_the_loader_reads(tmp_path, capsys):
    """`mamclap teacher init`: a seeded random HTS-AT + projection in LAION's layout (the benchmarks' stand-in
    teacher); the same seed gives the same weights, another seed others; a bad model name is a clear error."""
    from training.cli import main
    from training.pretrain.teacher import read_laion_state_dict
    assert main(["teacher", "init", "--out", str(tmp_path / "a.pt"), "--seed", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "HTSAT-tiny"
    teacher = load_teacher(tmp_path / "a.pt", ENC, TOKENS)
    assert teacher.model_name == "HTSAT-tiny"
    main(["teacher", "init", "--out", str(tmp_path / "b.pt"), "--seed", "3"])
    main(["teacher", "init", "--out", str(tmp_path / "c.pt"), "--seed", "4"])
    a, b, c = (read_laion_state_dict(tmp_path / f"{n}.pt") for n in "abc")
    key = "audio_projection.0.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])
    with pytest.raises(SystemExit, match="HTSAT"):
        main(["teacher", "init", "--out", str(tmp_path / "d.pt"), "--model", "HTSAT-huge"])


def test_teacher_and_clap_trainer_share_one_builder_of_the_audio_side():
    """build_clap_audio is the one builder of CLAP's audio side: seeded alike, the teacher and the CLAP
    trainer's model hold the same HTS-AT and projection, under the same names; without a projection the
    teacher keeps the HTS-AT width."""
    from training.pretrain.clap_train import ClapModel
    from training.pretrain.teacher import build_clap_audio

    torch.manual_seed(5)
    teacher = LaionClapTeacher(ENC, TeacherConfig(projection=True))
    torch.manual_seed(5)
    clap = ClapModel("HTSAT-tiny")
    for part in ("audio_branch", "audio_projection"):
        ours, theirs = getattr(teacher, part).state_dict(), getattr(clap, part).state_dict()
        assert list(ours) == list(theirs), part
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), part
    branch, projection, audio_cfg = build_clap_audio("HTSAT-tiny", joint_dim=None)
    assert projection is None and branch.num_features == 768 and audio_cfg.sample_rate == 48000
    plain = LaionClapTeacher(ENC, FRAMES)
    assert plain.audio_projection is None and plain.dim == 768
