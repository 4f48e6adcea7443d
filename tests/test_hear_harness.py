"""The HEAR harness around hear_mamclap: hear-validator on our modules, the baselines' contracts, and
`mamclap hear eval` end to end on tiny tasks of the mini suite (heareval's own runners)."""
from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hear_mamclap.checkpoint import export_encoder
from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder
from training import compat

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_encoder(MAMCLAPEncoder(EncoderConfig.preset("tiny")), tmp_path_factory.mktemp("export") / "tiny",
                          metadata={"seed": 7})


# hear-validator's command is hearvalidator.validate:main; VALIDATE_SEVERAL runs it (argv and all) once per
# module in one process, so the validations share one start-up (torch and TensorFlow imports, ~20 s each on a
# 2-core machine). Each run's output sits between marker lines, with the exception that ended it, if any.
VALIDATE_SEVERAL = r"""
import contextlib, io, json, sys, traceback
from hearvalidator.validate import main
for argv in json.loads(sys.argv[1]):
    sys.argv, out, status = ["hear-validator", *argv], io.StringIO(), "ok"
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            main()
        except BaseException:  # ModelError is a BaseException, argparse raises SystemExit
            status = "failed"
            traceback.print_exc()
    print("=== " + json.dumps([argv[0], status]), out.getvalue(), "=== end", sep="\n", flush=True)
"""


def validate_several(runs: list[tuple[str, Path | None]], pythonpath: Path | None = None) -> dict[str, str]:
    """hear-validator on each (module, model) of runs, in one process; {module: its output}, failing the test
    when any of them fails (no "Looks good!")."""
    pytest.importorskip("hearvalidator")
    env = {**os.environ, **compat.runtime_env()}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (pythonpath, REPO) if p is not None)
    argvs = [[module, *(["--model", str(model)] if model is not None else []), "--device", "cpu"]
             for module, model in runs]
    proc = subprocess.run([sys.executable, "-c", VALIDATE_SEVERAL, json.dumps(argvs)], env=env, text=True,
                          capture_output=True, cwd=REPO)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    outputs = {}
    for block in proc.stdout.split("=== end\n"):
        if block.strip():
            header, _, body = block.partition("\n")
            module, status = json.loads(header.removeprefix("=== "))
            assert status == "ok" and "Looks good!" in body, body[-4000:]
            outputs[module] = body
    assert sorted(outputs) == sorted(module for module, _ in runs), proc.stdout[-4000:]
    return outputs


@pytest.fixture(scope="module")
def validated(tiny_export, tmp_path_factory) -> dict[str, str]:
    """hear-validator's output on hear_mamclap (the tiny export) and on the baselines, one validator process
    for all four. The validator passes no options; a module fixing crepe's small capacity keeps crepe's
    validation short on a CPU."""
    shim = tmp_path_factory.mktemp("crepe_shim")
    (shim / "crepe_tiny_capacity.py").write_text(
        "from functools import partial\n"
        "from hear_mamclap.baselines.crepe import get_scene_embeddings, get_timestamp_embeddings, load_model\n"
        "load_model = partial(load_model, capacity='tiny')\n")
    return validate_several([("hear_mamclap", tiny_export), ("hear_mamclap.baselines.logmel", None),
                             # the export's architecture, random weights
                             ("hear_mamclap.baselines.random_init", tiny_export), ("crepe_tiny_capacity", None)],
                            pythonpath=shim)


# --------------------------------------------------------------------------------------------- validator


@pytest.mark.slow
def test_hear_validator_passes_on_a_tiny_export(validated):
    assert "Interval between timestamps is 40.0ms" in validated["hear_mamclap"]


@pytest.mark.slow
def test_hear_validator_passes_on_the_baselines(validated):
    for module in ("hear_mamclap.baselines.logmel", "hear_mamclap.baselines.random_init", "crepe_tiny_capacity"):
        assert "Looks good!" in validated[module], module
    assert "Interval between timestamps is 50.0ms" in validated["crepe_tiny_capacity"]


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


