"""The shared results JSON: round trip, validation errors, merging and the seed summary."""
from __future__ import annotations

import json
import math

import pytest

from training.eval.results import (FORMAT, ResultsError, error_entry, key_parts, load_results, merge_results,
                                   new_results, parse_folder_name, save_results, summarize, task_entry, task_group,
                                   task_key, task_name)


def doc(model: str = "m", seed: int = 0, score: float = 0.5, harness: str = "hear",
        created: str | None = None) -> dict:
    tasks = {"mini_esc": task_entry("environmental", "top1_acc", score, {"top1_acc": score, "d_prime": math.nan},
                                    n_test=40, seed=seed, extra={"folds": {"fold00": {"d_prime": math.inf}}}),
             "mini_dcase": error_entry("environmental", "event_onset_200ms_fms", RuntimeError("boom"), seed=seed)}
    return new_results(model, harness, tasks, checkpoint="/ckpt", command=["mamclap", "hear", "eval"],
                       created=created or f"2026-11-25T23:0{seed}:00+00:00")


def test_round_trip(tmp_path):
    d = doc()
    path = save_results(d, tmp_path / "sub" / "m.json")
    back = load_results(path)
    assert back == d and back["format"] == FORMAT
    assert back["tasks"]["mini_esc"]["scores"]["d_prime"] is None  # NaN is not JSON: stored as null
    assert back["tasks"]["mini_esc"]["extra"]["folds"]["fold00"]["d_prime"] is None
    assert back["tasks"]["mini_dcase"]["error"] == "RuntimeError: boom"
    assert back["command"] == "mamclap hear eval" and "torch" in back["environment"]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["m.json"]  # no temp file left


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format="other"), "not a mamclap-results file"),
    (lambda d: d.update(version=2), "version 2"),
    (lambda d: d.update(harness="glue"), "harness must be one of"),
    (lambda d: d.update(created="yesterday"), "ISO 8601"),
    (lambda d: d["tasks"]["mini_esc"].update(group="animals"), "group must be one of"),
    (lambda d: d["tasks"]["mini_esc"].update(score=None), "score must be a finite number"),
    (lambda d: d["tasks"]["mini_esc"].update(score="0.5"), "score must be a finite number"),
    (lambda d: d["tasks"]["mini_esc"].pop("n_test"), "missing keys \\['n_test'\\]"),
    (lambda d: d["tasks"]["mini_esc"].update(seed=1.5), "seed must be an integer"),
    (lambda d: d["tasks"]["mini_dcase"].update(score=0.1), "a task with an error has score null"),
    (lambda d: d.update(settings=["grid", "faster"]), "'settings', when present, must be an object"),
])
def test_bad_documents_name_the_problem(tmp_path, change, message):
    d = json.loads(json.dumps(doc()))
    change(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ResultsError, match=message):
        load_results(path)
    with pytest.raises(ResultsError, match=message):
        save_results(d, tmp_path / "never.json")
    assert not (tmp_path / "never.json").exists()


def test_unreadable_files(tmp_path):
    with pytest.raises(ResultsError, match="no such results file"):
        load_results(tmp_path / "missing.json")
    (tmp_path / "trunc.json").write_text('{"format": "mamclap-res')
    with pytest.raises(ResultsError, match="not valid JSON"):
        load_results(tmp_path / "trunc.json")


def test_merge_gathers_runs_per_task(tmp_path):
    paths = [save_results(doc(seed=s, score=0.5 + 0.1 * s), tmp_path / f"s{s}.json") for s in range(3)]
    superb = new_results("m", "superb", {"ks": task_entry("speech", "acc", 0.9, {"acc": 0.9}, 100, seed=0)},
                         checkpoint="/ckpt")
    merged = merge_results([*paths, superb])
    assert set(merged["tasks"]) == {"mini_esc", "mini_dcase", "ks"}
    runs = merged["tasks"]["mini_esc"]["runs"]
    assert [r["seed"] for r in runs] == [0, 1, 2] and [r["harness"] for r in runs] == ["hear"] * 3
    assert merged["tasks"]["ks"]["runs"][0]["harness"] == "superb"
    s = summarize(runs)
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1)
    assert s["ci95"] == pytest.approx(4.303 * 0.1 / math.sqrt(3), rel=1e-3)  # t(0.975, 2) = 4.303 to 4 digits
    assert summarize(merged["tasks"]["mini_dcase"]["runs"]) == {"n": 0, "n_errors": 3, "mean": None, "std": None,
                                                                 "ci95": None, "seeds": [0, 1, 2]}
    one = summarize(runs[:1])
    assert one["mean"] == pytest.approx(0.5) and one["ci95"] is None


def test_merge_refuses_mismatches():
    with pytest.raises(ResultsError, match="different models"):
        merge_results([doc("a"), doc("b")])
    with pytest.raises(ResultsError, match="repeats"):
        merge_results([doc(seed=0), doc(seed=0)])
    other = doc(seed=1)
    other["tasks"]["mini_esc"]["metric"] = "mAP"
    with pytest.raises(ResultsError, match="metric"):
        merge_results([doc(seed=0), other])


