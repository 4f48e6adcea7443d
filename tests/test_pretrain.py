"""The pretraining loop on the tiny kit: every preset trains from the CLI, the loss falls, 2-process gloo
DDP equals 1 process with the same global batch, kill -9 + --resume equals an uninterrupted run, a
non-finite loss stops the run keeping the last good checkpoint, and unreadable clips are skipped."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch

from hear_mamclap.checkpoint import load_encoder
from training.pretrain import checkpointing

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture
def corpus(tiny_corpus) -> Path:
    """The tiny kit's WebDataset shards (conftest.py)."""
    return tiny_corpus


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    """A CLAP checkpoint in LAION's layout (randomly initialised HTS-AT-tiny), read by the real loader."""
    from training.pretrain.teacher import init_laion_checkpoint
    return init_laion_checkpoint(tmp_path_factory.mktemp("teacher") / "clap.pt", seed=0)


def run_cli(*args: str, env_extra: dict | None = None, check: bool = True, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "training.cli", *args], cwd=REPO, env=env, check=check,
                          capture_output=True, text=True, timeout=600, **popen)


def train(*args: str) -> None:
    """`mamclap ARGS` through the CLI's entry point in this process: a run whose output the test does not
    read, spared a Python start-up (imports and all, most of a tiny run's time). Runs that are killed, run
    under torchrun or whose stderr is read stay subprocesses (run_cli)."""
    from training import cli

    assert cli.main(list(args)) == 0, args