def test_logmel_scene_pooling_is_an_option():
    """The log-mel baseline pools mean + std by default (as results before the option), and the mean alone
    under scene_pooling "mean", the pooling of hear_mamclap's encoders."""
    from hear_mamclap.baselines import logmel

    x = 0.1 * torch.randn(3, 16000, generator=torch.Generator().manual_seed(0))
    frames, _ = logmel.get_timestamp_embeddings(x, logmel.load_model())
    default, mean = logmel.load_model(), logmel.load_model(scene_pooling="mean")
    assert default.scene_embedding_size == 2 * logmel.N_MELS and mean.scene_embedding_size == logmel.N_MELS
    torch.testing.assert_close(logmel.get_scene_embeddings(x, default),
                               torch.cat([frames.mean(1), frames.std(1, unbiased=False)], dim=1))
    torch.testing.assert_close(logmel.get_scene_embeddings(x, mean), frames.mean(1))
    assert logmel.get_scene_embeddings(x, mean).shape == (3, mean.scene_embedding_size)
    with pytest.raises(ValueError, match="scene_pooling must be one of"):
        logmel.load_model(scene_pooling="meanmax")


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
        # heareval leaves its test predictions: the interval is a bootstrap around the score they reproduce
        assert entry["ci95"]["method"] == "bootstrap", entry["ci95"]
        assert entry["ci95"]["low"] <= entry["score"] <= entry["ci95"]["high"]
    assert "ci95" not in kws  # a failed task has no interval
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


@pytest.mark.slow
def test_hear_eval_on_folders_named_as_hearpreprocess_names_them(tiny_tasks, tmp_path):
    """heareval's own runners on task folders of the real suite's names: two variants of one task side by
    side (trainvaltest) and a new_split_kfold task (3 folds, as vocal_imitation), made from the tiny drum
    task; every task is scored, each variant under its own key."""
    pytest.importorskip("heareval")
    from training import cli
    from training.eval.results import load_results

    source, tasks = tiny_tasks / "mini_drum_stroke-v1.0-full", tmp_path / "tasks"
    for mode in ("5h", "full"):
        folder = tasks / f"speech_commands-v0.0.2-{mode}"
        shutil.copytree(source, folder)
        meta = json.loads((folder / "task_metadata.json").read_text())
        meta.update(task_name="speech_commands", version="v0.0.2", mode=mode, default_mode="5h")
        (folder / "task_metadata.json").write_text(json.dumps(meta))
    kfold = tasks / "beijing_opera-v1.0-hear2021-full"
    shutil.copytree(source, kfold)
    folds = {"train": "fold00", "valid": "fold01", "test": "fold02"}
    for split, fold in folds.items():
        (kfold / f"{split}.json").rename(kfold / f"{fold}.json")
        for rate in [d for d in kfold.iterdir() if d.is_dir()]:
            (rate / split).rename(rate / fold)
    meta = json.loads((kfold / "task_metadata.json").read_text())
    meta.pop("max_task_duration_by_split", None)
    meta.update(task_name="beijing_opera", version="v1.0-hear2021", mode="full", split_mode="new_split_kfold",
                nfolds=3, splits=sorted(folds.values()), max_task_duration_by_fold=None)
    (kfold / "task_metadata.json").write_text(json.dumps(meta))

    out = tmp_path / "logmel.json"
    rc = cli.main(["hear", "eval", "--module", "hear_mamclap.baselines.logmel", "--tasks-dir", str(tasks),
                   "--name", "logmel", "--out", str(out), "--work-dir", str(tmp_path / "work"), "--grid", "faster",
                   "--grid-points", "1"])
    doc = load_results(out)
    assert rc == 0, {k: e.get("error") for k, e in doc["tasks"].items()}
    assert sorted(doc["tasks"]) == ["beijing_opera", "speech_commands", "speech_commands-5h"]
    assert doc["tasks"]["speech_commands-5h"]["variant"] == "5h" and doc["tasks"]["speech_commands"]["variant"] == "full"
    opera = doc["tasks"]["beijing_opera"]
    assert opera["group"] == "music" and sorted(opera["extra"]["folds"]) == ["fold00", "fold01", "fold02"]
    assert opera["n_test"] == sum(len(json.loads((kfold / f"{f}.json").read_text())) for f in folds.values())
    scores = json.loads((tmp_path / "work" / "embeddings" / "hear_mamclap.baselines.logmel" / kfold.name /
                         "test.predicted-scores.json").read_text())
    assert opera["score"] == pytest.approx(statistics.fmean(scores[f]["test_top1_acc"] for f in folds.values()))


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
    (task / "task_metadata.json").write_text(json.dumps({"task_name": "mystery", "evaluation": ["top1_acc"],
                                                         "split_mode": "trainvaltest",
                                                         "splits": ["train", "valid", "test"]}))
    with pytest.raises(ValueError, match="no task folders \\['nope'\\]"):
        evaluate("hear_mamclap", tiny_export, tmp_path / "tasks", tmp_path / "work", "x", tasks=["nope"])
    # a task of no known group is accepted (test_eval_scores_a_task_of_no_known_group); a bad --group is not
    with pytest.raises(ValueError, match="the group must be one of"):
        evaluate("hear_mamclap", tiny_export, tmp_path / "tasks", tmp_path / "work", "x", groups={"mystery": "animals"})
    with pytest.raises(ValueError, match="--group nope=speech: no task folder of that name"):
        evaluate("hear_mamclap", tiny_export, tmp_path / "tasks", tmp_path / "work", "x", groups={"nope": "speech"})
    assert not (tmp_path / "work").exists(), "nothing is started before the arguments are checked"



