"""The release: `mamclap export --release` writes results/models/NAME in bfloat16 safetensors files of at most
16 MiB (48 MiB in all) with a model card; hear_mamclap.load_model, the s3prl upstream and load_encoder read
it as float32; the repository's own release (once committed) loads and passes hear-validator."""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import hear_mamclap
from hear_mamclap.checkpoint import CONFIG_NAME, export_encoder, load_encoder, plan_shards, read_metadata
from hear_mamclap.errors import UserError
from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder
from training import compat
from training.cli import main
from training.release import (MAX_RELEASE_BYTES, MAX_SHARD_BYTES, RELEASE_NAME, find_release, release_dirs,
                              write_release)

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20


def encoder(preset: str = "tiny", seed: int = 0, **overrides) -> MAMCLAPEncoder:
    torch.manual_seed(seed)
    return MAMCLAPEncoder(EncoderConfig.preset(preset, **overrides)).eval()


def audio(n: int = 2, seconds: float = 1.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return 0.1 * torch.randn(n, int(16000 * seconds), generator=g)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def release(src: Path, models: Path, name: str = "tiny-test", *extra: str) -> Path:
    assert main(["export", str(src), "--release", "--name", name, "--models-dir", str(models), *extra]) == 0
    return models / name


def check_release(folder: Path) -> MAMCLAPEncoder:
    """The release rules on a folder: files <= 16 MiB, <= 48 MiB in all, bfloat16 shards listed in its
    encoder.json, a model card; returns the encoder loaded from it."""
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert all(s <= MAX_SHARD_BYTES for s in sizes.values()), sizes
    assert sum(sizes.values()) <= MAX_RELEASE_BYTES, sizes
    manifest = json.loads((folder / CONFIG_NAME).read_text())
    listed = [f["name"] for f in manifest["weights"]["files"]]
    assert manifest["weights"]["dtype"] == "bfloat16" and set(sizes) == {CONFIG_NAME, "README.md", *listed}
    assert all(t.dtype == torch.bfloat16 for name in listed for t in load_file(str(folder / name)).values()
               if t.is_floating_point())
    loaded = load_encoder(folder)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    return loaded


# ------------------------------------------------------------------------------------------ round trips


def test_a_release_loads_in_float32_through_load_model_and_the_s3prl_upstream(tmp_path):
    from superb_upstream.expert import UpstreamExpert
    from superb_upstream.hubconf import mamclap

    original = encoder()
    src = export_encoder(original, tmp_path / "src", metadata={"variant": "mam", "seed": 3})
    folder = release(src, tmp_path / "models")
    loaded = check_release(folder)
    for (name, want), got in zip(original.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(got, want.to(torch.bfloat16).float()), name  # bf16 rounding, nothing else
    assert read_metadata(folder)["seed"] == 3 and loaded.metadata["exported"]["from"] == str(src)

    x = audio()
    model, reference = hear_mamclap.load_model(str(folder)), hear_mamclap.HearModel(original)
    scene = hear_mamclap.get_scene_embeddings(x, model)
    assert scene.dtype == torch.float32
    assert relative_error(scene, hear_mamclap.get_scene_embeddings(x, reference)) < 0.02
    (ts, times), (ts_ref, times_ref) = (hear_mamclap.get_timestamp_embeddings(x, m) for m in (model, reference))
    assert torch.equal(times, times_ref) and relative_error(ts, ts_ref) < 0.02

    wavs = [x[0], x[1, :12000]]
    got, want = mamclap(str(folder))(wavs), UpstreamExpert(encoder=original)(wavs)
    assert len(got["hidden_states"]) == len(want["hidden_states"]) == original.cfg.depth + 1
    for a, b in zip(got["hidden_states"], want["hidden_states"]):
        assert a.shape == b.shape and relative_error(a, b) < 0.02


def test_a_vit_s_is_cut_into_files_of_at_most_16_mib(tmp_path):
    original = encoder("small")
    src = export_encoder(original, tmp_path / "src")
    folder = release(src, tmp_path / "models", "vits")
    loaded = check_release(folder)
    shards = sorted(folder.glob("encoder-*-of-*.safetensors"))
    assert [p.name for p in shards] == [f"encoder-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert 40 * MiB < sum(p.stat().st_size for p in shards) <= MAX_RELEASE_BYTES
    key = "blocks.11.mlp.2.weight"
    assert torch.equal(loaded.state_dict()[key], original.state_dict()[key].to(torch.bfloat16).float())
    card = (folder / "README.md").read_text()
    assert all(p.name in card for p in shards) and "results/models/vits" in card


def test_an_encoder_over_48_mib_is_refused_in_one_line_and_nothing_is_written(tmp_path, capsys):
    src = export_encoder(encoder("small", depth=16), tmp_path / "src")  # 28 M parameters: 54 MiB in bf16
    models = tmp_path / "models"
    assert main(["export", str(src), "--release", "--name", "big", "--models-dir", str(models)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "54.3 MiB in bfloat16, over the release limit of 48 MiB" in err, err
    assert not models.exists() or not any(models.iterdir())


def test_shards_are_planned_under_the_limit_and_checked_when_loaded(tmp_path):
    original = encoder()
    state = {k: v.to(torch.bfloat16) for k, v in original.state_dict().items()}
    with pytest.raises(ValueError, match=r"tensor patch_embed.weight \(64, 256\) takes 32,\d+ bytes, more than a shard may hold \(16,384"):
        plan_shards(state, 16 * 1024)
    folder = export_encoder(original, tmp_path / "export", dtype=torch.bfloat16, max_shard_bytes=64 * 1024)
    shards = sorted(folder.glob("encoder-*.safetensors"))
    assert len(shards) >= 3 and all(p.stat().st_size <= 64 * 1024 for p in shards)
    load_encoder(shards[1])  # any of its files names the export: all of them are read
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[:100])
    with pytest.raises(UserError, match=f"{shards[1]}: 100 bytes, .* says {len(data)}.*Git LFS pointer"):
        load_encoder(folder)
    shards[1].write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(UserError, match="SHA-256 differs"):
        load_encoder(folder)
    shards[1].unlink()
    with pytest.raises(FileNotFoundError, match=f"{shards[1]}: missing"):
        hear_mamclap.load_model(str(folder))


def driver_bf16_shards():
    """results/gpu/scripts/representations_driver.py's bf16_shards, compiled on its own (importing the driver
    would set up its work folder and environment)."""
    path = REPO / "results" / "gpu" / "scripts" / "representations_driver.py"
    tree = ast.parse(path.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "bf16_shards")
    scope = {"Path": Path}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec"), scope)  # noqa: S102
    return scope["bf16_shards"]


def merged(files) -> dict[str, torch.Tensor]:
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def test_the_gpu_drivers_bf16_shards_become_the_release_bit_for_bit(tmp_path, monkeypatch, capsys):
    """What the GPU driver brings back (the run's encoder.json, its weights as <run>.bf16-0000i-of-0000N
    files, the run's log and its kit's manifest under kits/) is an export, and the release made of it holds
    the very same bfloat16 weights, with the run's data, recipe and losses in its card."""
    original = encoder()
    train = {"variant": "supmam", "size": "tiny", "data": "/tmp/mg/data/kit-medium-s0-c8000/corpus", "steps": 8,
             "batch_size": 4, "accum": 2, "base_lr": 1e-3, "weight_decay": 0.05, "warmup_steps": 1, "seed": 0}
    export = export_encoder(original, tmp_path / "gpu" / "runs" / "supmam-s0" / "encoder", metadata={
        "variant": "supmam", "size": "tiny", "seed": 0, "step": 8, "clips_seen": 512, "train_config": train})
    files = driver_bf16_shards()(export, tmp_path / "gpu" / "shards", limit=64 * 1024)
    assert len(files) >= 3 and files[0].name == f"supmam-s0.bf16-00001-of-{len(files):05d}.safetensors"
    # Unpacked as the results come back: the tarball's runs/ and kits/, the shard files beside them.
    rep = tmp_path / "representations"
    brought = rep / "runs" / "supmam-s0" / "encoder"
    brought.mkdir(parents=True)
    (brought / CONFIG_NAME).write_bytes((export / CONFIG_NAME).read_bytes())
    for f in files:
        (brought / f.name).write_bytes(f.read_bytes())
    (rep / "runs" / "supmam-s0" / "log.jsonl").write_text(
        json.dumps({"step": 1, "lr": 1e-4, "loss": 1.09, "recon": 0.905}) + "\n"
        + json.dumps({"step": 8, "lr": 1e-6, "loss": 0.81, "recon": 0.702}) + "\n")
    (rep / "kits").mkdir()
    (rep / "kits" / "kit-medium-s0-c8000.manifest.json").write_text(json.dumps({
        "kit": "kit-medium-s0-c8000", "digest": "cd" * 32, "datasets": {"corpus": {"clips": 8000, "hours": 22.2222,
                                                                                  "bank_ids": 1038}}}))
    loaded = load_encoder(brought)  # an export like any other, in float32
    for (name, want), got in zip(original.state_dict().items(), loaded.state_dict().values()):
        assert got.dtype == torch.float32 and torch.equal(got, want.to(torch.bfloat16).float()), name

    monkeypatch.chdir(tmp_path)  # no results/tables/main/scores.csv here: a card without scores
    folder = release(brought, tmp_path / "models", "from-gpu")
    check_release(folder)
    shards, released = merged(files), merged(sorted(folder.glob("encoder-*.safetensors")))
    assert sorted(shards) == sorted(released) and all(
        v.dtype == torch.bfloat16 and torch.equal(v.view(torch.int16), released[k].view(torch.int16))
        for k, v in shards.items())  # bit for bit
    card = (folder / "README.md").read_text()
    for text in ("| corpus | `/tmp/mg/data/kit-medium-s0-c8000/corpus` |", "kit-medium-s0-c8000 (digest cdcdcdcdcdcd; ",
                 "| clips | 8000 |", "4 per process x 2 accumulation x 8 processes = 64 clips per step; 512 clips seen",
                 "loss 1.090 -> 0.810, recon 0.905 -> 0.702 (steps 1 -> 8", "## Scores\n\nNone measured"):
        assert text in card, (text, card)
    assert "±" not in card

    # With results/tables/main/scores.csv in the checkout, the card takes its scores from it by default.
    (tmp_path / "results" / "tables" / "main").mkdir(parents=True)
    (tmp_path / "results" / "tables" / "main" / "scores.csv").write_text(
        "model,kind,metric,mean,ci95,n\nsupmam,pretrained,overall,0.52,0.01,3\nlogmel,baseline,overall,0.46,0.02,1\n")
    folder = release(brought, tmp_path / "models", "from-gpu", "--scores-model", "supmam")
    card = (folder / "README.md").read_text()
    assert "| overall | 0.520 ± 0.010 (n=3) | 0.460 ± 0.020 (n=1) |" in card and "None measured" not in card
    assert "scores from results/tables/main/scores.csv" in capsys.readouterr().out
    folder = release(brought, tmp_path / "models-2", "from-gpu", "--no-scores")
    assert "None measured" in (folder / "README.md").read_text()

    # An incomplete or mixed set of shards is named, never loaded in part.
    (brought / files[1].name).unlink()
    with pytest.raises(UserError, match=f"supmam-s0.bf16 shards of {len(files)}: 2 missing; copy the whole set"):
        load_encoder(brought)
    (brought / files[1].name).write_bytes(files[1].read_bytes())
    (brought / "mam-s1.bf16-00001-of-00001.safetensors").write_bytes(files[0].read_bytes())
    with pytest.raises(UserError, match="bfloat16 shards of 2 sets"):
        load_encoder(brought)


# ------------------------------------------------------------------------------------- the one release


def test_a_release_replaces_the_old_one_and_never_sits_beside_it(tmp_path, capsys):
    models = tmp_path / "models"
    src = export_encoder(encoder(seed=1), tmp_path / "src")
    release(src, models, "first")
    assert main(["export", str(src), "--release", "--name", "second", "--models-dir", str(models)]) == 2
    assert "already holds the release first" in capsys.readouterr().err
    assert [p.name for p in release_dirs(models)] == ["first"]
    release(src, models, "first")  # the same name: rewritten in place
    release(src, models, "second", "--replace")
    assert [p.name for p in models.iterdir()] == ["second"] and find_release(models) == models / "second"
    # Replaced only by a better one: the overall score recorded in encoder.json decides.
    scores = tmp_path / "scores.csv"
    scores.write_text("model,kind,metric,mean,ci95,n\na,pretrained,overall,0.50,0.01,3\n"
                      "b,pretrained,overall,0.45,0.01,3\nc,pretrained,overall,0.55,0.01,3\n")
    release(src, models, "second", "--scores", str(scores), "--scores-model", "a")
    assert read_metadata(models / "second")["release"]["scores"] == [
        {"metric": "overall", "mean": "0.50", "ci95": "0.01", "n": "3"}]
    for refused, why in ((["--scores-model", "b"], "scores 0.5000 overall; this encoder scores 0.4500"),
                         (["--no-scores"], "this encoder has no overall score")):
        args = ["export", str(src), "--release", "--name", "third", "--models-dir", str(models), "--replace"]
        assert main([*args, "--scores", str(scores), *refused] if refused[0] != "--no-scores" else
                    [*args, *refused]) == 2
        assert why in capsys.readouterr().err and [p.name for p in models.iterdir()] == ["second"]
    release(src, models, "third", "--replace", "--scores", str(scores), "--scores-model", "c")
    assert [p.name for p in models.iterdir()] == ["third"]
    shutil.rmtree(models / "third")
    release(src, models, "second")
    (models / "third").mkdir()
    (models / "third" / CONFIG_NAME).write_text("{}")
    with pytest.raises(UserError, match="holds 2 releases"):
        find_release(models)


def test_the_card_gives_data_recipe_losses_and_scores(tmp_path, capsys, monkeypatch):
    from training.eval.results import new_results, save_results, task_entry
    from training.pretrain.mam import PretrainConfig
    from training.pretrain.train import TrainConfig

    kit = tmp_path / "data" / "kit-medium-s0"
    (kit / "corpus").mkdir(parents=True)
    (kit / "manifest.json").write_text(json.dumps({"kit": "kit-medium-s0", "digest": "ab" * 32, "datasets": {
        "corpus": {"clips": 19200, "hours": 53.3, "bank_ids": 1038}}}))
    run = tmp_path / "runs" / "supmam"
    run.mkdir(parents=True)
    original = encoder()
    train = TrainConfig(variant="supmam", size="tiny", data=str(kit / "corpus"), steps=1000, batch_size=64,
                        base_lr=1e-3, weight_decay=0.05, warmup_steps=100, seed=2)
    pretrain = PretrainConfig.preset("supmam", size="tiny").to_dict()
    torch.save({"model": {f"encoder.{k}": v for k, v in original.state_dict().items()}, "config": pretrain,
                "train_config": dataclasses.asdict(train), "world_size": 4, "step": 1000}, run / "checkpoint.pt")
    (run / "log.jsonl").write_text(json.dumps({"step": 10, "lr": 1e-5, "loss": 4.91, "recon": 1.322}) + "\n"
                                   + json.dumps({"step": 1000, "lr": 1e-10, "loss": 1.247, "recon": 0.713}) + "\n")
    scores = tmp_path / "scores.csv"
    scores.write_text("model,kind,metric,mean,ci95,n\n"  # `mamclap tables`' scores.csv
                      "supmam,pretrained,overall,0.5123,0.0101,3\n"
                      "supmam,pretrained,SUPERB SID,0.61,,1\n"
                      "mam,pretrained,overall,0.499,0.02,3\n"
                      "logmel,baseline,overall,0.464,0.012,1\n"
                      "random-init,baseline,overall,0.43,0.011,3\n")
    folder = release(run / "checkpoint.pt", tmp_path / "models", "supmam-release", "--scores", str(scores),
                     "--scores-model", "supmam")
    card = (folder / "README.md").read_text()
    for text in ("# mamclap encoder (supmam)", "kit-medium-s0 (digest abababababab; ", "| clips | 19200 |",
                 "| distinct source recordings | 1038 |", "64 per process x 1 accumulation x 4 processes = 256 "
                 "clips per step; 256,000 clips seen", "base 0.001 x global batch / 256, 100 warm-up steps",
                 "| weight decay | 0.05 |", "loss 4.910 -> 1.247, recon 1.322 -> 0.713 (steps 10 -> 1000",
                 "| score | **supmam** (this model) | logmel | random-init |",
                 "| overall | 0.512 ± 0.010 (n=3) | 0.464 ± 0.012 (n=1) | 0.430 ± 0.011 (n=3) |",
                 "| SUPERB SID | 0.610 (n=1) | - | - |", f"(from `{scores}`)",
                 'from_pretrained("results/models/supmam-release")', "-u mamclap -k results/models/supmam-release",
                 '"base_lr": 0.001', "A task without a row was not scored: the group means and overall are over "
                 "the rows shown."):
        assert text in card, text
    assert "0.499" not in card  # another pretrained model's scores are not this model's card's business

    assert main(["export", str(run / "checkpoint.pt"), "--release", "--name", "x", "--models-dir",
                 str(tmp_path / "other"), "--scores", str(scores)]) == 2
    assert "no rows for model 'x' (--scores-model); the scores have logmel, mam, random-init, supmam" in \
        capsys.readouterr().err
    assert not (tmp_path / "other").exists()

    # The default scores (results/tables/main/scores.csv, under the current directory) cover the experiment's
    # models: an encoder they do not score gets a card that says so, with one line; one they score gets its rows.
    (tmp_path / "cwd" / "results" / "tables" / "main").mkdir(parents=True)
    shutil.copyfile(scores, tmp_path / "cwd" / "results" / "tables" / "main" / "scores.csv")
    monkeypatch.chdir(tmp_path / "cwd")
    card = (release(run / "checkpoint.pt", tmp_path / "default", "x") / "README.md").read_text()
    assert "None measured" in card and "no rows for it in results/tables/main/scores.csv" in card
    assert "results/tables/main/scores.csv has no rows for 'x': a card without scores" in capsys.readouterr().out
    card = (release(run / "checkpoint.pt", tmp_path / "default2", "y", "--scores-model", "supmam")
            / "README.md").read_text()
    assert "| overall | 0.512 ± 0.010 (n=3) |" in card and "None measured" not in card
    monkeypatch.chdir(REPO)

    # Results JSONs give the same section, through the leaderboard's numbers.
    entry = task_entry("speech", "top1_acc", 0.75, {"top1_acc": 0.75}, 100, seed=2)
    save_results(new_results("supmam", "superb", {"voxceleb1": entry}, pretraining={"variant": "supmam"}),
                 tmp_path / "results" / "supmam.superb.json")
    save_results(new_results("logmel", "superb", {"voxceleb1": dict(entry, score=0.5, scores={"top1_acc": 0.5})},
                             settings={"module": "hear_mamclap.baselines.logmel"}),
                 tmp_path / "results" / "logmel.superb.json")
    out = tmp_path / "step-1000"
    assert main(["export", str(run / "checkpoint.pt"), "--out", str(out), "--scores", str(tmp_path / "results"),
                 "--scores-model", "supmam"]) == 0
    card = (out / "README.md").read_text()
    # One run: its own interval (Wilson's for an accuracy of 100 test clips), as scores.csv gives it.
    assert "| SUPERB SID | 0.750 ± 0.084 (n=1) | 0.500 ± 0.096 (n=1) |" in card, card
    assert load_file(str(out / "encoder.safetensors"))["patch_embed.weight"].dtype == torch.float32


def test_export_takes_release_or_out(tmp_path, capsys):
    src = export_encoder(encoder(), tmp_path / "src")
    assert main(["export", str(src)]) == 2
    assert main(["export", str(src), "--release", "--out", str(tmp_path / "o")]) == 2
    assert main(["export", str(src), "--out", str(tmp_path / "o"), "--replace"]) == 2
    err = capsys.readouterr().err
    assert err.count("give either --release (results/models/NAME) or --out DIR") == 2
    assert "--replace go with --release" in err and not (tmp_path / "o").exists()
    with pytest.raises(UserError, match="a folder name"):
        write_release(src, "../escape", tmp_path / "models")


# ------------------------------------------------------------------------- the repository's own release


@pytest.fixture(scope="module")
def repo_release(tmp_path_factory) -> Path:
    """The release committed in results/models/, or, until there is one, a fresh tiny release."""
    found = release_dirs(REPO / "results" / "models")
    assert len(found) <= 1, f"results/models/ holds {len(found)} releases; it should hold one"
    if found:
        return found[0]
    src = export_encoder(encoder(), tmp_path_factory.mktemp("src") / "tiny")  # made as a release is, by the CLI
    return release(src, tmp_path_factory.mktemp("models"), RELEASE_NAME, "--no-scores")


def test_the_repository_release_follows_the_rules_and_loads(repo_release):
    assert repo_release.name == RELEASE_NAME  # the name the README's commands use
    loaded = check_release(repo_release)
    x = audio(1, 2.0)
    assert torch.isfinite(hear_mamclap.get_scene_embeddings(x, hear_mamclap.HearModel(loaded))).all()


@pytest.mark.slow
def test_hear_validator_passes_on_the_repository_release(repo_release):
    pytest.importorskip("hearvalidator")
    exe = Path(sys.executable).parent / "hear-validator"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hearvalidator.validate"]
    env = {**os.environ, **compat.runtime_env(),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([*cmd, "hear_mamclap", "--model", str(repo_release), "--device", "cpu"], env=env,
                          text=True, capture_output=True, cwd=REPO)
    assert proc.returncode == 0 and "Looks good!" in proc.stdout, (proc.stdout + proc.stderr)[-4000:]