def losses(out_dir: Path) -> dict[int, float]:
    """Last logged loss per step (a resumed run re-logs the steps after its checkpoint)."""
    by_step = {}
    for line in (out_dir / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        by_step[rec["step"]] = rec["loss"]
    return by_step


COMMON = ("--size", "tiny", "--batch-size", "4", "--warmup-steps", "2", "--log-every", "1", "--workers", "0")


# One preset runs as `python -m training.cli` would from a shell; the others go through the same CLI entry
# point in this process, which spares each a Python start-up (the demo's test runs pretraining as a
# subprocess again).
@pytest.mark.parametrize("preset, subprocess_run", [("mam", False), ("mam_clap", False), ("supmam", False),
                                                    ("supmam_clap", True)])
def test_every_preset_trains_from_the_cli(preset, subprocess_run, corpus, tmp_path, request):
    out = tmp_path / preset
    extra = ("--teacher", str(request.getfixturevalue("teacher_ckpt"))) if preset.endswith("_clap") else ()
    args = ("pretrain", "--preset", preset, "--data", str(corpus), "--out-dir", str(out), "--steps", "3",
            *COMMON, *extra)
    (run_cli if subprocess_run else train)(*args)
    logged = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    expected_terms = {"recon"} | ({"distill_visible", "distill_masked"} if preset.endswith("_clap") else set()) \
        | ({"cls"} if preset.startswith("sup") else set())
    assert expected_terms <= set(logged) and all(torch.isfinite(torch.tensor(logged[k])) for k in expected_terms)
    ckpt = checkpointing.load(out / "checkpoint.pt")  # weights_only=True
    assert ckpt["step"] == 3 and ckpt["config"]["encoder"]["width"] == 64
    encoder = load_encoder(out / "encoder")
    assert encoder.cfg.n_mels == 64
    # The export and the checkpoint carry the provenance the harnesses copy into results files.
    from hear_mamclap.checkpoint import read_metadata
    for source in (out / "encoder", out / "checkpoint.pt"):
        meta = read_metadata(source)
        assert (meta["variant"], meta["seed"], meta["size"]) == (preset, 0, "tiny"), source
        assert meta["pretrain_config"]["lambda_cls"] == (0.5 if preset.startswith("sup") else 0.0)
        assert meta["pretrain_config"]["distill_masked_weight"] == (1.0 if preset.endswith("_clap") else 0.0)
    assert read_metadata(out / "encoder")["step"] == 3


def test_clap_preset_without_teacher_is_a_clear_error(corpus, tmp_path):
    res = run_cli("pretrain", "--preset", "mam_clap", "--data", str(corpus), "--out-dir", str(tmp_path),
                  "--steps", "1", *COMMON, check=False)
    assert res.returncode != 0 and "--teacher" in res.stderr


def test_loss_falls(corpus, tmp_path):
    train("pretrain", "--preset", "supmam", "--data", str(corpus), "--out-dir", str(tmp_path), "--steps", "60",
          "--base-lr", "0.05", *COMMON)
    by_step = losses(tmp_path)
    first = sum(by_step[s] for s in range(1, 6)) / 5
    last = sum(by_step[s] for s in range(56, 61)) / 5
    assert last < 0.8 * first, (first, last)


# The settings of the world-size tests: 6 steps of the tiny supmam, a checkpoint every 3 steps.
WORLD_ARGS = ("--preset", "supmam", "--size", "tiny", "--warmup-steps", "2", "--log-every", "1", "--workers", "0",
              "--base-lr", "0.01", "--ckpt-every", "3", "--steps", "6")


def torchrun(*args: str) -> None:
    """`mamclap pretrain ARGS` in 2 gloo processes on the CPU (torch.distributed.run)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "-m", "training.cli", "pretrain", *args, "--device", "cpu"],
                   cwd=REPO, env=env, check=True, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def one_process_losses(tiny_corpus, tmp_path_factory) -> dict[int, float]:
    """The reference of the world-size tests: one process, global batch 8, 6 steps uninterrupted."""
    out = tmp_path_factory.mktemp("one_process")
    train("pretrain", *WORLD_ARGS, "--data", str(tiny_corpus), "--batch-size", "8", "--out-dir", str(out))
    one = losses(out)
    assert sorted(one) == list(range(1, 7))
    return one


def test_two_process_ddp_matches_one_process(corpus, one_process_losses, tmp_path):
    torchrun(*WORLD_ARGS, "--data", str(corpus), "--out-dir", str(tmp_path / "two"), "--batch-size", "4")
    one, two = one_process_losses, losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 7))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4, abs=1e-5), step
    # Gradient accumulation is the same global batch again.
    train("pretrain", *WORLD_ARGS, "--data", str(corpus), "--out-dir", str(tmp_path / "accum"), "--batch-size", "4",
          "--accum", "2")
    accum = losses(tmp_path / "accum")
    for step in one:
        assert accum[step] == pytest.approx(one[step], rel=1e-4, abs=1e-5), step


def test_kill_9_then_resume_equals_uninterrupted(corpus, tmp_path):
    args = ("pretrain", "--preset", "supmam", "--data", str(corpus), "--steps", "16", "--ckpt-every", "4",
            *COMMON)
    train(*args, "--out-dir", str(tmp_path / "full"))
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "training.cli", *args, "--out-dir", str(out)], cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        if (out / "log.jsonl").exists() and max(losses(out), default=0) >= 9:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = checkpointing.load(out / "checkpoint.pt")["step"]
    assert 4 <= saved < 16 and saved % 4 == 0
    assert not list(out.glob("checkpoint.pt.*.tmp"))  # nothing half written is left as the checkpoint
    train(*args, "--out-dir", str(out), "--resume")
    full, resumed = losses(tmp_path / "full"), losses(out)
    assert sorted(resumed) == sorted(full)
    for step in full:
        assert resumed[step] == pytest.approx(full[step], rel=1e-6, abs=1e-7), step


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(corpus, tmp_path):
    # A learning rate of 1e30 makes the weights huge after one update, so a later loss overflows.
    res = run_cli("pretrain", "--preset", "mam", "--data", str(corpus), "--out-dir", str(tmp_path), "--steps", "30",
                  "--ckpt-every", "1", "--base-lr", "1e30", "--warmup-steps", "1", "--clip-grad", "0",
                  "--size", "tiny", "--batch-size", "4", "--log-every", "1", "--workers", "0", check=False)
    assert res.returncode != 0 and "last good checkpoint" in res.stderr, res.stderr[-2000:]
    failed_at = int(re.search(r"at step (\d+): stopping", res.stderr).group(1))
    ckpt = checkpointing.load(tmp_path / "checkpoint.pt")
    assert 1 <= ckpt["step"] == failed_at < 30
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_unreadable_clips_are_skipped_and_counted(corpus, tmp_path):
    folder = tmp_path / "audio"
    folder.mkdir()
    for i, shard in enumerate(sorted(corpus.glob("*.tar"))[:1]):
        shutil.unpack_archive(shard, folder, format="tar")
    for extra in folder.glob("*.json"):
        extra.unlink()
    good = sorted(folder.glob("*.flac"))
    good[0].write_bytes(good[0].read_bytes()[:100])  # truncated
    (folder / "empty.flac").write_bytes(b"")
    sf.write(folder / "silence.wav", torch.zeros(0).numpy(), 16000)
    res = run_cli("pretrain", "--preset", "mam", "--data", str(folder), "--out-dir", str(tmp_path / "run"),
                  "--steps", "6", *COMMON)
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["step"] == 6 and summary["skipped"] >= 3


def test_checkpoint_moves_between_world_sizes(corpus, one_process_losses, tmp_path):
    """A checkpoint of a 2-process run resumes on 1 process (and the reverse) with the same global batch,
    giving the losses of an uninterrupted run."""
    args = (*WORLD_ARGS, "--data", str(corpus))
    # 2 processes to step 3, then 1 process to step 6.
    torchrun(*args, "--stop-at", "3", "--batch-size", "4", "--out-dir", str(tmp_path / "two_one"))
    saved = checkpointing.load(tmp_path / "two_one" / "checkpoint.pt")
    assert saved["world_size"] == 2 and saved["step"] == 3
    train("pretrain", *args, "--out-dir", str(tmp_path / "two_one"), "--resume")
    # 1 process to step 3, then 2 processes to step 6.
    train("pretrain", *args, "--stop-at", "3", "--batch-size", "8", "--out-dir", str(tmp_path / "one_two"))
    assert checkpointing.load(tmp_path / "one_two" / "checkpoint.pt")["world_size"] == 1
    torchrun(*args, "--out-dir", str(tmp_path / "one_two"), "--resume")
    one = one_process_losses
    for moved in (losses(tmp_path / "two_one"), losses(tmp_path / "one_two")):
        assert sorted(moved) == sorted(one)
        for step in one:
            assert moved[step] == pytest.approx(one[step], rel=1e-4, abs=1e-5), step


def test_audioset_layout_trains_with_the_same_labels(corpus, tmp_path):
    """The AudioSet CSV layout of the same corpus gives the same clips and multi-hot labels as the shards."""
    from training.pretrain.data import AudioClips
    from training.kit.corpus import write_audioset_layout
    write_audioset_layout(corpus, tmp_path / "audioset", progress=False)
    csv_path = tmp_path / "audioset" / "unbalanced_train_segments.csv"
    shards, audioset = AudioClips(corpus, n_samples=16000), AudioClips(csv_path, n_samples=16000)
    assert audioset.vocabulary == shards.vocabulary and len(audioset) == len(shards)
    by_key = {item.key: item.labels for item in shards.items}
    assert all(by_key[item.key] == item.labels and item.labels for item in audioset.items)
    train("pretrain", "--preset", "supmam", "--data", str(csv_path), "--out-dir", str(tmp_path / "run"),
          "--steps", "2", *COMMON)
    assert checkpointing.load(tmp_path / "run" / "checkpoint.pt")["step"] == 2
