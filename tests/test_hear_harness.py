"""The HEAR harness around hear_mamclap: hear-validator on our modules, the baselines' contracts, and
`mamclap hear eval` end to end on tiny tasks of the mini suite (heareval's own runners)."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hear_mamclap import compat
from hear_mamclap.checkpoint import export_encoder
from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_encoder(MAMCLAPEncoder(EncoderConfig.preset("tiny")), tmp_path_factory.mktemp("export") / "tiny",
                          metadata={"seed": 7})


def validate(module: str, model: Path | None = None, pythonpath: Path | None = None) -> str:
    """Run the hear-validator command on module; return its output, failing the test when it fails."""
    pytest.importorskip("hearvalidator")
    env = {**os.environ, **compat.runtime_env()}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (pythonpath, REPO) if p is not None)
    exe = Path(sys.executable).parent / "hear-validator"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hearvalidator.validate"]
    cmd += [module] + (["--model", str(model)] if model is not None else []) + ["--device", "cpu"]
    proc = subprocess.run(cmd, env=env, text=True, capture_output=True, cwd=REPO)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Looks good!" in proc.stdout, output[-4000:]
    return output


# --------------------------------------------------------------------------------------------- validator


@pytest.mark.slow
def test_hear_validator_passes_on_a_tiny_export(tiny_export):
    out = validate("hear_mamclap", tiny_export)
    assert "Interval between timestamps is 40.0ms" in out


@pytest.mark.slow
def test_hear_validator_passes_on_the_baselines(tiny_export, tmp_path):
    validate("hear_mamclap.baselines.logmel")
    validate("hear_mamclap.baselines.random_init", tiny_export)  # the export's architecture, random weights
    # The validator passes no options; a module fixing crepe's small capacity keeps this test short on a CPU.
    (tmp_path / "crepe_tiny_capacity.py").write_text(
        "from functools import partial\n"
        "from hear_mamclap.baselines.crepe import get_scene_embeddings, get_timestamp_embeddings, load_model\n"
        "load_model = partial(load_model, capacity='tiny')\n")
    out = validate("crepe_tiny_capacity", pythonpath=tmp_path)
    assert "Interval between timestamps is 50.0ms" in out


# --------------------------------------------------------------------------------------------- baselines


def test_random_init_is_seeded_and_follows_the_checkpoint(tiny_export):
    from hear_mamclap.baselines import random_init

    a, b = random_init.load_model(preset="tiny"), random_init.load_model(preset="tiny")
    c = random_init.load_model(preset="tiny", seed=1)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.encoder.patch_embed.weight, c.encoder.patch_embed.weight)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    random_init.load_model(preset="tiny")
    assert torch.equal(torch.rand(1), before), "load_model must leave the global generator alone"

    from hear_mamclap.checkpoint import load_encoder
    trained = load_encoder(tiny_export)
    rand = random_init.load_model(str(tiny_export), seed=5)
    assert rand.encoder.cfg == trained.cfg
    assert not torch.equal(rand.encoder.patch_embed.weight, trained.patch_embed.weight)
    x = 0.1 * torch.randn(2, 16000)
    assert random_init.get_scene_embeddings(x, rand).shape == (2, rand.scene_embedding_size)
    with pytest.raises(ValueError, match="not both"):
        random_init.load_model(str(tiny_export), preset="tiny")
    with pytest.raises(ValueError, match="unknown encoder preset"):
        random_init.load_model(preset="huge")


def test_crepe_matches_torchcrepe_embed_in_batches_and_chunks():
    torchcrepe = pytest.importorskip("torchcrepe")
    from hear_mamclap.baselines import crepe

    model = crepe.load_model(capacity="tiny")
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(3, 16000 + 123, generator=g)
    emb, ts = crepe.get_timestamp_embeddings(x, model)
    assert emb.shape == (3, 1 + x.shape[1] // 800, model.timestamp_embedding_size) and ts.shape == emb.shape[:2]
    assert torch.allclose(ts[0], torch.arange(emb.shape[1], dtype=torch.float32) * 50.0)
    ref = torchcrepe.embed(x[1:2], 16000, 800, "tiny")  # torchcrepe's own function, one clip: (1, T, 32, C)
    torch.testing.assert_close(emb[1:2], ref.reshape(1, emb.shape[1], -1), atol=1e-4, rtol=1e-4)
    chunked = crepe.load_model(capacity="tiny", frames_per_forward=5)
    torch.testing.assert_close(crepe.get_timestamp_embeddings(x, chunked)[0], emb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(crepe.get_scene_embeddings(x, model), emb.mean(1))
    with pytest.raises(ValueError, match="hop_ms"):
        crepe.load_model(hop_ms=60)
    with pytest.raises(ValueError, match="capacity"):
        crepe.load_model(capacity="medium")
    with pytest.raises(ValueError, match="2-D"):
        crepe.get_scene_embeddings(x[0], model)


# ------------------------------------------------------------------------------------ mamclap hear eval


@pytest.fixture(scope="module")
def tiny_tasks(tiny_hear_suite, tmp_path_factory) -> Path:
    """Three tasks of the session's tiny suite, copied: a scene multiclass task, the event task, and the
    keyword task with one of its test files broken, so that task must fail alone."""
    suite, _ = tiny_hear_suite
    out = tmp_path_factory.mktemp("suite") / "tasks"
    for task in ("mini_drum_stroke", "mini_dcase", "mini_speech_commands"):
        shutil.copytree(suite / f"{task}-v1.0-full", out / f"{task}-v1.0-full")
    broken = sorted((out / "mini_speech_commands-v1.0-full" / "16000" / "test").glob("*.wav"))[0]
    broken.write_bytes(b"RIFF, but not a wav file")
    return out


@pytest.mark.slow
def test_hear_eval_writes_results_with_scores_and_the_failed_task(tiny_tasks, tiny_export, tmp_path, capsys):
    pytest.importorskip("heareval")
    from training import cli
    from training.eval.results import load_results

    out, work = tmp_path / "results" / "tiny.json", tmp_path / "work"
    rc = cli.main(["hear", "eval", "--module", "hear_mamclap", "--model", str(tiny_export), "--tasks-dir",
                   str(tiny_tasks), "--name", "tiny-random", "--out", str(out), "--work-dir", str(work),
                   "--grid", "faster", "--grid-points", "1"])
    printed = capsys.readouterr().out
    assert rc == 1, "a failed task makes the exit status non-zero"
    doc = load_results(out)
    assert doc["model"] == "tiny-random" and doc["harness"] == "hear" and doc["checkpoint"] == str(tiny_export)
    assert doc["command"].startswith("mamclap hear eval --module hear_mamclap") and "--seed 7" in doc["command"]
    assert doc["settings"]["grid"] == "faster" and doc["settings"]["grid_points"] == 1
    assert set(doc["tasks"]) == {"mini_drum_stroke", "mini_dcase", "mini_speech_commands"}

    drum, dcase, kws = (doc["tasks"][t] for t in ("mini_drum_stroke", "mini_dcase", "mini_speech_commands"))
    assert drum["group"] == "music" and drum["metric"] == "top1_acc" and 0 <= drum["score"] <= 1
    assert dcase["group"] == "environmental" and dcase["metric"] == "event_onset_200ms_fms"
    assert 0 <= dcase["score"] <= 1 and math.isfinite(dcase["scores"]["segment_1s_er"])
    for task, entry in (("mini_drum_stroke", drum), ("mini_dcase", dcase)):
        assert entry["seed"] == 7  # from the export's metadata
        n_test = len(json.loads((tiny_tasks / f"{task}-v1.0-full" / "test.json").read_text()))
        assert entry["n_test"] == n_test
        assert entry["extra"]["embedding_seconds"] > 0 and entry["extra"]["prediction_seconds"] > 0
    assert kws["score"] is None and kws["group"] == "speech"
    assert kws["error"].startswith("embeddings: RuntimeError") and "LibsndfileError" in kws["error"].splitlines()[0]
    assert "mini_drum_stroke: top1_acc =" in printed and "mini_speech_commands: FAILED" in printed

    # The predictors again, two tasks at a time in their own heareval processes (--jobs 2), on a copy of the
    # embeddings with the predictions removed: the same scores, the same failed task.
    work2 = tmp_path / "work2"
    shutil.copytree(work, work2, symlinks=True)
    for done in [*work2.glob("embeddings/*/*/prediction-done.json"), *work2.glob("embeddings/*/*/test.predicted-scores.json")]:
        done.unlink()
    rc = cli.main(["hear", "eval", "--module", "hear_mamclap", "--model", str(tiny_export), "--tasks-dir",
                   str(tiny_tasks), "--name", "tiny-random", "--out", str(tmp_path / "jobs2.json"), "--work-dir",
                   str(work2), "--grid", "faster", "--grid-points", "1", "--jobs", "2"])
    assert rc == 1 and "2 at a time" in capsys.readouterr().out
    doc2 = load_results(tmp_path / "jobs2.json")
    assert doc2["command"].endswith("--jobs 2")
    for task in ("mini_drum_stroke", "mini_dcase"):
        assert doc2["tasks"][task]["score"] == doc["tasks"][task]["score"], task
        assert doc2["tasks"][task]["extra"]["prediction_seconds"] > 0
    assert doc2["tasks"]["mini_speech_commands"]["score"] is None

    # Another module in the same work dir would reuse these embeddings: refused before any work.
    with pytest.raises(SystemExit, match="holds embeddings of another run"):
        cli.main(["hear", "eval", "--module", "hear_mamclap.baselines.logmel", "--tasks-dir", str(tiny_tasks),
                  "--name", "logmel", "--out", str(tmp_path / "logmel.json"), "--work-dir", str(work)])

    # The predictions launcher on its own, over a module folder: finished tasks are read back, not retrained.
    # The keyword task's embeddings never finished: it is named and left out. (A folder of the module's
    # drum and keyword tasks: each finished task costs a heareval start-up.)
    module = tmp_path / "module"
    module.mkdir()
    for task in ("mini_drum_stroke", "mini_speech_commands"):
        (module / f"{task}-v1.0-full").symlink_to(work / "embeddings" / "hear_mamclap" / f"{task}-v1.0-full")
    rc = cli.main(["hear", "predict", str(module), "--grid", "faster"])
    printed = capsys.readouterr()
    assert rc == 0 and f"top1_acc = {drum['score']:.4f}" in printed.out
    assert "skipping mini_speech_commands-v1.0-full" in printed.err


def test_a_failing_task_costs_one_more_batch_not_a_run_per_task():
    """heareval stops at the first task that fails. The task it had begun (its folder exists) takes the error
    and the unfinished others run again as one batch; without that knowledge, each runs on its own."""
    from training.eval.hear import _batch_then_singly

    def harness(order: list[str], stale: set[str] = frozenset()):
        begun, finished, calls = set(stale), set(), []

        def run(items: list[str]) -> None:  # heareval's loop: begin a task, fail on "bad", else finish it
            calls.append(list(items))
            for item in sorted(items, key=order.index):
                if item in finished:
                    continue
                begun.add(item)
                if item == "bad":
                    raise RuntimeError(f"heareval failed on {item}")
                finished.add(item)

        return run, finished.__contains__, begun.__contains__, calls

    for order in (["bad", "a", "b"], ["a", "bad", "b"], ["a", "b", "bad"]):
        run, done, started, calls = harness(order)
        errors = _batch_then_singly(["a", "b", "bad"], run, done, "embeddings", lambda _: None, started=started)
        assert errors == {"bad": "embeddings: RuntimeError: heareval failed on bad"}, order
        assert done("a") and done("b") and len(calls) == (1 if order[-1] == "bad" else 2), (order, calls)
    # Without started(), or with a stale begun task beside the failing one: the unfinished tasks one by one.
    run, done, started, calls = harness(["bad", "a", "b"])
    assert _batch_then_singly(["a", "b", "bad"], run, done, "x", lambda _: None) == {
        "bad": "x: RuntimeError: heareval failed on bad"}
    assert calls == [["a", "b", "bad"], ["a"], ["b"], ["bad"]]
    run, done, started, calls = harness(["a", "bad", "b"], stale={"bad"})
    assert set(_batch_then_singly(["a", "b", "bad"], run, done, "x", lambda _: None, started=started)) == {"bad"}
    assert calls == [["a", "b", "bad"], ["b"], ["bad"]] and done("a") and done("b")


def test_eval_refuses_bad_arguments(tmp_path, tiny_export):
    from training.eval.hear import evaluate

    with pytest.raises(ValueError, match="holds no HEAR task folder"):
        evaluate("hear_mamclap", tiny_export, tmp_path, tmp_path / "work", "x")
    task = tmp_path / "tasks" / "mystery-v1.0-full"
    task.mkdir(parents=True)
    (task / "task_metadata.json").write_text(json.dumps({"task_name": "mystery", "evaluation": ["top1_acc"]}))
    with pytest.raises(ValueError, match="no task folders \\['nope'\\]"):
        evaluate("hear_mamclap", tiny_export, tmp_path / "tasks", tmp_path / "work", "x", tasks=["nope"])
    with pytest.raises(ValueError, match="no group known for task 'mystery'"):
        evaluate("hear_mamclap", tiny_export, tmp_path / "tasks", tmp_path / "work", "x")
    assert not (tmp_path / "work").exists(), "nothing is started before the arguments are checked"



def test_heareval_embeddings_runner_runs_a_torch_module_without_tensorflow(tiny_tasks, tmp_path):
    """The GPU machines have no TensorFlow: with compat's stand-in registered, heareval's own embeddings
    runner embeds a tiny task with a torch module and never imports TensorFlow."""
    task = tiny_tasks / "mini_drum_stroke-v1.0-full"
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / task.name).symlink_to(task, target_is_directory=True)
    code = textwrap.dedent(f"""
        import runpy, sys
        from hear_mamclap import compat
        sys.modules["tensorflow"] = compat._tensorflow_stand_in()  # as on a machine without TensorFlow
        compat.prepare_heareval_embeddings()
        sys.argv = ["heareval.embeddings.runner", "hear_mamclap.baselines.logmel", "--tasks-dir",
                    "{tmp_path / 'tasks'}", "--embeddings-dir", "{tmp_path / 'emb'}"]
        try:
            runpy.run_module("heareval.embeddings.runner", run_name="__main__", alter_sys=True)
        except SystemExit as e:
            assert not e.code, e.code
        import tensorflow
        assert tensorflow._mamclap_stand_in and "keras" not in sys.modules
        try:
            tensorflow.convert_to_tensor([1.0])
        except RuntimeError as err:
            assert "not installed" in str(err)
        else:
            raise AssertionError("the stand-in converted a tensor")
        print("ok")
    """)
    env = {**os.environ, **compat.runtime_env(), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, text=True, capture_output=True)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-4000:]
    done = tmp_path / "emb" / "hear_mamclap.baselines.logmel" / task.name / ".done.embeddings"
    assert done.exists()
    assert list((done.parent / "test").glob("*.embedding.npy"))