# ----------------------------------------------------------------- task folders as hearpreprocess names them

# (folder, split_mode, splits, evaluation) of real HEAR 2021 tasks, from hearpreprocess's task configs: the
# folder is <task_name>-<version>-<mode>.
HEAR2021 = {
    "speech_commands-v0.0.2-5h": ("trainvaltest", ["train", "valid", "test"], ["top1_acc"]),
    "speech_commands-v0.0.2-full": ("trainvaltest", ["train", "valid", "test"], ["top1_acc"]),
    "nsynth_pitch-v2.2.3-5h": ("trainvaltest", ["train", "valid", "test"], ["pitch_acc", "chroma_acc"]),
    "nsynth_pitch-v2.2.3-50h": ("trainvaltest", ["train", "valid", "test"], ["pitch_acc", "chroma_acc"]),
    "esc50-v2.0.0-full": ("presplit_kfold", [f"fold{i:02d}" for i in range(5)], ["top1_acc", "mAP"]),
    "beijing_opera-v1.0-hear2021-full": ("new_split_kfold", [f"fold{i:02d}" for i in range(5)], ["top1_acc", "mAP"]),
    "tfds_crema_d-1.0.0-full": ("new_split_kfold", [f"fold{i:02d}" for i in range(5)], ["top1_acc", "mAP"]),
    "vocal_imitation-v1.1.3-full": ("new_split_kfold", [f"fold{i:02d}" for i in range(3)], ["mAP", "top1_acc"]),
    "beehive_states_fold0-v2-full": ("trainvaltest", ["train", "valid", "test"], ["aucroc", "mAP"]),
}


def hear_task(root: Path, folder: str, split_mode: str | None = None, splits: list[str] | None = None,
              evaluation: list[str] | None = None, **meta) -> Path:
    """A task folder in hearpreprocess's layout (task_metadata.json, <split>.json per split; no audio), its
    metadata as hearpreprocess's runner writes it."""
    mode_, splits_, evaluation_ = HEAR2021.get(folder, (None, None, None))
    task, *version, mode = folder.split("-")
    metadata = {"task_name": task, "version": "-".join(version), "mode": mode, "embedding_type": "scene",
                "prediction_type": "multiclass", "split_mode": split_mode or mode_, "splits": splits or splits_,
                "evaluation": evaluation or evaluation_, **meta}
    path = root / folder
    path.mkdir(parents=True)
    (path / "task_metadata.json").write_text(json.dumps(metadata))
    for i, split in enumerate(metadata["splits"]):
        (path / f"{split}.json").write_text(json.dumps({f"{split}-{j}.wav": ["a"] for j in range(3 + i)}))
    return path


