"""95 % intervals of HEAR test scores (training.eval.intervals) and their place in the results JSON: the scene
metrics agree with heareval's own, the bootstrap and Wilson intervals with numbers computed here, heareval's
predictions pickles load without running code, and old results files (no ci95) still validate."""
from __future__ import annotations

import json
import math
import pickle
import statistics

import numpy as np
import pytest
import torch

from training.eval import intervals
from training.eval.results import ResultsError, new_results, task_entry, validate_results


def scene_data(n: int = 60, classes: int = 5, seed: int = 0, multilabel: bool = False):
    rng = np.random.default_rng(seed)
    if multilabel:
        target = (rng.random((n, classes)) < 0.4).astype(np.float32)
        target[0], target[1] = 1.0, 0.0  # every label has a positive and a negative
    else:
        target = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, n)]
    logits = rng.normal(size=(n, classes)) + 1.5 * target
    prediction = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return prediction.astype(np.float32), target


@pytest.mark.parametrize("metric", ["top1_acc", "pitch_acc", "chroma_acc", "mAP", "d_prime", "aucroc"])
def test_scene_scores_are_heareval_s(metric):
    score = pytest.importorskip("heareval.score")
    labels = {str(i): i for i in range(24)}
    multilabel = metric in ("mAP", "aucroc", "d_prime")
    prediction, target = scene_data(80, 24 if metric == "chroma_acc" else 5, multilabel=multilabel)
    ours = intervals.scene_score(metric, prediction, target)
    theirs = score.available_scores[metric](label_to_idx=labels)(prediction, target)
    assert ours == pytest.approx(theirs, abs=1e-9)
    if metric == "chroma_acc":  # octave errors forgiven: not the same as top1 on these predictions
        assert ours > intervals.scene_score("top1_acc", prediction, target)


def test_wilson_matches_the_formula():
    got = intervals.wilson(0.8, 100)
    z = 1.959963984540054
    centre = (0.8 + z * z / 200) / (1 + z * z / 100)
    half = z * math.sqrt(0.8 * 0.2 / 100 + z * z / 40000) / (1 + z * z / 100)
    assert got["low"] == pytest.approx(centre - half) and got["high"] == pytest.approx(centre + half)
    assert got["half_width"] == pytest.approx(half) and got["n"] == 100
    assert (round(got["low"], 4), round(got["high"], 4)) == (0.7112, 0.8666)  # the textbook values for 80/100
    assert intervals.wilson(0.0, 10)["low"] == pytest.approx(0.0, abs=1e-12)  # never below 0
    with pytest.raises(ValueError, match="proportion"):
        intervals.wilson(1.2, 10)


def test_bootstrap_of_an_accuracy_is_its_resampled_mean():
    prediction, target = scene_data(50)
    point, iv = intervals.bootstrap_scene("top1_acc", [(prediction, target)], resamples=1000, seed=3)
    hits = (prediction.argmax(1) == target.argmax(1)).astype(float)
    assert point == pytest.approx(hits.mean())
    idx = np.random.default_rng(3).integers(0, 50, size=(1000, 50))
    boot = hits[idx].mean(1)
    assert iv["low"] == pytest.approx(np.percentile(boot, 2.5)) and iv["high"] == pytest.approx(np.percentile(boot, 97.5))
    assert iv["half_width"] == pytest.approx((iv["high"] - iv["low"]) / 2) and iv["method"] == "bootstrap"
    # about the normal approximation's width for a proportion, and fixed by the seed
    assert iv["half_width"] == pytest.approx(1.96 * statistics.pstdev(hits) / math.sqrt(50), rel=0.25)
    assert intervals.bootstrap_scene("top1_acc", [(prediction, target)], seed=3)[1] == iv
    assert intervals.bootstrap_scene("top1_acc", [(prediction, target)], seed=4)[1] != iv


