"""`mamclap tables` on hand-written fixture results (tests/fixtures/results): the cells of every format,
checked against means and t intervals computed here from the fixture files; column order; the ablation's
rows from provenance; the separate reported table; the plots; bad input."""
from __future__ import annotations

import csv
import io
import json
import math
import shutil
import statistics
from pathlib import Path

import matplotlib.image
import pytest
from scipy import stats

from training.eval import tables as tables_module
from training.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "results"
STEMS = ("leaderboard", "ablation", "reported")


def expected(values: list[float]) -> str:
    """The cell text for values, computed independently of training.eval.results.summarize."""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{mean:.3f} ± {half:.3f} (n={len(values)})"


def latex(cell: str) -> str:
    return cell.replace("±", r"$\pm$").replace("—", "---")


def scores(model: str, harness: str = "hear") -> dict[int | None, dict[str, float | None]]:
    """seed -> task -> score, read straight from the fixture files of one model."""
    out = {}
    for path in sorted(FIXTURES.glob("*.json")):
        doc = json.loads(path.read_text())
        if doc["model"] == model and doc["harness"] == harness:
            for task, entry in doc["tasks"].items():
                out.setdefault(entry["seed"], {})[task] = entry["score"]
    return out


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(path.read_text())))
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tables")
    run = out.parent / "run-a"
    run.mkdir()
    lines = [json.dumps({"step": s, "loss": 5.0 / s, "recon": 1.0 / s}) for s in (10, 20, 30)]
    (run / "log.jsonl").write_text("\n".join(lines) + '\n{"step": 40, "lo')  # a line cut short by a kill
    assert main(["tables", str(FIXTURES), "--out", str(out), "--runs", str(run)]) == 0
    return out


def test_writes_every_format_atomically(tables, capsys):
    names = sorted(p.name for p in tables.iterdir())
    assert names == sorted([f"{s}.{e}" for s in STEMS for e in ("md", "csv", "tidy.csv", "tex")]
                           + ["leaderboard.html", "scores.csv", "group_scores.png", "group_scores.svg",
                              "group_scores.pdf", "pretrain_losses.png"])  # no temp files left


def test_leaderboard_cells_in_every_format(tables):
    header, rows = read_csv(tables / "leaderboard.csv")
    # groups in fixed order, tasks sorted within a group, SUPERB after HEAR, then the means
    assert header == ["model", "environmental: mini_dcase (event_onset_200ms_fms)",
                      "environmental: mini_esc (top1_acc)", "music: mini_nsynth_pitch (pitch_acc)",
                      "speech: mini_speech_commands (top1_acc)", "speech: SUPERB KS (top1_acc)",
                      "speech: SUPERB SID (top1_acc)", "environmental mean", "music mean", "speech mean", "overall"]
    by_model = {r[0]: dict(zip(header, r)) for r in rows}
    assert len(by_model) == 9 and rows[-1][0] == "logmel-baseline"  # baselines after pretrained models

    hear = scores("mam-clap-small")
    assert sorted(hear) == [0, 1, 2]
    esc = expected([hear[s]["mini_esc"] for s in hear])
    env = expected([(hear[s]["mini_esc"] + hear[s]["mini_dcase"]) / 2 for s in hear])
    overall = expected([((hear[s]["mini_esc"] + hear[s]["mini_dcase"]) / 2 + hear[s]["mini_nsynth_pitch"]
                         + hear[s]["mini_speech_commands"]) / 3 for s in hear])
    superb = scores("mam-clap-small", "superb")
    ks = expected([superb[s]["speech_commands"] for s in superb])
    row = by_model["mam-clap-small"]
    assert row["environmental: mini_esc (top1_acc)"] == esc == "0.650 ± 0.138 (n=3)"
    assert (row["environmental mean"], row["overall"], row["speech: SUPERB KS (top1_acc)"]) == (env, overall, ks)
    assert ks.endswith("(n=2)")

    md = (tables / "leaderboard.md").read_text()
    tex = (tables / "leaderboard.tex").read_text()
    assert f"| {' | '.join(r for r in rows[[r[0] for r in rows].index('mam-clap-small')])} |" in md
    assert f"mam-clap-small & {latex(row[header[1]])} & {latex(esc)} &" in tex
    assert latex(esc) == r"0.650 $\pm$ 0.138 (n=3)" and r"\multicolumn{3}{c}{speech}" in tex

    # one seed: no interval; the baseline without provenance is a row like any other
    base = scores("logmel-baseline")[None]
    assert by_model["logmel-baseline"]["music: mini_nsynth_pitch (pitch_acc)"] == f"{base['mini_nsynth_pitch']:.3f}"
    assert by_model["logmel-baseline"]["speech: SUPERB KS (top1_acc)"] == "—"