def heareval_scores(task_dir: Path, base: float) -> dict:
    """test.predicted-scores.json as heareval's task_predictions writes it: per tested split (heareval's
    "|".join(split["test"])) trainer.test's test_* values plus validation_score, epoch and time_in_min;
    for more than one split, "aggregated_scores" (pandas mean and std, ddof 1, over the splits); then
    hparams, postprocessing, score_mode and embedding_path."""
    meta = json.loads((task_dir / "task_metadata.json").read_text())
    tested = ["test"] if meta["split_mode"] == "trainvaltest" else sorted(meta["splits"])
    out = {}
    for i, split in enumerate(tested):
        value = base + 0.01 * i
        out[split] = {"test_loss": 1.0 - value, "test_score": value, **{f"test_{m}": value - 0.1 * j for j, m in
                      enumerate(meta["evaluation"])}, "validation_score": value + 0.05, "epoch": 3 + i,
                      "time_in_min": 0.1}
    if len(tested) > 1:
        keys = out[tested[0]].keys()
        out["aggregated_scores"] = {f"{k}_{stat}": f([out[s][k] for s in tested]) for k in keys
                                    for stat, f in (("mean", statistics.fmean), ("std", statistics.stdev))}
    out.update(hparams={"lr": 0.001}, postprocessing=[], score_mode="max", embedding_path=str(task_dir))
    return out


@pytest.mark.parametrize("folder", ["speech_commands-v0.0.2-5h", "esc50-v2.0.0-full",
                                    "beijing_opera-v1.0-hear2021-full", "vocal_imitation-v1.1.3-full"])
def test_scores_follow_heareval_for_every_split_mode(tmp_path, folder):
    """trainvaltest is scored on test.json's clips; presplit_kfold and new_split_kfold (heareval treats them
    alike) on every fold's, with heareval's own mean over folds as the score."""
    from training.eval.hear import scores_entry

    task_dir = hear_task(tmp_path, folder)
    meta = json.loads((task_dir / "task_metadata.json").read_text())
    scores = heareval_scores(task_dir, 0.6)
    entry = scores_entry(task_dir, scores, seed=3)
    metric = meta["evaluation"][0]
    n_clips = {s: len(json.loads((task_dir / f"{s}.json").read_text())) for s in meta["splits"]}
    assert entry["metric"] == metric and entry["seed"] == 3
    if meta["split_mode"] == "trainvaltest":
        assert entry["score"] == scores["test"][f"test_{metric}"] and entry["n_test"] == n_clips["test"]
        assert entry["extra"]["epoch"] == scores["test"]["epoch"]
    else:
        folds = sorted(meta["splits"])
        assert entry["score"] == pytest.approx(statistics.fmean(scores[f][f"test_{metric}"] for f in folds))
        assert entry["score"] == scores["aggregated_scores"][f"test_{metric}_mean"]
        assert entry["n_test"] == sum(n_clips.values())  # every fold is the test set of one model
        assert sorted(entry["extra"]["folds"]) == folds and len(entry["extra"]["epoch"]) == len(folds)
        assert entry["extra"]["std_over_folds"][metric] == scores["aggregated_scores"][f"test_{metric}_std"]
    assert "loss" not in entry["scores"] and "score" not in entry["scores"]
    # heareval writes a score per tested split: a file without one of them is refused, naming it
    del scores["test" if meta["split_mode"] == "trainvaltest" else "fold01"]
    with pytest.raises(ValueError, match="no scores for"):
        scores_entry(task_dir, scores)


