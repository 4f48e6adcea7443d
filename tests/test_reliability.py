"""A user's mistakes get one clear line and exit status 2, nothing runs that should not, and nothing is left
behind: values refused when parsed, files named when they are unreadable, audio at other rates resampled,
flags that --resume would ignore refused, Ctrl-C / SIGTERM saving a checkpoint, worker pools stopped with
their command, stale temp files removed, apt's lock waited for."""
from __future__ import annotations

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

import hear_mamclap
from hear_mamclap.checkpoint import export_encoder, load_encoder, read_metadata
from hear_mamclap.errors import UserError
from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder
from training.cli import build_parser, main
from training.pretrain import checkpointing

REPO = Path(__file__).resolve().parents[1]
TINY = ("--preset", "mam", "--size", "tiny", "--batch-size", "2", "--workers", "0", "--warmup-steps", "1",
        "--log-every", "1")


def write_clips(folder: Path, sr: int, n: int = 4, seconds: float = 1.5, freq: float = 0.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sr)
    t = np.arange(int(sr * seconds)) / sr
    for i in range(n):
        x = 0.5 * np.sin(2 * np.pi * freq * t) if freq else 0.1 * rng.standard_normal(t.size)
        sf.write(folder / f"clip{i}.wav", x.astype(np.float32), sr)
    return folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return write_clips(tmp_path_factory.mktemp("clips") / "audio", 16000)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_encoder(MAMCLAPEncoder(EncoderConfig.preset("tiny")), tmp_path_factory.mktemp("export") / "enc")


def refused(capsys, argv: list[str]) -> str:
    """Run the CLI in this process; assert exit status 2 and one line on stderr (no traceback); the line."""
    try:
        rc = main(argv)
    except SystemExit as exit_:
        rc = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---- values refused when parsed: nothing is trained, nothing exported ----

@pytest.mark.parametrize("extra, flag", [
    (["--steps", "0"], "--steps"), (["--steps", "-3"], "--steps"), (["--accum", "0"], "--accum"),
    (["--batch-size", "0"], "--batch-size"), (["--batch-size", "-2"], "--batch-size"),
    (["--log-every", "0"], "--log-every"), (["--ckpt-every", "0"], "--ckpt-every"),
    (["--base-lr", "0"], "--base-lr"), (["--base-lr", "nan"], "--base-lr"), (["--workers", "-1"], "--workers"),
    (["--seed", "-1"], "--seed"), (["--device", "gpu"], "--device"), (["--preset", "mamclap"], "--preset"),
    (["--set", "mask_ratioo=0.5"], "did you mean 'mask_ratio'"), (["--set", "mask_ratio=abc"], "a number"),
    (["--set", "cls_pooling=max"], "'mean' or 'cls'"), (["--set", "encoder=base"], "--size"),
    (["--set", "mask_ratio"], "FIELD=VALUE"), (["--set", "mask_ratio=1.5"], "mask_ratio must be in [0, 1)"),
    (["--stop-at", "9", "--steps", "3"], "--stop-at"),
])
def test_pretrain_refuses_bad_values_before_any_work(extra, flag, clips, tmp_path, capsys):
    out = tmp_path / "run"
    line = refused(capsys, ["pretrain", "--data", str(clips), "--out-dir", str(out), "--steps", "2", *TINY, *extra])
    assert flag in line, line
    assert not out.exists(), "nothing may be written for a refused command"