def test_bootstrap_of_folds_averages_them_and_narrows():
    folds = [scene_data(40, seed=s) for s in range(4)]
    point, iv = intervals.bootstrap_scene("top1_acc", folds)
    assert point == pytest.approx(statistics.fmean(intervals.scene_score("top1_acc", p, t) for p, t in folds))
    one = intervals.bootstrap_scene("top1_acc", folds[:1])[1]
    assert iv["half_width"] < one["half_width"]  # four folds of clips pin the mean down better than one
    p, t = scene_data(60, multilabel=True)
    point, iv = intervals.bootstrap_scene("mAP", [(p, t)], resamples=200)
    assert iv["low"] <= point <= iv["high"] and iv["resamples"] == 200


def test_event_bootstrap_resamples_files_counts():
    counts = np.array([[1, 2, 2], [0, 1, 3], [2, 2, 2], [1, 3, 1]], dtype=float)  # Ntp, Nsys, Nref per file
    point, iv = intervals.bootstrap_events([counts], resamples=500, seed=1)
    assert point == pytest.approx(2 * 4 / (8 + 8))
    idx = np.random.default_rng(1).integers(0, 4, size=(500, 4))
    sums = counts[idx].sum(1)
    boot = 2 * sums[:, 0] / (sums[:, 1] + sums[:, 2])
    assert iv["low"] == pytest.approx(np.percentile(boot, 2.5)) and iv["high"] == pytest.approx(np.percentile(boot, 97.5))
    assert np.isnan(intervals.event_f(np.array([0.0, 0.0, 3.0])))  # nothing predicted: sed_eval's F is undefined


def test_combined_half_width_of_a_mean():
    assert intervals.combine_half_widths([0.03, 0.04]) == pytest.approx(math.sqrt(0.03 ** 2 + 0.04 ** 2) / 2)
    assert intervals.combine_half_widths([0.1, 0.2], [0.25, 0.75]) == pytest.approx(math.hypot(0.025, 0.15))
    assert intervals.combine_half_widths([0.1, None]) is None and intervals.combine_half_widths([]) is None


def write_task(task_dir, metadata, folds):
    """An embedded, predicted task as heareval leaves it: metadata and a <split>.predictions.pkl per split."""
    task_dir.mkdir(parents=True)
    (task_dir / "task_metadata.json").write_text(json.dumps(metadata))
    for split, (prediction, target) in folds.items():
        with open(task_dir / f"{split}.predictions.pkl", "wb") as f:
            pickle.dump({"target": torch.from_numpy(target), "prediction": torch.from_numpy(prediction),
                         "prediction_logit": torch.from_numpy(np.log(prediction))}, f)


def test_task_interval_from_heareval_s_pickles_else_wilson(tmp_path):
    meta = {"task_name": "t", "embedding_type": "scene", "evaluation": ["top1_acc"], "split_mode": "trainvaltest"}
    prediction, target = scene_data(50)
    write_task(tmp_path / "t", meta, {"test": (prediction, target)})
    assert intervals.read_predictions(tmp_path / "t" / "test.predictions.pkl")["target"].shape == (50, 5)
    score = intervals.scene_score("top1_acc", prediction, target)
    iv = intervals.task_interval(tmp_path / "t", meta, ["test"], score, 50)
    assert iv == intervals.bootstrap_scene("top1_acc", [(prediction, target)])[1]
    # predictions of another run than the score: not used, Wilson's interval instead, and said
    other = intervals.task_interval(tmp_path / "t", meta, ["test"], score - 0.1, 50)
    assert other["method"] == "wilson" and other["low"] == pytest.approx(intervals.wilson(score - 0.1, 50)["low"])
    assert "heareval's score" in other["note"]
    assert intervals.task_interval(tmp_path / "t", meta, ["fold00"], 0.5, 40)["note"] == "no predictions on disk"
    assert intervals.task_interval(tmp_path / "t", {**meta, "evaluation": ["mAP"]}, ["fold00"], 0.5, 40) is None