def test_scores_carry_a_bootstrap_interval_from_heareval_s_predictions(tmp_path):
    """A k-fold task whose <fold>.predictions.pkl heareval left: the interval is the bootstrap of the mean over
    folds; without those files, an accuracy gets Wilson's interval from the score and n_test."""
    import pickle

    import numpy as np
    from training.eval import intervals
    from training.eval.hear import scores_entry

    task_dir = hear_task(tmp_path, "esc50-v2.0.0-full")
    meta = json.loads((task_dir / "task_metadata.json").read_text())
    wilson = scores_entry(task_dir, heareval_scores(task_dir, 0.6))["ci95"]
    n_test = sum(len(json.loads((task_dir / f"{s}.json").read_text())) for s in meta["splits"])
    assert wilson["method"] == "wilson" and wilson["n"] == n_test
    assert wilson["low"] == pytest.approx(intervals.wilson(0.62, n_test)["low"])  # 0.6 + 0.01 * fold, averaged

    rng = np.random.default_rng(0)
    folds, per_fold = {}, {}
    for split in sorted(meta["splits"]):
        target = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 30)]
        prediction = (rng.random((30, 4)) + target).astype(np.float32)
        folds[split] = (prediction, target)
        per_fold[split] = float((prediction.argmax(1) == target.argmax(1)).mean())
        with open(task_dir / f"{split}.predictions.pkl", "wb") as f:
            pickle.dump({"target": torch.from_numpy(target), "prediction": torch.from_numpy(prediction)}, f)
    scores = heareval_scores(task_dir, 0.0)
    for split, acc in per_fold.items():
        scores[split]["test_top1_acc"] = acc
    scores["aggregated_scores"]["test_top1_acc_mean"] = statistics.fmean(per_fold.values())
    entry = scores_entry(task_dir, scores)
    assert entry["ci95"] == intervals.bootstrap_scene("top1_acc", list(folds.values()))[1]
    assert entry["ci95"]["low"] <= entry["score"] <= entry["ci95"]["high"]


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(split_mode="random_kfold"), "'split_mode' must be one of heareval's"),
    (lambda m: m.pop("splits"), "'splits' must be a list"),
    (lambda m: m.update(splits=["train", "test"]), "needs the splits train, valid and test"),
    (lambda m: m.update(split_mode="new_split_kfold", splits=["fold00", "fold01"]), "at least 3 folds"),
    (lambda m: m.update(evaluation=[]), "'evaluation' must be a non-empty list"),
])
def test_eval_refuses_metadata_heareval_would_fail_on(tmp_path, tiny_export, change, message):
    from training.eval.hear import evaluate

    task = hear_task(tmp_path / "tasks", "speech_commands-v0.0.2-5h")
    meta = json.loads((task / "task_metadata.json").read_text())
    change(meta)
    (task / "task_metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message):
        evaluate("hear_mamclap", tiny_export, tmp_path / "tasks", tmp_path / "work", "x")
    assert not (tmp_path / "work").exists(), "refused before any work"


@pytest.fixture
def heareval_steps(monkeypatch):
    """heareval's two steps replaced by what they leave on disk (the real ones run in the slow end-to-end
    tests): embed copies task_metadata.json and the <split>.json files and marks the task done; predict
    writes test.predicted-scores.json (heareval_scores, a score per folder) and prediction-done.json."""
    from training.eval import hear

    base = {}

    def embed(module, model, tasks_dir, out_dir, tasks=None, model_options=None):
        out = Path(out_dir) / hear.embedding_folder_name(module, model_options)
        for name in tasks:
            src, dst = Path(tasks_dir) / name, out / name
            dst.mkdir(parents=True, exist_ok=True)
            meta = json.loads((src / "task_metadata.json").read_text())
            for f in ["task_metadata.json", *(f"{s}.json" for s in meta["splits"])]:
                shutil.copy(src / f, dst / f)
            (dst / "profile.embeddings.json").write_text(json.dumps({"time_elapsed": 1.5}))
            (dst / ".done.embeddings").touch()
        return out

    def predict(dirs, **kwargs):
        for d in dirs:
            base.setdefault(Path(d).name, 0.3 + 0.05 * len(base))
            (d / "test.predicted-scores.json").write_text(json.dumps(heareval_scores(d, base[Path(d).name])))
            (d / "prediction-done.json").write_text(json.dumps({"time": 2.0}))
        return {str(d): json.loads((d / "test.predicted-scores.json").read_text()) for d in dirs}

    monkeypatch.setattr(hear, "embed", embed)
    monkeypatch.setattr(hear, "predict", predict)
    return base


KEYS = {"speech_commands-v0.0.2-5h": "speech_commands-5h", "speech_commands-v0.0.2-full": "speech_commands",
        "nsynth_pitch-v2.2.3-5h": "nsynth_pitch-5h", "nsynth_pitch-v2.2.3-50h": "nsynth_pitch-50h",
        "esc50-v2.0.0-full": "esc50", "beijing_opera-v1.0-hear2021-full": "beijing_opera",
        "tfds_crema_d-1.0.0-full": "tfds_crema_d", "vocal_imitation-v1.1.3-full": "vocal_imitation"}


def test_eval_keeps_the_variants_of_a_task_apart(tmp_path, tiny_export, heareval_steps):
    """The standard tasks folder holds speech_commands 5h and full, nsynth_pitch 5h and 50h: each variant is
    a task of its own (key <task>-<variant>, the full one plain), scored from its own folder."""
    from training.eval.hear import evaluate

    tasks = tmp_path / "tasks"
    for folder in KEYS:
        hear_task(tasks, folder)
    lines = []
    doc = evaluate("hear_mamclap", tiny_export, tasks, tmp_path / "work", "x", log=lines.append)
    assert sorted(doc["tasks"]) == sorted(KEYS.values())
    for folder, key in KEYS.items():
        entry, meta = doc["tasks"][key], json.loads((tasks / folder / "task_metadata.json").read_text())
        scores = heareval_scores(tasks / folder, heareval_steps[folder])
        metric = meta["evaluation"][0]
        expected = scores["aggregated_scores"][f"test_{metric}_mean"] if "aggregated_scores" in scores else \
            scores["test"][f"test_{metric}"]
        assert entry["score"] == pytest.approx(expected), folder
        assert entry["variant"] == meta["mode"] and entry["extra"]["task_folder"] == folder
        assert entry["extra"]["embedding_seconds"] == 1.5 and entry["extra"]["prediction_seconds"] == 2.0
    assert doc["tasks"]["speech_commands-5h"]["score"] != doc["tasks"]["speech_commands"]["score"]
    assert any(line.startswith("[3/8] nsynth_pitch-50h: pitch_acc = ") for line in lines), lines

    # --tasks takes folder names, keys, and a task name that names one folder only
    doc = evaluate("hear_mamclap", tiny_export, tasks, tmp_path / "work", "x", tasks=[
        "speech_commands-5h", "nsynth_pitch-v2.2.3-50h", "esc50", "speech_commands"], log=lines.append)
    assert sorted(doc["tasks"]) == ["esc50", "nsynth_pitch-50h", "speech_commands", "speech_commands-5h"]
    with pytest.raises(ValueError, match="'nsynth_pitch' names several task folders"):
        evaluate("hear_mamclap", tiny_export, tasks, tmp_path / "work", "x", tasks=["nsynth_pitch"])

    # two versions of one variant cannot share a key: refused before any work
    hear_task(tasks, "esc50-v2.0.1-full", "presplit_kfold", [f"fold{i:02d}" for i in range(5)], ["top1_acc"])
    with pytest.raises(ValueError, match="hold the same task variant 'esc50'"):
        evaluate("hear_mamclap", tiny_export, tasks, tmp_path / "work2", "x")
    assert not (tmp_path / "work2").exists()


def test_eval_scores_a_task_of_no_known_group(tmp_path, tiny_export, heareval_steps, capsys):
    """heareval needs no group: a new or secret task is scored as 'other' (said in one line), or in the group
    --group gives it; a group in its task_metadata.json is used as is."""
    from training import cli
    from training.eval.hear import evaluate
    from training.eval.results import load_results

    tasks = tmp_path / "tasks"
    for folder in ("beehive_states_fold0-v2-full", "esc50-v2.0.0-full"):
        hear_task(tasks, folder)
    hear_task(tasks, "secret_birds-v1.0-full", "trainvaltest", ["train", "valid", "test"], ["mAP"],
              group="environmental")
    lines = []
    doc = evaluate("hear_mamclap", tiny_export, tasks, tmp_path / "work", "x", log=lines.append)
    assert {k: e["group"] for k, e in doc["tasks"].items()} == {
        "beehive_states_fold0": "other", "esc50": "environmental", "secret_birds": "environmental"}
    said = [line for line in lines if "no group known" in line]
    assert said == ["beehive_states_fold0: no group known (none in its task_metadata.json or results.TASK_GROUPS): "
                    "scored as 'other', outside the group means; --group beehive_states_fold0=GROUP places it"]
    assert doc["tasks"]["beehive_states_fold0"]["score"] is not None and lines.index(said[0]) < 2  # before work

    out = tmp_path / "grouped.json"
    assert cli.main(["hear", "eval", "--model", str(tiny_export), "--tasks-dir", str(tasks), "--name", "x",
                     "--out", str(out), "--work-dir", str(tmp_path / "work"), "--grid", "faster",
                     "--group", "beehive_states_fold0=environmental", "secret_birds=other"]) == 0
    grouped = load_results(out)
    assert grouped["tasks"]["beehive_states_fold0"]["group"] == "environmental"
    assert grouped["tasks"]["secret_birds"]["group"] == "other"  # --group wins over the metadata
    assert grouped["command"].endswith("--group beehive_states_fold0=environmental secret_birds=other")
    assert grouped["settings"]["groups"] == {"beehive_states_fold0": "environmental", "secret_birds": "other"}
    assert "no group known" not in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--group takes TASK=GROUP"):
        cli.main(["hear", "eval", "--model", str(tiny_export), "--tasks-dir", str(tasks), "--name", "x",
                  "--group", "beehive_states_fold0"])


@pytest.mark.slow
def test_scored_splits_are_heareval_s_test_splits():
    """Our reading of heareval's split rules against heareval's own function, for each split mode."""
    heareval_splits = pytest.importorskip("heareval.predictions.task_predictions").get_splits_from_metadata
    from training.eval.hear import scored_splits

    for folder in ("speech_commands-v0.0.2-full", "esc50-v2.0.0-full", "beijing_opera-v1.0-hear2021-full"):
        mode, splits, _ = HEAR2021[folder]
        meta = {"split_mode": mode, "splits": list(reversed(splits))}
        assert scored_splits(meta) == ["|".join(s["test"]) for s in heareval_splits(meta)], folder


@pytest.mark.slow
def test_heareval_embeddings_runner_runs_a_torch_module_without_tensorflow(tiny_tasks, tmp_path):
    """The GPU machines have no TensorFlow: with compat's stand-in registered, heareval's own embeddings
    runner embeds a tiny task with a torch module and never imports TensorFlow."""
    task = tiny_tasks / "mini_drum_stroke-v1.0-full"
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / task.name).symlink_to(task, target_is_directory=True)
    code = textwrap.dedent(f"""
        import runpy, sys
        from training import compat
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



def test_the_tensorflow_stand_in_answers_find_spec_so_torch_dynamo_imports():
    """torch._dynamo calls importlib.util.find_spec("tensorflow") at import (its skip list); laion-clap's
    HTS-AT imports torchvision, which imports torch._dynamo. With a stand-in whose __spec__ is None that
    raised ValueError, and the CLAP teacher's HEAR module failed in every heareval run on the GPU machines
    (call set 8). In a fresh process, as there: stand-in first, then torch._dynamo and torchvision."""
    code = textwrap.dedent("""
        import importlib.util, sys
        from training import compat
        sys.modules["tensorflow"] = compat._tensorflow_stand_in()
        compat.prepare_heareval_embeddings(tensorflow=False)
        spec = importlib.util.find_spec("tensorflow")
        assert spec is not None and spec.origin is None, spec
        import torch._dynamo, torchvision
        assert sys.modules["tensorflow"]._mamclap_stand_in
        print("ok")
    """)
    env = {**os.environ, **compat.runtime_env(), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, text=True, capture_output=True)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_our_modules_are_embedded_without_importing_tensorflow(tiny_tasks, tmp_path, monkeypatch):
    """hear.embed() runs heareval's embedding runner for this package's modules with compat's TensorFlow
    stand-in even where TensorFlow is installed (its import is most of a start-up on a CPU machine); any
    other module keeps the real TensorFlow. The captured command is then run for real under -X importtime."""
    from training.eval import hear

    commands = []
    monkeypatch.setattr(hear, "_run", lambda args, cwd, what, threads=None: commands.append((list(args), cwd)))
    for module in ("hear_mamclap.baselines.logmel", "someone_elses.tf_module"):
        hear.embed(module, None, tiny_tasks, tmp_path / "emb", tasks=["mini_drum_stroke-v1.0-full"])
    (ours, cwd), (theirs, _) = commands
    assert ours[3:5] == ["torch", "hear_mamclap.baselines.logmel"] and theirs[3:5] == ["tf", "someone_elses.tf_module"]
    assert hear.is_torch_module("hear_mamclap") and not hear.is_torch_module("hear_mamclap_fork")

    view = tmp_path / "view"  # embed()'s task view was temporary: make one like it
    view.mkdir()
    (view / "mini_drum_stroke-v1.0-full").symlink_to(tiny_tasks / "mini_drum_stroke-v1.0-full")
    ours[ours.index("--tasks-dir") + 1] = str(view)
    proc = subprocess.run([ours[0], "-X", "importtime", *ours[1:]], cwd=cwd, env=hear._env(), text=True,
                          capture_output=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "heareval.embeddings.task_embeddings" in imported and "torch" in imported
    assert not {m for m in imported if m == "tensorflow" or m.startswith(("tensorflow.", "keras"))}
    done = tmp_path / "emb" / "hear_mamclap.baselines.logmel" / "mini_drum_stroke-v1.0-full" / ".done.embeddings"
    assert done.exists() and list((done.parent / "test").glob("*.embedding.npy"))


def test_eval_runs_each_task_with_its_readout(tmp_path, tiny_export, heareval_steps, monkeypatch, capsys):
    """--readout: each task embedded with its chosen options over --model-options (tasks of the same options
    in one heareval run, in a folder named for them), the options recorded per task; a file made for
    another model, or without a choice for a task, is refused before any work."""
    from training import cli
    from training.eval import hear, readout
    from training.eval.results import load_results

    tasks = tmp_path / "tasks"
    for folder in ("speech_commands-v0.0.2-5h", "esc50-v2.0.0-full", "beijing_opera-v1.0-hear2021-full"):
        hear_task(tasks, folder)
    runs = []
    fake_embed = hear.embed
    monkeypatch.setattr(hear, "embed", lambda *a, **k: runs.append((sorted(k["tasks"]), k["model_options"]))
                        or fake_embed(*a, **k))
    chosen = {"speech_commands-5h": {"layers": "mean", "last_k": 2, "freq_reduce": "mean"},
              "esc50": {"layers": "last", "last_k": 1, "freq_reduce": "concat"},
              "beijing_opera": {"layers": "mean", "last_k": 2, "freq_reduce": "mean"}}
    choice = tmp_path / "choice.json"
    base = {"scene_pooling": "meanmax"}
    choice.write_text(json.dumps({"format": readout.FORMAT, "module": "hear_mamclap",
                                  "model": str(tiny_export.resolve()), "model_options": base,
                                  "tasks": {k: {"options": o} for k, o in chosen.items()}}))
    out = tmp_path / "x.json"
    args = ["hear", "eval", "--model", str(tiny_export), "--tasks-dir", str(tasks), "--name", "x", "--out", str(out),
            "--work-dir", str(tmp_path / "work"), "--grid", "faster", "--model-options", json.dumps(base)]
    assert cli.main([*args, "--readout", str(choice)]) == 0
    assert sorted(runs) == sorted([(["beijing_opera-v1.0-hear2021-full", "speech_commands-v0.0.2-5h"],
                                    {**base, **chosen["beijing_opera"]}),
                                   (["esc50-v2.0.0-full"], {**base, **chosen["esc50"]})])
    doc = load_results(out)
    for key, options in chosen.items():
        extra = doc["tasks"][key]["extra"]
        assert extra["model_options"] == {**base, **options} and extra["readout"] == options
        folder = hear.embedding_folder_name("hear_mamclap", {**base, **options})
        assert (tmp_path / "work" / "embeddings" / folder / extra["task_folder"] / "test.predicted-scores.json").is_file()
    assert doc["settings"]["readout"] == chosen and doc["command"].endswith(f"--readout {choice}")
    assert "overall (mean of the group means) = " in capsys.readouterr().out

    # the work dir holds this readout's embeddings: a run without it (or with another) is refused there
    with pytest.raises(SystemExit, match="holds embeddings of another run"):
        cli.main(args)
    del chosen["esc50"]
    choice.write_text(json.dumps({**json.loads(choice.read_text()), "tasks": {k: {"options": o}
                                                                             for k, o in chosen.items()}}))
    with pytest.raises(SystemExit, match=r"no choice for the tasks \['esc50'\]"):
        cli.main([*args, "--readout", str(choice), "--work-dir", str(tmp_path / "work2")])
    with pytest.raises(SystemExit, match="chosen for model options"):
        cli.main([*args[:-2], "--readout", str(choice), "--work-dir", str(tmp_path / "work2")])
    assert not (tmp_path / "work2").exists()