def test_merge_takes_one_task_per_document_created_in_the_same_second():
    """Per-task evaluations of one checkpoint run side by side and may be stamped with the same second."""
    esc, dcase = doc(), doc()
    del esc["tasks"]["mini_dcase"], dcase["tasks"]["mini_esc"]
    merged = merge_results([esc, dcase])
    assert sorted(merged["tasks"]) == ["mini_dcase", "mini_esc"] and len(merged["sources"]) == 2


def test_task_names_and_groups():
    assert task_name("/x/mini_esc-v1.0-full") == "mini_esc" and task_name("ks") == "ks"
    assert task_group("mini_nsynth_pitch-v1.0-full") == "music"
    assert task_group("anything", {"group": "speech"}) == "speech"
    with pytest.raises(ResultsError, match="no group known"):
        task_group("mystery_task")
    assert task_group("mystery_task", default="other") == "other"  # the HEAR harness's choice for such tasks
    assert task_group("esc50-v2.0.0-full", default="other") == "environmental"
    with pytest.raises(ResultsError, match="group must be one of"):
        task_group("anything", {"group": "animals"}, default="other")
    entry = task_entry("other", "aucroc", 0.7, {"aucroc": 0.7}, 10)  # "other" is a group a results file holds
    assert new_results("m", "hear", {"beehive_states_fold0": entry})["tasks"]["beehive_states_fold0"] == entry


# hearpreprocess's folder names (<task_name>-<version>-<mode>, from its task configs) -> (task, variant)
HEARPREPROCESS_FOLDERS = {
    "speech_commands-v0.0.2-5h": ("speech_commands", "5h"), "speech_commands-v0.0.2-full": ("speech_commands", "full"),
    "nsynth_pitch-v2.2.3-5h": ("nsynth_pitch", "5h"), "nsynth_pitch-v2.2.3-50h": ("nsynth_pitch", "50h"),
    "dcase2016_task2-hear2021-full": ("dcase2016_task2", "full"), "esc50-v2.0.0-full": ("esc50", "full"),
    "beijing_opera-v1.0-hear2021-full": ("beijing_opera", "full"), "tfds_crema_d-1.0.0-full": ("tfds_crema_d", "full"),
    "libricount-v1.0.0-hear2021-full": ("libricount", "full"), "maestro-v3.0.0-5h": ("maestro", "5h"),
    "vox_lingua_top10-hear2021-full": ("vox_lingua_top10", "full"), "mini_esc-v1.0-full": ("mini_esc", "full"),
    "beehive_states_fold0-v2-small": ("beehive_states_fold0", "small"),
}


def test_task_variants_have_keys_of_their_own():
    for folder, (task, variant) in HEARPREPROCESS_FOLDERS.items():
        assert parse_folder_name(folder) == (task, variant) and task_name(f"/tasks/{folder}") == task, folder
        assert key_parts(task_key(task, variant), variant) == (task, variant)
    keys = {task_key(*tv) for tv in HEARPREPROCESS_FOLDERS.values()}
    assert len(keys) == len(HEARPREPROCESS_FOLDERS)  # no two variants share a key
    assert task_key("speech_commands", "5h") == "speech_commands-5h" and task_key("esc50", "full") == "esc50"
    assert task_key("ks") == "ks" and parse_folder_name("ks") == ("ks", None)
    # entries written before variants were recorded: the key is the task, or (oldest files) its folder name
    assert key_parts("mini_esc") == ("mini_esc", None)
    assert key_parts("nsynth_pitch-v2.2.3-50h") == ("nsynth_pitch", "50h")


def test_variant_round_trip_and_checks(tmp_path):
    tasks = {"speech_commands-5h": task_entry("speech", "top1_acc", 0.5, {"top1_acc": 0.5}, 10, variant="5h"),
             "speech_commands": task_entry("speech", "top1_acc", 0.7, {"top1_acc": 0.7}, 10, variant="full")}
    d = new_results("m", "hear", tasks, created="2026-11-25T23:00:00+00:00")
    back = load_results(save_results(d, tmp_path / "v.json"))
    assert back["tasks"]["speech_commands-5h"]["variant"] == "5h" and back == d
    assert "variant" not in doc()["tasks"]["mini_esc"]  # entries need no variant (SUPERB's, older files)
    bad = json.loads(json.dumps(d))
    bad["tasks"]["speech_commands"]["variant"] = "5h"  # the full variant's key under the 5h variant
    with pytest.raises(ResultsError, match="the key of a '5h' variant is <task>-5h"):
        save_results(bad, tmp_path / "never.json")
    bad["tasks"]["speech_commands"]["variant"] = ""
    with pytest.raises(ResultsError, match="variant, when present, must be a mode name"):
        save_results(bad, tmp_path / "never.json")
    # an older file of the same model (no variant) merges with a new one under the same key
    old = doc(seed=1)
    merged = merge_results([old, new_results("m", "hear", {"mini_esc": task_entry(
        "environmental", "top1_acc", 0.4, {"top1_acc": 0.4}, 40, seed=2, variant="full")},
        created="2026-11-25T23:09:00+00:00")])
    assert merged["tasks"]["mini_esc"]["variant"] == "full" and len(merged["tasks"]["mini_esc"]["runs"]) == 2
    assert merged["tasks"]["mini_dcase"]["variant"] is None
