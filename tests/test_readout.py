"""`mamclap hear readout` (training.eval.readout): the candidates' features are what hear_mamclap gives under
the options they name, the probe is a deterministic linear classifier, the choice is made on validation
data only (by cross-validation over the folds of a k-fold task), event tasks and encoder-free baselines
pass through, and the file is refused for another model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import hear_mamclap
from hear_mamclap.checkpoint import export_encoder
from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder
from training.eval import readout



@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_encoder(MAMCLAPEncoder(EncoderConfig.preset("tiny", depth=6)),
                          tmp_path_factory.mktemp("export") / "tiny6", metadata={"seed": 1})


@pytest.fixture(scope="module")
def kit(tiny_hear_suite) -> Path:
    """The tiny mini HEAR suite (conftest builds it once per test run, fast lane included). Read-only."""
    return tiny_hear_suite[0]


def test_candidates_cover_last_mean_of_last_4_and_of_all_blocks():
    names = [c["name"] for c in readout.candidates(12)]
    mean_pooled = ["last/concat", "last/mean", "mean_last4/concat", "mean_last4/mean", "mean_all12/concat",
                   "mean_all12/mean"]
    assert names == mean_pooled + [f"{n}/meanstd" for n in mean_pooled]  # mean first: a tie keeps the mean
    for c in readout.candidates(12):
        assert sorted(c["options"]) == sorted(readout.READOUT_OPTIONS)  # complete: overrides any --model-options
    assert readout.candidates(12)[3]["options"] == {"layers": "mean", "last_k": 4, "freq_reduce": "mean",
                                                    "scene_pooling": "mean"}
    assert readout.candidates(12)[6]["options"] == {"layers": "last", "last_k": 1, "freq_reduce": "concat",
                                                    "scene_pooling": "meanstd"}
    assert [c["name"] for c in readout.candidates(3)][:4] == ["last/concat", "last/mean", "mean_all3/concat",
                                                               "mean_all3/mean"]
    assert len(readout.candidates(3)) == 8


@pytest.mark.parametrize("scene_pooling", ["mean", "meanmax"])
def test_candidate_features_are_what_their_options_give(export, scene_pooling):
    """The option names of a candidate reproduce its features through hear_mamclap's own load_model and
    get_scene_embeddings: what the readout scored is what heareval will embed."""
    model = hear_mamclap.load_model(str(export), scene_pooling=scene_pooling, windows_per_forward=1)
    specs = readout.candidates(model.encoder.cfg.depth)
    audio = 0.1 * torch.randn(3, 16000 * 3, generator=torch.Generator().manual_seed(0))  # 3 s: 2 encoder windows
    features = readout.candidate_features(model, audio, specs)
    assert len(features) == len(specs) == 12
    for spec in specs:  # the candidate's scene_pooling overrides the model's
        alone = hear_mamclap.load_model(str(export), **{"scene_pooling": scene_pooling, **spec["options"]})
        torch.testing.assert_close(features[spec["name"]], hear_mamclap.get_scene_embeddings(audio, alone),
                                   atol=1e-5, rtol=1e-5, msg=spec["name"])
    assert not torch.allclose(features["last/concat"][:, :64], features["mean_last4/concat"][:, :64])
    with_std = features["last/concat/meanstd"]
    assert with_std.shape[1] == 2 * features["last/concat"].shape[1]
    torch.testing.assert_close(with_std[:, :features["last/concat"].shape[1]], features["last/concat"])
    assert (with_std[:, features["last/concat"].shape[1]:] > 0).any()  # the std half is not a copy of the mean


def blobs(n: int, classes: int, d: int, seed: int, informative: bool = True):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centres = 3.0 * torch.randn(classes, d, generator=torch.Generator().manual_seed(99))
    x = torch.randn(n, d, generator=g) + (centres[y] if informative else 0.0)
    return x, torch.nn.functional.one_hot(y, classes).float()


def test_probe_is_a_deterministic_regularised_linear_classifier():
    x, y = blobs(120, 4, 16, 0)
    xv, yv = blobs(60, 4, 16, 1)
    xs, xvs = readout.zscore(x, xv)
    assert torch.allclose(xs.mean(0), torch.zeros(16), atol=1e-5) and torch.allclose(xs.std(0, unbiased=False),
                                                                                      torch.ones(16), atol=1e-4)
    probes = readout.fit_probes(xs, y, (10.0, 1e-3))
    w, b = probes[1e-3]
    w2, b2 = readout.fit_probes(xs, y, (1e-3,))[1e-3]
    assert torch.equal(w, w2) and torch.equal(b, b2)
    # the closed form is the ridge solution: the gradient of mean squared error + wd |W|^2 vanishes there
    wg = w.clone().double().requires_grad_(True)
    loss = ((xs.double() @ wg + b.double() - y.double()) ** 2).sum(1).mean() + 1e-3 * (wg * wg).sum()
    loss.backward()
    assert wg.grad.abs().max() < 1e-6
    prob = readout.probe_predictions(xvs, w, b, False)
    assert torch.allclose(prob.sum(1), torch.ones(60)) and (prob.argmax(1) == yv.argmax(1)).float().mean() > 0.9
    strong, _ = probes[10.0]
    assert strong.norm() < 0.5 * w.norm()  # the weight decay is live
    # more features than clips: the dual form gives the same solution as the primal one
    xw, yw = blobs(12, 3, 40, 2)
    xw = readout.zscore(xw)[0]
    dual = readout.fit_probes(xw, yw, (0.1,))[0.1][0]
    primal = torch.linalg.solve(xw.double().T @ xw.double() + 12 * 0.1 * torch.eye(40, dtype=torch.float64),
                                xw.double().T @ (yw.double() - yw.double().mean(0)))
    assert torch.allclose(dual.double(), primal, atol=1e-5)
    # multilabel: a regression per label, ranked
    ym = torch.stack([y[:, 0] + y[:, 1], y[:, 2]], dim=1)  # label 0 = class 0 or 1, label 1 = class 2
    wm, bm = readout.fit_probes(xs, ym, (1e-3,))[1e-3]
    pm = readout.probe_predictions(xs, wm, bm, True)
    assert pm.shape == (120, 2) and ((pm > 0.5).float() == ym).float().mean() > 0.9


def test_choice_is_the_best_valid_candidate_and_the_first_on_a_tie():
    specs = [{"name": "noise", "options": {"layers": "last"}}, {"name": "signal", "options": {"layers": "mean"}},
             {"name": "signal_again", "options": {"layers": "concat"}}]
    feats, labels = {}, {}
    for split, seed in (("train", 0), ("valid", 1)):
        x, y = blobs(80, 3, 8, seed)
        feats[split] = {"noise": torch.randn(80, 8, generator=torch.Generator().manual_seed(seed + 5)),
                        "signal": x, "signal_again": x.clone()}
        labels[split] = y
    meta = {"split_mode": "trainvaltest", "evaluation": ["top1_acc"], "prediction_type": "multiclass"}
    entry = readout.choose(feats, labels, meta, specs, "cpu")
    assert entry["candidate"] == "signal" and entry["options"] == {"layers": "mean"}
    assert entry["valid"]["signal"] > 0.9 > entry["valid"]["noise"] and entry["metric"] == "top1_acc"
    assert entry["valid"]["signal_again"] == entry["valid"]["signal"]  # a tie: the earlier candidate is kept
    assert entry["weight_decay"]["signal"] in readout.WEIGHT_DECAYS and entry["clips"] == {"train": 80, "valid": 80}
    assert "valid" in entry["selection"]
    # a task whose metric the probe cannot compute is chosen by accuracy (or mAP when multilabel)
    assert readout.selection_metric({"evaluation": ["event_onset_200ms_fms"], "prediction_type": "multiclass"}) \
        == "top1_acc"
    assert readout.selection_metric({"evaluation": ["x"], "prediction_type": "multilabel"}) == "mAP"


@pytest.mark.slow
def test_readout_of_a_kit_reads_no_test_clip(kit, export, tmp_path, capsys):
    """End to end on the tiny kit: the event task is passed through with its reason; the scene task is
    chosen from train and valid while every test file is broken (the readout must never read one)."""
    from training import cli

    tasks = tmp_path / "tasks"
    for name in ("mini_drum_stroke", "mini_dcase"):
        shutil.copytree(kit / f"{name}-v1.0-full", tasks / f"{name}-v1.0-full")
    for wav in (tasks / "mini_drum_stroke-v1.0-full" / "16000" / "test").glob("*.wav"):
        wav.write_bytes(b"not audio")
    out = tmp_path / "choice.json"
    assert cli.main(["hear", "readout", "--model", str(export), "--tasks-dir", str(tasks), "--device", "cpu",
                     "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["format"] == readout.FORMAT and doc["module"] == "hear_mamclap"
    assert doc["model"] == str(export.resolve()) and doc["model_options"] == {}
    assert [c["name"] for c in doc["candidates"]] == [c["name"] for c in readout.candidates(6)]
    assert sorted(doc["tasks"]) == ["mini_dcase", "mini_drum_stroke"]
    event = doc["tasks"]["mini_dcase"]
    assert event["options"] == {} and event["candidate"] is None and "event task" in event["note"]
    drum = doc["tasks"]["mini_drum_stroke"]
    assert sorted(drum["valid"]) == sorted(c["name"] for c in doc["candidates"])
    assert drum["valid"][drum["candidate"]] == max(drum["valid"].values())
    assert drum["options"] == next(c["options"] for c in doc["candidates"] if c["name"] == drum["candidate"])
    n_train = len(json.loads((tasks / "mini_drum_stroke-v1.0-full" / "train.json").read_text()))
    assert drum["clips"]["train"] == n_train and "test" not in drum["clips"]
    assert all(0.0 <= s <= 1.0 for s in drum["valid"].values())
    assert doc["command"].startswith("mamclap hear readout --module hear_mamclap --tasks-dir ")
    assert "mini_drum_stroke: " in capsys.readouterr().out


def test_kfold_tasks_are_chosen_by_leave_one_fold_out(kit, export, tmp_path, monkeypatch):
    monkeypatch.setattr(readout, "WEIGHT_DECAYS", (1e-2,))  # one probe per fold and candidate: a short test
    doc = readout.choose_readouts("hear_mamclap", export, kit, tasks=["mini_esc"], device="cpu", log=lambda _: None)
    entry = doc["tasks"]["mini_esc"]
    meta = json.loads((kit / "mini_esc-v1.0-full" / "task_metadata.json").read_text())
    assert sorted(entry["clips"]) == sorted(meta["splits"])  # every fold held out in turn
    assert entry["selection"].startswith("leave-one-fold-out cross-validation over the 5 folds")
    assert entry["weight_decay"] == {c["name"]: 1e-2 for c in doc["candidates"]}


def test_baselines_without_an_encoder_have_one_readout(kit, tmp_path):
    doc = readout.choose_readouts("hear_mamclap.baselines.logmel", None, kit, tasks=["mini_drum_stroke"],
                                  device="cpu", log=lambda _: None)
    assert doc["candidates"] == [{"name": "default", "options": {}}] and doc["model"] is None
    entry = doc["tasks"]["mini_drum_stroke"]
    assert entry["options"] == {} and entry["candidate"] == "default" and 0.0 <= entry["valid"]["default"] <= 1.0


def test_a_choice_is_refused_for_another_model(tmp_path, export):
    doc = {"format": readout.FORMAT, "module": "hear_mamclap", "model": str(export.resolve()),
           "model_options": {"scene_pooling": "mean"}, "tasks": {"mini_esc": {"options": {"layers": "mean"}}}}
    path = tmp_path / "choice.json"
    path.write_text(json.dumps(doc))
    assert readout.load_choice(path, "hear_mamclap", export, {"scene_pooling": "mean"}) == {
        "mini_esc": {"layers": "mean"}}
    with pytest.raises(ValueError, match="chosen for module"):
        readout.load_choice(path, "hear_mamclap.baselines.random_init", export, {"scene_pooling": "mean"})
    with pytest.raises(ValueError, match="chosen for model "):
        readout.load_choice(path, "hear_mamclap", tmp_path, {"scene_pooling": "mean"})
    with pytest.raises(ValueError, match="chosen for model options"):
        readout.load_choice(path, "hear_mamclap", export, {})
    path.write_text(json.dumps({"format": "mamclap-results"}))
    with pytest.raises(ValueError, match="not a mamclap-readout file"):
        readout.load_choice(path, "hear_mamclap", export, {})


def test_probe_scores_the_chosen_probe_on_test_with_an_interval(kit, export, tmp_path):
    from training import cli

    choice, out = tmp_path / "choice.json", tmp_path / "probe.json"
    tasks = ["mini_drum_stroke", "mini_esc", "mini_dcase"]
    assert cli.main(["hear", "readout", "--model", str(export), "--tasks-dir", str(kit), "--device", "cpu",
                     "--tasks", *tasks, "--out", str(choice)]) == 0
    assert cli.main(["hear", "probe", "--model", str(export), "--tasks-dir", str(kit), "--device", "cpu",
                     "--readout", str(choice), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    chosen = json.loads(choice.read_text())["tasks"]
    assert sorted(doc["tasks"]) == ["mini_drum_stroke", "mini_esc"]  # the event task has no probe
    for key, entry in doc["tasks"].items():
        assert entry["candidate"] == chosen[key]["candidate"]
        assert entry["weight_decay"] == chosen[key]["weight_decay"][entry["candidate"]]
        ci = entry["ci95"]
        assert 0.0 <= ci["low"] <= entry["score"] <= ci["high"] <= 1.0 and ci["method"] == "bootstrap"
    n_test = len(json.loads((kit / "mini_drum_stroke-v1.0-full" / "test.json").read_text()))
    assert doc["tasks"]["mini_drum_stroke"]["n_test"] == n_test
    meta = json.loads((kit / "mini_esc-v1.0-full" / "task_metadata.json").read_text())
    assert doc["tasks"]["mini_esc"]["n_test"] == sum(
        len(json.loads((kit / "mini_esc-v1.0-full" / f"{f}.json").read_text())) for f in meta["splits"])
    assert doc["mean"] == pytest.approx(sum(e["score"] for e in doc["tasks"].values()) / 2)
    # a choice made for another model is refused
    with pytest.raises(SystemExit, match="chosen for module"):
        cli.main(["hear", "probe", "--module", "hear_mamclap.baselines.logmel", "--tasks-dir", str(kit),
                  "--readout", str(choice), "--out", str(tmp_path / "x.json")])