def test_predictions_pickles_may_not_run_code(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    path = tmp_path / "test.predictions.pkl"
    path.write_bytes(pickle.dumps({"target": Payload()}))
    with pytest.raises(pickle.UnpicklingError, match="may not name builtins.exec"):
        intervals.read_predictions(path)
    assert not marker.exists()


def test_results_entries_carry_an_interval_and_old_files_still_validate():
    iv = intervals.wilson(0.6, 40)
    entry = task_entry("environmental", "top1_acc", 0.6, {"top1_acc": 0.6}, 40, ci95=iv)
    doc = new_results("m", "hear", {"mini_esc": entry}, command="x")
    assert doc["tasks"]["mini_esc"]["ci95"]["half_width"] == pytest.approx(iv["half_width"])
    old = json.loads(json.dumps(doc))
    del old["tasks"]["mini_esc"]["ci95"]
    validate_results(old)  # files written before intervals
    for bad in ({"low": 0.1, "high": 0.2, "half_width": 0.05}, {**iv, "low": 0.9},
                {**iv, "half_width": -1.0}, [0.1, 0.2]):
        broken = json.loads(json.dumps(doc))
        broken["tasks"]["mini_esc"]["ci95"] = bad
        with pytest.raises(ResultsError, match="ci95"):
            validate_results(broken)


def test_event_counts_add_up_to_heareval_s_f_measure():
    score = pytest.importorskip("heareval.score")
    labels = ["bird", "door"]
    targets = {"a.wav": [{"label": "bird", "start": 100.0, "end": 900.0}, {"label": "door", "start": 2000.0, "end": 2500.0}],
               "b.wav": [{"label": "door", "start": 300.0, "end": 800.0}],
               "c.wav": [{"label": "bird", "start": 50.0, "end": 400.0}]}
    predicted = {"a.wav": [{"label": "bird", "start": 150.0, "end": 950.0}],
                 "b.wav": [{"label": "door", "start": 1300.0, "end": 1800.0}, {"label": "bird", "start": 0.0, "end": 90.0}],
                 "c.wav": [{"label": "bird", "start": 60.0, "end": 400.0}]}
    counts = intervals.event_counts("event_onset_200ms_fms", {"target_events": targets, "predicted_events": predicted},
                                    labels)
    assert counts.tolist() == [[1, 1, 2], [0, 2, 1], [1, 1, 1]]  # (Ntp, Nsys, Nref) per file
    fms = score.available_scores["event_onset_200ms_fms"](label_to_idx={"bird": 0, "door": 1})(predicted, targets)
    assert dict(fms)["f_measure"] == pytest.approx(float(intervals.event_f(counts.sum(0))))


def test_overall_of_one_run_is_the_mean_of_group_means_with_combined_intervals():
    items = [("music", 0.6, 0.04), ("music", 0.8, 0.02), ("speech", 0.5, 0.03), ("other", 0.1, 0.5)]
    mean, half = intervals.mean_of_group_means(items, ("environmental", "music", "speech"))
    assert mean == pytest.approx(((0.6 + 0.8) / 2 + 0.5) / 2)  # the "other" task is in no group mean
    assert half == pytest.approx(math.sqrt((0.04 / 4) ** 2 + (0.02 / 4) ** 2 + (0.03 / 2) ** 2))
    same = [("music", 0.6, 0.04), ("speech", 0.5, 0.03), ("speech", 0.7, 0.05), ("music", 0.2, 0.01)]
    mean, half = intervals.mean_of_group_means(same, ("music", "speech"))  # equal groups: the plain mean
    assert mean == pytest.approx(0.5) and half == pytest.approx(math.sqrt(0.04**2 + 0.03**2 + 0.05**2 + 0.01**2) / 4)
    assert intervals.mean_of_group_means([("music", 0.6, None)], ("music",)) == (0.6, None)
    assert intervals.mean_of_group_means([("other", 0.6, 0.1)], ("music",)) is None
