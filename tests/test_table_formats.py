"""The machine-readable and publication outputs of `mamclap tables` on the fixture results: the tidy CSVs
(numbers checked against the fixture files and against the text cells), the LaTeX (escaping, the layout,
and a pdflatex build with nothing running past the margin), the plots (every format, colours by variant,
identical bytes on a rerun) and the pretrained / baseline kind of each row."""
from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest
from scipy import stats

from training.cli import main
from training.eval.latex import latex_escape
from training.eval.plots import BASELINE_COLOUR, VARIANT_COLOURS, _run_identity

FIXTURES = Path(__file__).parent / "fixtures" / "results"
TIDY_FIELDS = ["kind", "harness", "group", "task", "metric", "mean", "ci95", "std", "n", "n_errors", "seeds"]


def rows_of(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def fixture_scores(model: str, task: str, harness: str = "hear") -> dict[int | None, float]:
    out = {}
    for path in FIXTURES.glob("*.json"):
        doc = json.loads(path.read_text())
        if doc["model"] == model and doc["harness"] == harness and task in doc["tasks"]:
            out[doc["tasks"][task]["seed"]] = doc["tasks"][task]["score"]
    return out


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tables")
    assert main(["tables", str(FIXTURES), "--out", str(out)]) == 0
    return out


def test_tidy_leaderboard_holds_the_numbers(tables):
    header = next(csv.reader(io.StringIO((tables / "leaderboard.tidy.csv").read_text())))
    assert header == ["model", *TIDY_FIELDS]
    rows = rows_of(tables / "leaderboard.tidy.csv")
    by = {(r["model"], r["harness"], r["group"], r["task"]): r for r in rows}
    esc = list(fixture_scores("mam-clap-small", "mini_esc").values())
    cell = by[("mam-clap-small", "hear", "environmental", "mini_esc")]
    half = stats.t.ppf(0.975, 2) * statistics.stdev(esc) / math.sqrt(3)
    assert cell["kind"] == "pretrained" and cell["metric"] == "top1_acc" and cell["n"] == "3"
    assert cell["seeds"] == "0 1 2" and cell["n_errors"] == "0"
    assert float(cell["mean"]) == pytest.approx(statistics.fmean(esc), rel=1e-5)
    assert float(cell["ci95"]) == pytest.approx(half, rel=1e-5)
    assert float(cell["std"]) == pytest.approx(statistics.stdev(esc), rel=1e-5)
    # group means and the overall mean are rows with an empty task
    overall = by[("mam-clap-small", "hear", "overall", "")]
    assert overall["metric"] == "mean of group means" and overall["n"] == "3"
    ks = by[("mam-clap-small", "superb", "speech", "speech_commands")]
    assert float(ks["mean"]) == pytest.approx(statistics.fmean(fixture_scores("mam-clap-small", "speech_commands",
                                                                               "superb").values()), rel=1e-5)
    # one run: no interval; a baseline says so; a cell never run is not written, a failed one is
    base = by[("logmel-baseline", "hear", "music", "mini_nsynth_pitch")]
    assert base["kind"] == "baseline" and base["ci95"] == "" and base["n"] == "1" and base["seeds"] == ""
    assert not any(r["model"] == "logmel-baseline" and r["harness"] == "superb" for r in rows)
    failed = by[("supmam-clap-small", "hear", "environmental", "mini_dcase")]
    assert (failed["mean"], failed["n"], failed["n_errors"]) == ("", "0", "1")
    assert {r["kind"] for r in rows} == {"pretrained", "baseline"}


@pytest.mark.parametrize("stem", ["leaderboard", "ablation", "reported"])
def test_tidy_agrees_with_every_text_cell(tables, stem):
    """Each number of the human-readable CSV is a tidy line with the same mean, interval and n."""
    text = list(csv.reader(io.StringIO((tables / f"{stem}.csv").read_text())))
    tidy = rows_of(tables / f"{stem}.tidy.csv")
    labels = [h for h in text[0] if h in tidy[0]]  # the label columns both files share
    index = {}
    for r in tidy:
        index.setdefault(tuple(r[h] for h in labels), []).append(r)
    checked = 0
    for row in text[1:]:
        cells = dict(zip(text[0], row))
        numbers = [c for h, c in cells.items() if h not in labels and re.fullmatch(r"-?\d+\.\d+.*", c)]
        lines = index[tuple(cells[h] for h in labels)]
        failed = [line for line in lines if line["mean"] == ""]
        lines = [line for line in lines if line["mean"] != ""]
        assert len(lines) == len(numbers), (row, lines)
        assert all(int(line["n_errors"]) > 0 for line in failed) and len(failed) <= row.count("—")
        for c, line in zip(numbers, lines):
            mean, _, rest = c.partition(" ± ")
            decimals = len(mean.split(".")[1])
            assert f"{float(line['mean']):.{decimals}f}" == mean
            if rest:
                ci, n = re.fullmatch(r"(\S+) \(n=(\d+)\)", rest).groups()
                assert (f"{float(line['ci95']):.3f}", line["n"]) == (ci, n)
            checked += 1
    assert checked > 10


def test_tidy_ablation_and_reported(tables):
    ablation = rows_of(tables / "ablation.tidy.csv")
    assert list(ablation[0])[:5] == ["table", "configuration", "size", "step", "runs"]
    masked = [r for r in ablation if r["configuration"].startswith("masked only") and r["group"] == "music"]
    assert [(r["runs"], r["n"], r["seeds"]) for r in masked] == [("2", "2", "0 1")]
    reported = rows_of(tables / "reported.tidy.csv")
    first = reported[0]
    assert (first["model"], first["task"], first["metric"], first["mean"], first["kind"], first["n"]) == \
        ("SupMAM-CLAP", "AS-2M", "mAP (%)", "48.5", "reported", "")
    assert first["source"].startswith("Xin, Peng and Lu") and "kind" in first
    assert len(reported) == sum(1 for r in csv.reader(io.StringIO((tables / "reported.csv").read_text()))
                                for c in r[1:6] if re.fullmatch(r"\d+\.\d", c))


def test_baseline_modules_are_baselines_and_stay_out_of_the_ablation(tmp_path):
    """A random-init baseline borrows a pretrained checkpoint's architecture, so its results carry that
    checkpoint's provenance: the module it ran makes it a baseline all the same."""
    data = tmp_path / "in"
    shutil.copytree(FIXTURES, data)
    doc = json.loads((FIXTURES / "mam-small.s0.hear.json").read_text())
    doc.update(model="random-init-small", settings={"module": "hear_mamclap.baselines.random_init"})
    (data / "random-init.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    assert main(["tables", str(data), "--out", str(out)]) == 0
    models = [r[0] for r in csv.reader(io.StringIO((out / "leaderboard.csv").read_text()))][1:]
    kinds = {r["model"]: r["kind"] for r in rows_of(out / "leaderboard.tidy.csv")}
    assert kinds["random-init-small"] == "baseline" and kinds["mam-small"] == "pretrained"
    assert models[-2:] == ["logmel-baseline", "random-init-small"]  # baselines after every pretrained model
    ablation = (out / "ablation.md").read_text()
    assert "random-init-small" not in ablation and "mam-small (seed 0)" in ablation
    tex = (out / "leaderboard.tex").read_text()
    # in each of the four tables, a rule and a "baselines" line after the last pretrained model
    assert len(re.findall(r"\n\\midrule\n\\multicolumn\{\d\}\{l\}\{\\emph\{baselines\}\} \\\\\nlogmel-baseline & "
                          r".*\nrandom-init-small & .*\n\\bottomrule", tex)) == 4


def test_latex_escapes_every_special_character():
    assert latex_escape(r"a_b&c%d#e~f^g\h<i>j|k{l}$m") == (
        r"a\_b\&c\%d\#e\textasciitilde{}f\textasciicircum{}g\textbackslash{}h\textless{}i\textgreater{}j"
        r"\textbar{}k\{l\}\$m")
    assert latex_escape("0.650 ± 0.138 — 2×") == r"0.650 $\pm$ 0.138 --- 2$\times$"


def test_latex_layout(tables):
    tex = (tables / "leaderboard.tex").read_text()
    assert tex.startswith("% Written by `mamclap tables` from results files; needs \\usepackage{booktabs,array,"
                          "graphicx}.")
    labels = re.findall(r"\\label\{(.*?)\}", tex)
    assert labels == ["tab:leaderboard-means", "tab:leaderboard-environmental", "tab:leaderboard-music",
                      "tab:leaderboard-speech"]
    # short column labels, each explained in the caption's legend
    assert "model & DCASE & ESC & mean \\\\" in tex
    assert "ESC = mini\\_esc (top1\\_acc)" in tex and "KS = SUPERB speech\\_commands (top1\\_acc)" in tex
    assert "Env = the mean of the environmental HEAR tasks" in tex
    assert "Cells as in Table \\ref{tab:leaderboard-means}" in tex
    assert "-s\\textless{}seed\\textgreater{}" in tex  # was printed as "¡seed¿"
    printed = [line for line in tex.splitlines() if line.startswith("\\caption") or line.endswith("\\\\")]
    assert len(printed) > 20 and not any(c in line for line in printed for c in "<>|")
    for model in ("mam-clap-small", "supmam-l0.1", "logmel-baseline"):
        assert tex.count(f"\n{model} & ") == 4  # a row in each of the four tables
    # the reported table: sources as numbered references, the constant "kind" column in the caption
    reported = (tables / "reported.tex").read_text()
    assert "SupMAM-CLAP & 48.5 & 38.6 & 97.6 & 98.7 & --- & [1] \\\\" in reported
    assert "Every row: kind reported." in reported and "[1] Xin, Peng and Lu" in reported


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="pdflatex missing (Debian texlive-latex-base, texlive-latex-recommended: make setup)")
def test_latex_compiles_within_the_margins(tables, tmp_path):
    doc = tmp_path / "doc.tex"
    inputs = "\n".join(f"\\input{{{tables / f'{stem}.tex'}}}" for stem in ("leaderboard", "ablation", "reported"))
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs,array,graphicx}\n\\begin{document}\n"
                   f"{inputs}\n\\end{{document}}\n")
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert run.returncode == 0, log[-3000:]
    assert "Overfull \\hbox" not in log, log  # every table fits the text width of a plain article
    assert (tmp_path / "doc.pdf").read_bytes()[:5] == b"%PDF-"
    assert re.search(r"Output written on doc\.pdf \((\d+) pages", log)