def test_failed_task_shows_a_dash_and_its_error(tables):
    header, rows = read_csv(tables / "leaderboard.csv")
    row = {r[0]: dict(zip(header, r)) for r in rows}["supmam-clap-small"]
    assert row["environmental: mini_dcase (event_onset_200ms_fms)"] == "—"
    assert row["environmental mean"] == "—" and row["overall"] == "—"  # a group mean needs all its tasks
    assert row["music mean"] == "0.300"
    md = (tables / "leaderboard.md").read_text()
    assert ("- error: supmam-clap-small / mini_dcase (event_onset_200ms_fms) (seed 0): RuntimeError: heareval "
            "predictions failed\n") in md
    assert "Behind it: 11 run(s) (model × pretraining seed) of 9 model(s) from 13 results file(s)" in md
    assert str(FIXTURES / "logmel-baseline.hear.json") in md
    assert r"supmam-clap-small & --- & 0.700" in (tables / "leaderboard.tex").read_text()


def test_ablation_rows_come_from_provenance(tables):
    header, rows = read_csv(tables / "ablation.csv")
    assert header[:5] == ["table", "configuration", "size", "step", "runs"]
    got = {(r[0], r[1]): dict(zip(header, r)) for r in rows}
    assert sorted(got) == sorted([
        ("variants", "MAM"), ("variants", "MAM-CLAP"), ("variants", "SupMAM-CLAP"),
        ("positions", "visible only (w_visible=1, w_masked=0)"), ("positions", "masked only (w_visible=0, w_masked=1)"),
        ("positions", "visible + masked (w_visible=1, w_masked=1)"),
        ("lambda_cls", "SupMAM, lambda_cls=0.1"), ("lambda_cls", "SupMAM-CLAP, lambda_cls=0.5"),
        ("lambda_cls", "SupMAM-CLAP, lambda_cls=1")])
    assert [r[1] for r in rows if r[0] == "positions"][0].startswith("visible only")  # paper's row order
    # two models of one configuration (masked-a seed 0, masked-b seed 1) pool into one row
    masked = got[("positions", "masked only (w_visible=0, w_masked=1)")]
    runs = [scores("masked-a")[0], scores("masked-b")[1]]
    assert masked["runs"] == "2"
    assert masked["music mean"] == expected([r["mini_nsynth_pitch"] for r in runs])
    assert masked["environmental mean"] == expected([(r["mini_esc"] + r["mini_dcase"]) / 2 for r in runs])
    both = got[("positions", "visible + masked (w_visible=1, w_masked=1)")]
    assert both["runs"] == "3" and both == {**got[("variants", "MAM-CLAP")], "table": "positions",
                                            "configuration": both["configuration"]}
    sid = [s["voxceleb1"] for s in scores("mam-clap-small", "superb").values()]
    assert both["SUPERB SID (top1_acc)"] == expected(sid)
    assert got[("lambda_cls", "SupMAM-CLAP, lambda_cls=0.5")]["environmental mean"] == "—"
    md = (tables / "ablation.md").read_text()
    assert md.count("### Ablation") == 3 and "masked-a (seed 0), masked-b (seed 1)" in md
    assert "logmel" not in md  # baselines have no provenance
    assert "Behind it: 5 run(s)" in md and r"\caption{Ablation (2)" in (tables / "ablation.tex").read_text()