def test_out_dirs_that_are_files_are_refused(clips, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out in (a_file, a_file / "sub"):
        line = refused(capsys, ["pretrain", "--data", str(clips), "--out-dir", str(out), *TINY])
        assert "--out-dir" in line and str(a_file) in line and "is a file" in line
    line = refused(capsys, ["tables", str(REPO / "tests" / "fixtures" / "results"), "--out", str(a_file)])
    assert "--out" in line and "is a file" in line
    assert a_file.read_text() == "x"


def test_missing_inputs_are_named(clips, tmp_path, capsys):
    line = refused(capsys, ["pretrain", "--data", str(tmp_path / "nowhere"), *TINY])
    assert "--data" in line and "nowhere" in line
    line = refused(capsys, ["pretrain", "--data", str(clips), "--preset", "mam_clap", "--teacher",
                            str(tmp_path / "clap.pt")])
    assert "--teacher" in line and "clap.pt" in line
    line = refused(capsys, ["pretrain", "--resume", "--out-dir", str(tmp_path / "empty")])
    assert "no checkpoint at" in line


def test_a_device_that_is_not_there_is_refused(monkeypatch):
    from training.pretrain.optim import resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(UserError, match="no CUDA device is visible"):
            resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(UserError, match="only 1 CUDA device"):
        resolve_device("cuda:3")
    with pytest.raises(UserError, match="LOCAL_RANK"):
        resolve_device("cuda:0", local_rank=1, world=2)


def test_train_config_checks_values_made_in_python():
    from training.pretrain.train import TrainConfig
    for bad in ({"steps": 0}, {"accum": 0}, {"batch_size": -2}, {"log_every": 0}, {"device": "gpu"},
                {"variant": "nope"}, {"stop_at": 300}, {"base_lr": float("inf")}, {"steps": 2.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig(**bad)


# ---- --resume, stale temp files, a clean stop on a signal ----

def test_resume_refuses_flags_it_would_ignore_and_stale_temp_files_are_removed(clips, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "encoder").mkdir(parents=True)
    stale = [out / "checkpoint.pt.k3j9x0.tmp", out / "encoder" / "encoder.safetensors.a1b2c3.tmp"]
    for p in stale:
        p.write_bytes(b"half a file, left by kill -9")
    assert main(["pretrain", "--data", str(clips), "--out-dir", str(out), "--steps", "2", *TINY]) == 0
    assert not any(p.exists() for p in stale)
    capsys.readouterr()
    for flag, value in (("--size", "small"), ("--variant", "supmam"), ("--base-lr", "0.1"), ("--batch-size", "4"),
                        ("--set", "mask_ratio=0.5")):
        line = refused(capsys, ["pretrain", "--resume", "--out-dir", str(out), "--steps", "3", flag, value])
        assert f"{flag} " in line and "the checkpoint's run has" in line, line
    line = refused(capsys, ["pretrain", "--resume", "--out-dir", str(out), "--steps", "1"])
    assert "already at step 2" in line
    assert checkpointing.load(out / "checkpoint.pt")["step"] == 2
    # The same flags as the saved run, and those a resumed run takes, are fine.
    assert main(["pretrain", "--resume", "--out-dir", str(out), "--steps", "3", "--size", "tiny", "--preset", "mam",
                 "--workers", "0", "--device", "cpu"]) == 0
    assert checkpointing.load(out / "checkpoint.pt")["step"] == 3 and read_metadata(out / "encoder")["step"] == 3


@pytest.mark.slow  # a process of its own
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_a_checkpoint_and_exits_with_one_line(sig, clips, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "training.cli", "pretrain", "--data", str(clips), "--out-dir",
                             str(out), "--steps", "100000", "--ckpt-every", "100000", *TINY], cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "log.jsonl").exists() and len((out / "log.jsonl").read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert f"stopped by {signal.Signals(sig).name} at step" in last and "--resume" in last, last
    step = int(last.split(" at step ")[1].split()[0])
    assert checkpointing.load(out / "checkpoint.pt")["step"] == step >= 2
    assert not (out / "encoder").exists(), "an interrupted run exports nothing"


# ---- files that are not what was expected ----

def test_unreadable_models_are_named_in_one_line(export, tmp_path, capsys):
    garbage = tmp_path / "model.pt"
    garbage.write_bytes(b"not a checkpoint" * 20)
    wav = write_clips(tmp_path / "wavs", 16000, n=1) / "clip0.wav"
    for path in (garbage, wav):
        with pytest.raises(ValueError, match=str(path)):
            hear_mamclap.load_model(str(path))
        line = refused(capsys, ["superb", "eval", "--model", str(path), "--data-root", str(tmp_path), "--name", "x",
                                "--out", str(tmp_path / "r.json")])
        assert str(path) in line
    with pytest.raises(ValueError, match="audio file"):
        load_encoder(wav)
    assert not (tmp_path / "r.json").exists()


def test_corrupt_exports_name_the_file(export, tmp_path):
    import shutil
    bad_json = shutil.copytree(export, tmp_path / "bad_json")
    (bad_json / "encoder.json").write_text('{"format": "mamclap-encoder", ')
    bad_weights = shutil.copytree(export, tmp_path / "bad_weights")
    (bad_weights / "encoder.safetensors").write_bytes((export / "encoder.safetensors").read_bytes()[:50])
    bad_config = shutil.copytree(export, tmp_path / "bad_config")
    manifest = json.loads((export / "encoder.json").read_text())
    manifest["config"]["widht"] = 3
    (bad_config / "encoder.json").write_text(json.dumps(manifest))
    for folder, file in ((bad_json, "encoder.json"), (bad_weights, "encoder.safetensors"),
                         (bad_config, "encoder.json")):
        with pytest.raises(UserError, match=str(folder / file)):
            load_encoder(folder)
    with pytest.raises(UserError, match=str(bad_json / "encoder.json")):
        read_metadata(bad_json)


def test_model_options_of_the_wrong_type_fail_at_load_time(export):
    for options, match in (({"windows_per_forward": 1.5}, "windows_per_forward must be an integer"),
                           ({"last_k": 1.5, "layers": "mean"}, "last_k must be an integer"),
                           ({"timestamp_hop_ms": "40"}, "timestamp_hop_ms must be a number"),
                           ({"layers": 3}, "layers must be a string"),
                           ({"sample_rate": 44100}, "unknown hear_mamclap option 'sample_rate'")):
        with pytest.raises(ValueError, match=match):
            hear_mamclap.load_model(str(export), **options)
    model = hear_mamclap.load_model(str(export), windows_per_forward=2)
    assert hear_mamclap.get_scene_embeddings(torch.zeros(1, 16000), model).shape[0] == 1


# ---- data, worker pools, apt ----

def test_audio_at_other_rates_is_resampled_and_said_once(tmp_path, caplog):
    from training.pretrain.data import AudioClips
    folder = write_clips(tmp_path / "cd", 44100, n=3, freq=1000.0)
    with caplog.at_level("INFO", logger="training.pretrain.data"):
        clips = AudioClips(folder, n_samples=16000)
    said = [r.getMessage() for r in caplog.records if "resampled" in r.getMessage()]
    assert len(said) == 1 and "44100 Hz" in said[0], said
    wav, _, skipped = clips[0]
    assert skipped == 0 and wav.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(wav.numpy()))
    assert abs(np.argmax(spectrum) - 1000) <= 2  # 1 Hz bins: the 1 kHz tone is still at 1 kHz


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow  # a process of its own
def test_sigterm_to_data_bank_stops_its_workers(tmp_path):
    from training.kit.build import cache_root
    from training.kit.debian import DATA_PACKAGES, SetupError, package_info
    try:
        for name in DATA_PACKAGES:
            package_info(name, cache_root())
    except SetupError:
        pytest.skip("Debian sources not set up: run `make setup`")
    proc = subprocess.Popen([sys.executable, "-m", "training.cli", "data", "--data-dir", str(tmp_path), "--cache-dir",
                             str(cache_root()), "bank", "--workers", "2"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline, workers = time.time() + 120, []
    while time.time() < deadline and proc.poll() is None and len(workers) < 2:
        time.sleep(0.2)
        workers = [p for p in _children(proc.pid) if "multiprocessing" in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(workers) >= 2, "the bank never started its workers"
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err, err[-2000:]
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    assert not any(_alive(p) for p in workers), "workers left running"
    assert not (tmp_path / "bank").exists()


def test_apt_waits_for_a_held_lock_then_names_its_holder(tmp_path, monkeypatch):
    from training.kit import debian
    counter = tmp_path / "calls"
    fake = tmp_path / "bin" / "apt-get"
    fake.parent.mkdir()
    fake.write_text(f"""#!/bin/sh
n=$(cat {counter} 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {counter}
if [ $n -le "$LOCKED_CALLS" ]; then
  echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 4242 (apt-get)" >&2; exit 100
fi
exit 0
""")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(debian, "LOCK_POLL_S", 0.01)
    monkeypatch.setenv("LOCKED_CALLS", "2")
    debian._apt_update()  # locked twice, then it runs
    assert counter.read_text().strip() == "3"
    counter.unlink()
    monkeypatch.setenv("LOCKED_CALLS", "1000000")
    monkeypatch.setattr(debian, "LOCK_TIMEOUT_S", 0.2)
    with pytest.raises(debian.SetupError, match=r"/var/lib/apt/lists/lock is held by process 4242 \(apt-get\)"):
        debian._apt_update()


# ---- the error path and the help ----

def test_debug_shows_the_traceback_and_other_errors_keep_theirs(tmp_path, capsys, monkeypatch):
    garbage = tmp_path / "model.pt"
    garbage.write_bytes(b"\x00" * 64)
    argv = ["pretrain", "--resume", "--out-dir", str(tmp_path / "none")]
    assert main(argv) == 2 and "Traceback" not in capsys.readouterr().err
    assert main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "FileNotFoundError" in err and err.strip().splitlines()[-1].count("\n") == 0
    monkeypatch.setenv("MAMCLAP_DEBUG", "1")
    assert main(argv) == 2 and "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("MAMCLAP_DEBUG")
    import training.eval.tables as tables

    def bug(*args, **kwargs):
        raise RuntimeError("a bug, not a user error")
    monkeypatch.setattr(tables, "make_tables", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["tables", str(tmp_path), "--out", str(tmp_path / "t")])


def _parsers(parser, path=("mamclap",)):
    yield path, parser
    for action in parser._actions:
        if action.choices and isinstance(action.choices, dict):  # a subcommand table
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_help_lists_every_default_and_choice():
    import argparse
    for path, parser in _parsers(build_parser()):
        text = parser.format_help()
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            flag = action.option_strings[-1]
            assert action.help, f"{' '.join(path)} {flag} has no help"
            if action.default not in (None, False, [], argparse.SUPPRESS):
                entry = parser._get_formatter()._format_action(action)
                assert "default" in entry, f"{' '.join(path)} {flag}: no default in {entry!r}"
            for choice in action.choices or ():
                assert str(choice) in text, f"{' '.join(path)} {flag}: choice {choice} not in the help"