def test_plots_in_every_format_coloured_by_variant(tables, tmp_path):
    png, svg, pdf = (tables / f"group_scores.{e}" for e in ("png", "svg", "pdf"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
    text = svg.read_text()
    for label in ("HEAR environmental mean", "HEAR overall (mean of groups)", "SUPERB KS (top1_acc)",
                  "SUPERB SID (top1_acc)", "logmel-baseline", "seed 2", "95% t interval"):
        assert label in text  # text stays text in the SVG
    colours = set(re.findall(r"fill(?:: ?|=\")(#[0-9a-f]{6})", text))
    assert {VARIANT_COLOURS[v].lower() for v in ("mam", "mam_clap", "supmam", "supmam_clap")} <= colours
    assert BASELINE_COLOUR in colours and "<pattern" in text  # the baseline's hatching
    # a rerun rewrites the same bytes (no dates, no random ids): regenerated results do not churn in git
    again = tmp_path / "again"
    assert main(["tables", str(FIXTURES), "--out", str(again)]) == 0
    for e in ("svg", "pdf", "png"):
        assert (again / f"group_scores.{e}").read_bytes() == (tables / f"group_scores.{e}").read_bytes(), e


def test_loss_curves_know_each_run_s_variant_and_seed(tmp_path):
    run = tmp_path / "mam_clap-s1"
    (run / "encoder").mkdir(parents=True)
    (run / "encoder" / "encoder.json").write_text(json.dumps({"metadata": {"variant": "mam_clap", "seed": 1}}))
    (run / "log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    assert _run_identity(run / "log.jsonl") == ("mam_clap", 1)
    flat = tmp_path / "flat"  # an export's encoder.json beside the log, as results/gpu/exp2/runs keeps them
    flat.mkdir()
    (flat / "encoder.json").write_text(json.dumps({"metadata": {"variant": "supmam", "seed": 0}}))
    assert _run_identity(flat / "log.jsonl") == ("supmam", 0)
    (flat / "encoder.json").write_text("[]")
    assert _run_identity(flat / "log.jsonl") == (None, None)