def test_reported_numbers_are_separate_and_labelled(tables):
    header, rows = read_csv(tables / "reported.csv")
    assert header == ["model", "AS-2M mAP", "AS-20K mAP", "ESC-50 acc", "SPC-2 acc", "VoxCeleb1 acc", "kind", "source"]
    assert all(r[header.index("kind")] == "reported" for r in rows) and len(rows) == 6
    assert rows[0][:5] == ["SupMAM-CLAP", "48.5", "38.6", "97.6", "98.7"]  # the paper's own numbers
    assert rows[0][header.index("source")].startswith("Xin, Peng and Lu, Masked Audio Modeling with CLAP")
    assert all("PAPER.md" not in r[header.index("source")] and "(arXiv " in r[header.index("source")] for r in rows)
    assert {r[0]: r[5] for r in rows}["M2D-CLAP"] == "95.5"
    md = (tables / "reported.md").read_text()
    assert "NOT measured here" in md and "Interspeech 2023 (arXiv 2401.15953)" in md and "PAPER.md" not in md
    for stem in ("leaderboard", "ablation"):
        for ext in ("md", "csv", "tex"):
            text = (tables / f"{stem}.{ext}").read_text()
            assert "reported" not in text.lower() and "BEATs" not in text and "48.5" not in text


def test_plots_are_pngs(tables, capsys):
    for name in ("group_scores.png", "pretrain_losses.png"):
        data = (tables / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(tables / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_folder_notes_other_json_and_pools_only_same_config(tmp_path, capsys):
    data = tmp_path / "in"
    shutil.copytree(FIXTURES, data)
    (data / "bench.json").write_text(json.dumps({"samples_per_s": 687}))
    for i in range(6):
        (data / "work" / f"{i}.json").parent.mkdir(exist_ok=True)
        (data / "work" / f"{i}.json").write_text("[]")
    # same label, size and step as masked-b, but another batch size: a row of its own, with a note saying why
    doc = json.loads((data / "masked-b.s1.hear.json").read_text())
    doc.update(model="masked-c", created="2026-11-26T03:00:00+00:00")
    doc["pretraining"]["train_config"]["batch_size"] = 128
    (data / "masked-c.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    assert main(["tables", str(data), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("note: ignored 7 JSON file(s)")
    printed = captured.out.split()
    tables = [str(out / f"{s}.{e}") for s in STEMS for e in ("md", "csv", "tidy.csv", "tex")]
    assert printed == [*tables, str(out / "scores.csv"), str(out / "leaderboard.html"),
                       *(str(out / f"group_scores.{e}") for e in ("png", "svg", "pdf"))]
    note = (f"ignored 7 JSON file(s) that are not mamclap-results files: {data / 'bench.json'} (format None), "
            f"{data / 'work' / '0.json'} (not a JSON object), ")
    assert note in (out / "leaderboard.md").read_text()
    assert f"{data / 'work' / '3.json'} (not a JSON object) and 2 more\n" in (out / "leaderboard.md").read_text()
    _, rows = read_csv(out / "ablation.csv")
    masked = [r for r in rows if r[1].startswith("masked only")]
    assert sorted(r[4] for r in masked) == ["1", "2"]
    assert "2 rows 'masked only (w_visible=0, w_masked=1)' differ in: batch_size" in (out / "ablation.md").read_text()


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "x.json").write_text(json.dumps({"format": "bench"})), "not a mamclap-results file"),
    (lambda d: (d / "x.json").write_text("{"), "not valid JSON"),
    (lambda d: d / "missing.json", "no such file or folder"),
    (lambda d: d / "empty", "no mamclap-results files in"),
])
def test_bad_input_is_a_clear_error(tmp_path, capsys, make, message):
    (tmp_path / "empty").mkdir()
    target = make(tmp_path)
    target = target if isinstance(target, Path) else tmp_path / "x.json"
    out = tmp_path / "out"
    assert main(["tables", str(target), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mamclap tables: ") and message in err and "Traceback" not in err
    assert not out.exists()  # nothing written


def test_bad_results_and_runs_are_errors(tmp_path, capsys):
    bad = json.loads((FIXTURES / "mam-small.s0.hear.json").read_text())
    bad["tasks"]["mini_esc"]["score"] = "high"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    out = tmp_path / "out"
    assert main(["tables", str(tmp_path), "--out", str(out)]) == 2  # found in a folder, still not skipped
    assert "score must be a finite number" in capsys.readouterr().err
    # the same document twice under two names: merge_results refuses it
    dup = tmp_path / "dup"
    dup.mkdir()
    for name in ("a.json", "b.json"):
        shutil.copy(FIXTURES / "mam-small.s0.hear.json", dup / name)
    assert main(["tables", str(dup), "--out", str(out)]) == 2
    assert "repeats harness/checkpoint/created" in capsys.readouterr().err
    (tmp_path / "no-run").mkdir()  # a run folder without its log
    assert main(["tables", str(FIXTURES), "--out", str(out), "--runs", str(tmp_path / "no-run")]) == 2
    assert "no log.jsonl" in capsys.readouterr().err
    assert main(["tables", str(FIXTURES), "--out", str(out), "--runs", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert not out.exists()


def test_seed_suffixed_names_share_a_row_and_many_files_are_counted_by_folder(tmp_path, monkeypatch):
    """`mam-s0`, `mam-s1`, `mam-s2` (names that end in their pretraining seed, as the GPU experiment writes them, one file
    per task) are one leaderboard row with n=3; a table resting on many files names their folders."""
    data = tmp_path / "in"
    data.mkdir()
    for seed in (0, 1, 2):
        doc = json.loads((FIXTURES / f"mam-clap-small.s{seed}.hear.json").read_text())
        for task in list(doc["tasks"]):  # one document per task, as `experiment_driver.py` writes them
            one = dict(doc, model=f"mam-s{seed}", tasks={task: doc["tasks"][task]})
            (data / f"mam-s{seed}.{task}.json").write_text(json.dumps(one))
    other = json.loads((FIXTURES / "logmel-baseline.hear.json").read_text())
    (data / "logmel-s0.json").write_text(json.dumps(dict(other, model="logmel-s0")))  # seed null: name kept
    out = tmp_path / "out"
    monkeypatch.setattr(tables_module, "SOURCES_LISTED", 5)
    assert main(["tables", str(data), "--out", str(out)]) == 0
    header, rows = read_csv(out / "leaderboard.csv")
    by_name = {r[0]: r for r in rows}
    assert sorted(by_name) == ["logmel-s0", "mam"], by_name.keys()
    esc = header.index(next(h for h in header if "mini_esc" in h))
    assert by_name["mam"][esc] == expected([scores("mam-clap-small")[s]["mini_esc"] for s in (0, 1, 2)])
    n_files = len(list(data.glob("*.json")))
    assert n_files > tables_module.SOURCES_LISTED
    assert f"from {n_files} results file(s): {n_files} in {data}/." in (out / "leaderboard.md").read_text()


def hear_doc(model: str, seed: int, tasks: dict[str, tuple], minute: int = 0) -> dict:
    """A HEAR results document: tasks maps a key to (group, metric, score, variant or None)."""
    from training.eval.results import new_results, task_entry

    entries = {key: task_entry(group, metric, score, {metric: score}, 10, seed=seed, variant=variant)
               for key, (group, metric, score, variant) in tasks.items()}
    return new_results(model, "hear", entries, checkpoint=f"/ckpt/{model}/{seed}",
                       created=f"2026-11-25T23:{minute:02d}:0{seed}+00:00")


def test_variants_of_a_task_are_columns_of_their_own(tmp_path):
    """speech_commands 5h and full, nsynth_pitch 5h and 50h: one column each, never averaged together as if
    they were seeds; a task of one variant keeps its plain name."""
    data = tmp_path / "in"
    data.mkdir()
    values = {0: (0.50, 0.70, 0.30, 0.40, 0.60), 1: (0.54, 0.78, 0.34, 0.46, 0.64)}
    for seed, (sc5, scfull, ns5, ns50, esc) in values.items():
        doc = hear_doc("m", seed, {
            "speech_commands-5h": ("speech", "top1_acc", sc5, "5h"),
            "speech_commands": ("speech", "top1_acc", scfull, "full"),
            "nsynth_pitch-5h": ("music", "pitch_acc", ns5, "5h"),
            "nsynth_pitch-50h": ("music", "pitch_acc", ns50, "50h"),
            "esc50": ("environmental", "top1_acc", esc, "full")})
        (data / f"m.s{seed}.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    assert main(["tables", str(data), "--out", str(out)]) == 0
    header, rows = read_csv(out / "leaderboard.csv")
    assert header == ["model", "environmental: esc50 (top1_acc)", "music: nsynth_pitch (5h) (pitch_acc)",
                      "music: nsynth_pitch (50h) (pitch_acc)", "speech: speech_commands (full) (top1_acc)",
                      "speech: speech_commands (5h) (top1_acc)", "environmental mean", "music mean", "speech mean",
                      "overall"]
    row = dict(zip(header, rows[0]))
    column = {"speech: speech_commands (5h) (top1_acc)": 0, "speech: speech_commands (full) (top1_acc)": 1,
              "music: nsynth_pitch (5h) (pitch_acc)": 2, "music: nsynth_pitch (50h) (pitch_acc)": 3}
    for name, i in column.items():
        assert row[name] == expected([values[s][i] for s in values]), name  # n=2: the two seeds only
    assert row["speech mean"] == expected([(v[0] + v[1]) / 2 for v in values.values()])
    assert row["music mean"] == expected([(v[2] + v[3]) / 2 for v in values.values()])
    assert "speech\\_commands (5h) (top1\\_acc)" in (out / "leaderboard.tex").read_text()


def test_files_without_variants_join_the_full_variant(tmp_path):
    """Results written before variants were recorded (keyed by task, or in the oldest files by task folder)
    pool with new ones of the same task variant."""
    old = json.loads((FIXTURES / "mam-small.s0.hear.json").read_text())
    assert all("variant" not in e for e in old["tasks"].values())
    old["tasks"]["speech_commands-v0.0.2-5h"] = old["tasks"].pop("mini_speech_commands")  # a folder-named key
    new = hear_doc("mam-small", 1, {"mini_esc": ("environmental", "top1_acc", 0.9, "full"),
                                    "speech_commands-5h": ("speech", "top1_acc", 0.8, "5h")})
    docs = [(old, "old.json"), (new, "new.json")]
    columns, runs = tables_module.collect_runs(docs)
    labels = [tables_module.column_label(c, i) for c, i in columns.items()]
    assert labels == ["mini_dcase (event_onset_200ms_fms)", "mini_esc (top1_acc)", "mini_nsynth_pitch (pitch_acc)",
                      "speech_commands (5h) (top1_acc)"]
    esc = ("hear", "mini_esc")
    assert sorted(r.entry(esc)["score"] for r in runs) == sorted([old["tasks"]["mini_esc"]["score"], 0.9])
    assert len([r for r in runs if r.entry(("hear", "speech_commands-5h"))]) == 2


def test_the_results_in_the_repository_still_make_tables(tmp_path):
    """Every results file under results/ (none records a variant) loads, and its HEAR columns are the mini
    suite's tasks under their plain names."""
    docs, _ = tables_module.find_results([Path(__file__).resolve().parents[1] / "results"])
    hear = {key for doc, _ in docs if doc["harness"] == "hear" for key in doc["tasks"]}
    assert hear and all(key.startswith("mini_") for key in hear)
    columns, runs = tables_module.collect_runs(docs)
    board = tables_module.leaderboard(columns, runs)
    assert {h for h in board.header if "mini_" in h} == {tables_module.column_label(("hear", k), columns["hear", k])
                                                         for k in hear}
    assert all("(full)" not in h and "(5h)" not in h for h in board.header)


def test_a_task_of_no_known_group_is_in_no_group_mean(tmp_path):
    """A task scored as "other" (a new or secret HEAR task) has its column, and stays out of every group mean
    and of the overall mean."""
    data = tmp_path / "in"
    data.mkdir()
    values = {0: (0.6, 0.5, 0.4, 0.9), 1: (0.7, 0.6, 0.5, 0.1)}
    for seed, (esc, pitch, kws, bees) in values.items():
        doc = hear_doc("m", seed, {"esc50": ("environmental", "top1_acc", esc, "full"),
                                   "nsynth_pitch-5h": ("music", "pitch_acc", pitch, "5h"),
                                   "speech_commands-5h": ("speech", "top1_acc", kws, "5h"),
                                   "beehive_states_fold0": ("other", "aucroc", bees, "full")})
        (data / f"m.s{seed}.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    assert main(["tables", str(data), "--out", str(out)]) == 0
    header, rows = read_csv(out / "leaderboard.csv")
    assert header == ["model", "environmental: esc50 (top1_acc)", "music: nsynth_pitch (5h) (pitch_acc)",
                      "speech: speech_commands (5h) (top1_acc)", "other: beehive_states_fold0 (aucroc)",
                      "environmental mean", "music mean", "speech mean", "overall"]
    row = dict(zip(header, rows[0]))
    assert row["other: beehive_states_fold0 (aucroc)"] == expected([v[3] for v in values.values()])
    assert row["environmental mean"] == expected([v[0] for v in values.values()])
    assert row["overall"] == expected([(v[0] + v[1] + v[2]) / 3 for v in values.values()])
    md = (out / "leaderboard.md").read_text()
    assert "nor are the 'other' tasks (of no known group)" in md
    assert r"\multicolumn{1}{c}{other}" in (out / "leaderboard.tex").read_text()


# ------------------------------------------------------------------------------------------- fine-tuning

FINETUNE_SCORES = {  # (model, variant, kind) -> task -> one score per fine-tuning seed
    ("supmam_clap-small", "supmam_clap", "finetune"): {"esc50": [0.91, 0.93, 0.92], "as20k": [0.30, 0.31, 0.29]},
    ("mam-small", "mam", "finetune"): {"esc50": [0.85, 0.86, 0.855], "as20k": [0.25, 0.27, 0.26]},
    ("mam-small", "mam", "frozen"): {"esc50": [0.60]},
    ("scratch-small", None, "scratch"): {"esc50": [0.50, 0.55], "as20k": [0.10, 0.12]},
}


def write_finetune_results(folder: Path) -> None:
    from training.eval import results as R
    from training.eval.finetune_tasks import TASKS
    folder.mkdir(parents=True, exist_ok=True)
    for (model, variant, kind), tasks in FINETUNE_SCORES.items():
        for task, values in tasks.items():
            for seed, value in enumerate(values):
                info = TASKS[task]
                entry = R.task_entry(info.group, info.metric, value, {info.metric: value}, 20, seed=seed,
                                     extra={"kind": kind, "data": f"/data/{task}", "folds": []})
                doc = R.new_results(model, "finetune", {task: entry}, command="mamclap finetune ...",
                                    created=f"2026-12-01T00:00:{seed:02d}+00:00", settings={"kind": kind},
                                    pretraining={"variant": variant, "seed": 0} if variant else None)
                R.save_results(doc, folder / f"{model}.{kind}.{task}.s{seed}.json")


def percent(values: list[float]) -> tuple[str, float, float | None]:
    """(cell text, mean, ci95) computed here, independently of summarize."""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * mean:.1f}", mean, None
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{100 * mean:.1f} ± {100 * half:.1f} (n={len(values)})", mean, half


def test_finetune_table_and_tidy_csv(tmp_path, capsys):
    write_finetune_results(tmp_path / "ft")
    out = tmp_path / "out"
    assert main(["tables", str(tmp_path / "ft"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s}.{e}" for s in ("finetune", "reported") for e in ("md", "csv", "tex")] + ["finetune_tidy.csv", "reported.tidy.csv"])
    header, rows = read_csv(out / "finetune.csv")
    assert header == ["model", "pretraining", "kind", "AS-20K mAP", "ESC-50 accuracy"]
    assert [r[:3] for r in rows] == [["mam-small", "MAM", "fine-tuned"], ["mam-small", "MAM", "frozen features"],
                                     ["supmam_clap-small", "SupMAM-CLAP", "fine-tuned"],
                                     ["scratch-small", "none (random init)", "from scratch"]]
    by_row = {(r[0], r[2]): r for r in rows}
    kinds = {"finetune": "fine-tuned", "frozen": "frozen features", "scratch": "from scratch"}
    tidy_header, tidy = read_csv(out / "finetune_tidy.csv")
    assert tidy_header == ["model", "pretraining", "kind", "task", "metric", "mean", "ci95", "n"]
    tidy_by = {(r[0], r[2], r[3]): r for r in tidy}
    for (model, _, kind), tasks in FINETUNE_SCORES.items():
        row = by_row[(model, kinds[kind])]
        for col, task in ((3, "as20k"), (4, "esc50")):
            if task not in tasks:
                assert row[col] == "—"
                continue
            text, mean, half = percent(tasks[task])
            assert row[col] == text
            t = tidy_by[(model, kind, task)]
            assert float(t[5]) == pytest.approx(mean) and int(t[7]) == len(tasks[task])
            assert (t[6] == "") if half is None else float(t[6]) == pytest.approx(half, rel=1e-3)
    md = (out / "finetune.md").read_text()
    assert "ESC-50: SupMAM-CLAP (supmam_clap-small) 92.0 > MAM (mam-small) 85.5" in md  # intervals apart
    assert "AS-20K: SupMAM-CLAP (supmam_clap-small) 30.0 ≈ MAM (mam-small) 26.0" in md  # they overlap
    assert "SupMAM-CLAP (the paper's best) leads" in md
    assert "97.6" not in md and "97.6" in (out / "reported.md").read_text()  # reported numbers stay apart
    assert r"$\pm$" in (out / "finetune.tex").read_text()


def test_finetune_results_leave_the_leaderboard_as_it_was(tmp_path, tables):
    write_finetune_results(tmp_path / "ft")
    out = tmp_path / "out"
    assert main(["tables", str(FIXTURES), str(tmp_path / "ft"), "--out", str(out)]) == 0
    for stem in ("leaderboard", "ablation"):
        assert (out / f"{stem}.csv").read_text() == (tables / f"{stem}.csv").read_text()
    assert (out / "finetune_tidy.csv").is_file()


def synthetic_doc(model: str, harness: str, tasks: dict, seed: int | None, module: str = "hear_mamclap",
                  variant: str | None = "mam") -> dict:
    """A results document of hand-written task entries {key: (group, metric, score, n_test, half-width)}."""
    from training.eval.results import new_results, task_entry

    entries = {}
    for key, (group, metric, score, n_test, half) in tasks.items():
        ci95 = None if half is None else {"method": "bootstrap", "low": score - half, "high": score + half,
                                          "half_width": half, "resamples": 1000, "seed": 0}
        entries[key] = task_entry(group, metric, score, {metric: score}, n_test, seed=seed, ci95=ci95)
    provenance = {} if variant is None else {"variant": variant, "seed": seed, "size": "small"}
    return new_results(model, harness, entries, checkpoint=None if variant is None else f"/ckpt/{model}",
                       command="x", created=f"2026-12-01T00:0{seed or 0}:00+00:00",
                       settings={"module": module}, pretraining=provenance)


def test_scores_csv_numbers_by_hand(tmp_path):
    """scores.csv: n >= 2 runs pooled -> the t interval over seeds; one run -> its own interval (the task's
    ci95, Wilson's from n_test for an entry without one, the tasks' half-widths combined for the means)."""
    data = tmp_path / "in"
    data.mkdir()
    mam = {0: (0.60, 0.50, 0.70, 0.80, 0.90), 1: (0.64, 0.56, 0.74, 0.82, 0.94)}
    for seed, (a1, a2, b, c, ks) in mam.items():
        hear_tasks = {"mini_esc": ("environmental", "top1_acc", a1, 100, 0.05),
                      "mini_mixtures": ("environmental", "mAP", a2, 100, 0.04),
                      "mini_nsynth_pitch": ("music", "pitch_acc", b, 100, 0.03),
                      "mini_speech_commands": ("speech", "top1_acc", c, 100, 0.02)}
        (data / f"mam-s{seed}.hear.json").write_text(json.dumps(synthetic_doc(f"mam-s{seed}", "hear", hear_tasks, seed)))
        superb = {"speech_commands": ("speech", "top1_acc", ks, 500, None)}
        (data / f"mam-s{seed}.superb.json").write_text(json.dumps(synthetic_doc(f"mam-s{seed}", "superb", superb, seed)))
    logmel = {"mini_esc": ("environmental", "top1_acc", 0.40, 100, 0.06),
              "mini_mixtures": ("environmental", "mAP", 0.30, 100, 0.08),
              "mini_nsynth_pitch": ("music", "pitch_acc", 0.50, 100, 0.07),
              "mini_speech_commands": ("speech", "top1_acc", 0.75, 200, None)}  # an old file's entry: no ci95
    (data / "logmel.hear.json").write_text(json.dumps(synthetic_doc(
        "logmel", "hear", logmel, None, module="hear_mamclap.baselines.logmel", variant=None)))
    out = tmp_path / "out"
    assert main(["tables", str(data), "--out", str(out)]) == 0
    header, rows = read_csv(out / "scores.csv")
    assert header == ["model", "kind", "metric", "mean", "ci95", "n"]
    got = {(r[0], r[2]): r for r in rows}
    assert {r[0]: r[1] for r in rows} == {"mam": "pretrained", "logmel": "baseline"}

    def check(model, metric, mean, ci95, n):
        row = got.pop((model, metric))
        assert float(row[3]) == pytest.approx(mean, rel=1e-5), (model, metric)
        assert float(row[4]) == pytest.approx(ci95, rel=1e-5), (model, metric)
        assert int(row[5]) == n

    def t_half(x, y):  # two runs: t(0.975, 1) * sample std / sqrt(2)
        return stats.t.ppf(0.975, 1) * statistics.stdev([x, y]) / math.sqrt(2)

    names = ["mini_esc", "mini_mixtures", "mini_nsynth_pitch", "mini_speech_commands", "SUPERB KS"]
    for i, name in enumerate(names):
        x, y = mam[0][i], mam[1][i]
        check("mam", name, (x + y) / 2, t_half(x, y), 2)
    per_run = {s: {"environmental mean": (v[0] + v[1]) / 2, "music mean": v[2], "speech mean": v[3]}
               for s, v in mam.items()}
    for s in per_run.values():
        s["overall"] = (s["environmental mean"] + s["music mean"] + s["speech mean"]) / 3
    for metric in ("environmental mean", "music mean", "speech mean", "overall"):
        x, y = per_run[0][metric], per_run[1][metric]
        check("mam", metric, (x + y) / 2, t_half(x, y), 2)

    z = 1.959963984540054  # Wilson's interval of 0.75 on 200 clips, by its formula
    wilson = z / (1 + z * z / 200) * math.sqrt(0.75 * 0.25 / 200 + z * z / (4 * 200 * 200))
    check("logmel", "mini_esc", 0.40, 0.06, 1)
    check("logmel", "mini_mixtures", 0.30, 0.08, 1)
    check("logmel", "mini_nsynth_pitch", 0.50, 0.07, 1)
    check("logmel", "mini_speech_commands", 0.75, wilson, 1)
    env_half = math.sqrt(0.06 ** 2 + 0.08 ** 2) / 2
    check("logmel", "environmental mean", 0.35, env_half, 1)
    check("logmel", "music mean", 0.50, 0.07, 1)
    check("logmel", "speech mean", 0.75, wilson, 1)
    check("logmel", "overall", (0.35 + 0.50 + 0.75) / 3, math.sqrt(env_half ** 2 + 0.07 ** 2 + wilson ** 2) / 3, 1)
    assert not got, got  # no other row (logmel has no SUPERB score)


def test_a_release_export_of_a_run_is_that_run_in_the_ablation(tmp_path):
    """The release's bf16 export adds "exported" and "release" to its provenance; its SUPERB files and the
    run's own HEAR files are one run (call sets 5-8 showed SupMAM as 4 runs of 3 seeds)."""
    data = tmp_path / "in"
    data.mkdir()
    hear_tasks = {"mini_esc": ("environmental", "top1_acc", 0.5, 100, 0.05)}
    superb = {"speech_commands": ("speech", "top1_acc", 0.6, 500, None)}
    (data / "mam-s0.hear.json").write_text(json.dumps(synthetic_doc("mam-s0", "hear", hear_tasks, 0)))
    shipped = synthetic_doc("mam-s0", "superb", superb, 0)
    shipped["pretraining"].update(exported={"commit": "abc", "from": "/tmp/x"}, release={"name": "r"})
    (data / "mam-s0.superb.json").write_text(json.dumps(shipped))
    docs, _ = tables_module.find_results([data])
    _, runs = tables_module.collect_runs(docs)
    assert len(runs) == 1 and len(runs[0].scores) == 2
