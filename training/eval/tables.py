"""`mamclap tables`: the leaderboard, the paper's ablation, its fine-tuning table and its reported numbers, in
Markdown, CSV and LaTeX, with plots, from the results JSONs of the HEAR, SUPERB and fine-tuning harnesses
(training.eval.results).

    mamclap tables                                    # every results file under results/
    mamclap tables results/hear x.superb.json --out results/tables --runs runs/mam runs/mam_clap

A *run* is one evaluated checkpoint: the documents (HEAR and SUPERB) of one model at one pretraining seed
and provenance. A cell is the mean over runs of a task's primary test score, with the half-width of a 95% t
interval (training.eval.results.summarize) when there are several runs. A group mean is computed per run (the
mean over the group's HEAR tasks, all of which the run must have) and then summarised over runs in the
same way; the overall mean is the mean of a run's group means. Each variant of a HEAR task (speech_commands
5h and full) is a column, and a task of its own in the means; a task of group "other" is in none. The
ablation picks its rows from each run's "pretraining" provenance (loss weights), never from model names, and
pools runs of one configuration.
`scores.csv` holds the leaderboard's numbers in six columns (training.eval.tidy.to_scores_csv): model, kind
(pretrained | baseline), metric (a task, "<group> mean" or "overall"), mean, ci95 and n (the runs pooled);
its ci95 is the t interval's half-width over runs when n >= 2, and for one run that run's own interval: the
task's (training.eval.intervals: a bootstrap over test clips, else Wilson's for an accuracy, from n_test),
and for a group or overall mean the tasks' half-widths combined as independent, sqrt(sum_t (w_t h_t)^2) for
the mean's weights w_t.
Fine-tuning results (harness "finetune") make their own table instead (finetune.md, and finetune_tidy.csv with
one numeric row per model, kind and task): a row per model and kind, a cell per task over fine-tuning seeds.
Every number written comes from the input files, except the separate "reported" table, which copies the
paper's numbers (REPORTED) and labels them so.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hear_mamclap import atomic
from training.pretrain.mam import VARIANTS, PretrainConfig
from training.eval.html import to_html
from training.eval.latex import to_latex
from training.eval.plots import plot_losses, plot_scores, read_log, score_panels
from training.eval.intervals import ACCURACY_METRICS, mean_of_group_means, wilson
from training.eval.results import (ALL_GROUPS, FORMAT, FULL, GROUPS, HARNESSES, MODES, OTHER, ResultsError, key_parts,
                                   merge_results, summarize, task_key, validate_results)
from training.eval.tidy import to_scores_csv, to_tidy_csv

Column = tuple[str, str]  # (harness, results key: the task and its variant, results.task_key)

VARIANT_NAMES = {"mam": "MAM", "mam_clap": "MAM-CLAP", "supmam": "SupMAM", "supmam_clap": "SupMAM-CLAP"}
SUPERB_NAMES = {"speech_commands": "KS", "voxceleb1": "SID"}  # s3prl downstream -> SUPERB's abbreviation
WEIGHT_FIELDS = ("recon_weight", "distill_visible_weight", "distill_masked_weight", "lambda_cls")
# train_config fields that define a configuration besides the model config (seed, output folder, workers,
# logging and device do not); data and teacher are paths, compared by their last components so that the same
# files on another machine pool together.
RECIPE_FIELDS = ("steps", "batch_size", "accum", "base_lr", "weight_decay", "warmup_steps", "clip_grad",
                 "teacher_features", "teacher_align", "teacher_projection")
DASH = "—"  # a failed or missing score
MAX_LISTED = 5  # ignored files named in the note (a harness work folder holds thousands of JSON files)
SOURCES_LISTED = 20  # results files named under a table; beyond this, their folders with a count each

# Fine-tuning numbers as each paper reports them (the SupMAM-CLAP paper's, and each peer's from its own paper).
# Not measured here: written only to the "reported" table. AudioSet in mAP (%), the others in accuracy (%);
# None = not given.
REPORTED_COLUMNS = ("AS-2M mAP", "AS-20K mAP", "ESC-50 acc", "SPC-2 acc", "VoxCeleb1 acc")
REPORTED: tuple[tuple[str, tuple[float | None, ...], str], ...] = (
    ("SupMAM-CLAP", (48.5, 38.6, 97.6, 98.7, None),
     "Xin, Peng and Lu, Masked Audio Modeling with CLAP and Multi-Objective Learning, Interspeech 2023 "
     "(arXiv 2401.15953)"),
    ("AudioMAE ViT-B", (47.3, 37.0, None, None, None),
     "Huang et al., Masked Autoencoders that Listen, NeurIPS 2022 (arXiv 2207.06405)"),
    ("BEATs iter3", (48.0, 38.3, 95.6, 98.3, None),
     "Chen et al., BEATs: Audio Pre-Training with Acoustic Tokenizers, ICML 2023 (arXiv 2212.09058)"),
    ("EAT-base (30 ep)", (48.9, 41.3, 95.9, 98.3, None),
     "Chen et al., EAT: Self-Supervised Pre-Training with Efficient Audio Transformer, IJCAI 2024 "
     "(arXiv 2401.03497)"),
    ("M2D-CLAP", (48.5, 41.8, 97.4, 98.3, 95.5),
     "Niizumi et al., M2D-CLAP: Masked Modeling Duo Meets CLAP for Learning General-purpose Audio-Language "
     "Representation, Interspeech 2024 (arXiv 2406.02032)"),
    ("AST", (45.9, 34.7, 95.6, None, None),
     "Gong, Chung and Glass, AST: Audio Spectrogram Transformer, Interspeech 2021 (arXiv 2104.01778)"),
)


# ------------------------------------------------------------------------------------------- the runs


@dataclass(frozen=True)
class ColumnInfo:
    """What a column holds; columns of one key must agree on group and metric."""
    group: str
    metric: str
    task: str = field(default="", compare=False)  # the task name, without its variant
    variant: str | None = field(default=None, compare=False)  # the task's; once _ordered, the one the label shows


@dataclass
class Run:
    """One evaluated checkpoint: a model's scores at one pretraining seed, from one or more documents."""
    model: str
    seed: int | None
    pretraining: dict
    scores: dict[Column, list[float]] = field(default_factory=dict)
    errors: dict[Column, list[str]] = field(default_factory=dict)
    half_widths: dict[Column, list[float | None]] = field(default_factory=dict)  # per score: its own 95 % interval's
    sources: set[str] = field(default_factory=set)
    baseline_module: bool = False  # a document of it ran a baseline module (which may borrow a checkpoint)

    @property
    def kind(self) -> str:
        """"pretrained" for a checkpoint of one of the VARIANTS, else "baseline" (no pretraining provenance,
        a random init, or a baseline module such as hear_mamclap.baselines.random_init, whose provenance is
        the checkpoint it borrowed the architecture from)."""
        if self.baseline_module or self.pretraining.get("variant") not in VARIANTS:
            return "baseline"
        return "pretrained"

    def entry(self, col: Column) -> dict | None:
        """This run's result for col in summarize()'s run form (the mean when several documents scored it),
        its error when it only failed, None when it was not evaluated."""
        if col in self.scores:
            return {"score": sum(self.scores[col]) / len(self.scores[col]), "seed": self.seed,
                    "half_width": self.half_width(col)}
        if col in self.errors:
            return {"score": None, "error": self.errors[col][0], "seed": self.seed}
        return None

    def half_width(self, col: Column) -> float | None:
        """The 95 % interval half-width of this run's score of col, from its results entry; None when it has
        none or several documents scored col."""
        halves = self.half_widths.get(col, [])
        return halves[0] if len(halves) == 1 else None

    def _hear_items(self, columns: dict[Column, ColumnInfo], groups: list[str]) -> list[tuple[str, float, float | None]]:
        return [(info.group, self.entry(c)["score"], self.half_width(c)) for c, info in columns.items()
                if c[0] == "hear" and info.group in groups and c in self.scores]

    def group_half_width(self, group: str, columns: dict[Column, ColumnInfo]) -> float | None:
        """The half-width of group_score from the tasks' (intervals.mean_of_group_means)."""
        if self.group_score(group, columns) is None:
            return None
        return mean_of_group_means(self._hear_items(columns, [group]), (group,))[1]

    def overall_half_width(self, columns: dict[Column, ColumnInfo]) -> float | None:
        """The half-width of overall from the tasks' (intervals.mean_of_group_means)."""
        if self.overall(columns) is None:
            return None
        groups = hear_groups(columns)
        return mean_of_group_means(self._hear_items(columns, groups), tuple(groups))[1]

    def group_score(self, group: str, columns: dict[Column, ColumnInfo]) -> float | None:
        """Mean of this run's scores over the group's HEAR columns; None unless it has all of them."""
        cols = [c for c, info in columns.items() if info.group == group and c[0] == "hear"]
        if not cols or any(c not in self.scores for c in cols):
            return None
        return sum(self.entry(c)["score"] for c in cols) / len(cols)

    def overall(self, columns: dict[Column, ColumnInfo]) -> float | None:
        """Mean of this run's group means over the groups the HEAR columns cover; None if one is missing."""
        groups = hear_groups(columns)
        means = [self.group_score(g, columns) for g in groups]
        if not groups or any(m is None for m in means):
            return None
        return sum(means) / len(means)


def hear_groups(columns: dict[Column, ColumnInfo]) -> list[str]:
    """The groups that have a mean: those of GROUPS with a HEAR column (never OTHER)."""
    return [g for g in GROUPS if any(info.group == g and c[0] == "hear" for c, info in columns.items())]


def is_baseline_module(doc: dict) -> bool:
    return str((doc.get("settings") or {}).get("module", "")).startswith("hear_mamclap.baselines")


def column_name(col: Column, info: ColumnInfo | None = None) -> str:
    """`esc50`, `speech_commands (5h)`, `SUPERB KS`."""
    harness, key = col
    if harness == "superb":
        return f"SUPERB {SUPERB_NAMES.get(key, key)}"
    name = (info.task if info is not None else None) or key
    return f"{name} ({info.variant})" if info is not None and info.variant is not None else name


def column_label(col: Column, info: ColumnInfo) -> str:
    """`esc50 (top1_acc)`, `speech_commands (5h) (top1_acc)`, `SUPERB KS (top1_acc)`."""
    return f"{column_name(col, info)} ({info.metric})"


def column_measure(col: Column, info: ColumnInfo) -> Measure:
    return Measure(column_name(col, info), col[0], info.group, col[1], info.metric)


def _ordered(columns: dict[Column, ColumnInfo]) -> dict[Column, ColumnInfo]:
    """Groups in ALL_GROUPS order (OTHER last); HEAR before SUPERB within a group; tasks sorted by name, a
    task's variants in MODES order; and the label names a variant when it is not full, or when the table
    holds several of the task's variants (files without variants hold full ones)."""
    variants = defaultdict(int)
    for (harness, _), info in columns.items():
        variants[harness, info.task] += 1
    shown = {}
    for (harness, key), info in columns.items():
        full = info.variant in (None, FULL)
        label = (FULL if variants[harness, info.task] > 1 else None) if full else info.variant
        shown[harness, key] = replace(info, variant=label)

    def order(kv: tuple[Column, ColumnInfo]) -> tuple:
        (harness, key), info = kv
        variant = info.variant or FULL
        return (ALL_GROUPS.index(info.group), HARNESSES.index(harness), info.task or key,
                MODES.index(variant) if variant in MODES else len(MODES), variant)

    return dict(sorted(shown.items(), key=order))


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(the parsed JSON, None), or (None, why it could not be read)."""
    try:
        return json.loads(path.read_text()), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"not valid JSON ({err})"


def find_results(inputs: list[Path]) -> tuple[list[tuple[dict, str]], list[str]]:
    """(document, path) for each results file named or found under a named folder, and a note on the JSON
    files of the folders that are not results files. A named file must be a results file, and a file whose
    format says results must validate: an error, never a note, so a table does not silently lose a run."""
    found: list[tuple[Path, Any]] = []
    ignored: list[str] = []
    for path in inputs:
        if path.is_dir():
            for f in sorted(path.rglob("*.json")):
                obj, problem = _read_json(f)
                if problem is None and isinstance(obj, dict) and obj.get("format") == FORMAT:
                    found.append((f, obj))
                else:
                    why = problem or (f"format {obj.get('format')!r}" if isinstance(obj, dict) else
                                      "not a JSON object")
                    ignored.append(f"{f} ({why})")
        elif path.is_file():
            obj, problem = _read_json(path)
            if problem is not None:
                raise ResultsError(f"{path}: {problem}")
            found.append((path, obj))
        else:
            raise ResultsError(f"{path}: no such file or folder (expected {FORMAT} JSON files or folders "
                               "holding them)")
    docs, seen = [], set()
    for f, obj in found:
        if f.resolve() not in seen:  # a file named and also found in a named folder counts once
            seen.add(f.resolve())
            docs.append((validate_results(obj, str(f)), str(f)))
    if not docs:
        raise ResultsError(f"no {FORMAT} files in {', '.join(map(str, inputs))}: pass the results JSONs of "
                           "`mamclap hear eval` / `mamclap superb eval`, or folders holding them")
    if not ignored:
        return docs, []
    shown = ", ".join(ignored[:MAX_LISTED]) + (f" and {len(ignored) - MAX_LISTED} more" if len(ignored) > MAX_LISTED
                                                 else "")
    return docs, [f"ignored {len(ignored)} JSON file(s) that are not {FORMAT} files: {shown}"]


def collect_runs(docs: list[tuple[dict, str]]) -> tuple[dict[Column, ColumnInfo], list[Run]]:
    """The columns (ordered) and the runs of the documents. The documents of each model and harness are
    merged with merge_results (which refuses a repeated document); a run is keyed by model, pretraining
    seed and the exact provenance, so HEAR and SUPERB documents of one checkpoint form one run."""
    by_model: dict[str, list[tuple[dict, str]]] = defaultdict(list)
    for doc, path in docs:
        by_model[doc["model"]].append((doc, path))
    columns: dict[Column, ColumnInfo] = {}
    runs: dict[tuple, Run] = {}
    for model, model_docs in by_model.items():
        for harness in HARNESSES:
            chosen = [(d, p) for d, p in model_docs if d["harness"] == harness]
            if not chosen:
                continue
            try:
                merged = merge_results([d for d, _ in chosen])
            except ResultsError as err:
                raise ResultsError(f"{err} (files {', '.join(p for _, p in chosen)})") from None
            for key, merged_task in merged["tasks"].items():
                task, variant = key_parts(key, merged_task["variant"])
                col = (harness, task_key(task, variant))
                info = ColumnInfo(merged_task["group"], merged_task["metric"], task, variant)
                if columns.setdefault(col, info) != info:
                    raise ResultsError(f"{harness} task {col[1]!r} has group/metric {info.group}/{info.metric} "
                                       f"for model {model!r} but {columns[col].group}/{columns[col].metric} for "
                                       "another model: one column cannot hold both")
                for r in merged_task["runs"]:
                    doc, path = chosen[r["source"]]
                    provenance = doc.get("pretraining", {})
                    key = (model, r["seed"], json.dumps(_training_provenance(provenance), sort_keys=True))
                    run = runs.setdefault(key, Run(model, r["seed"], provenance))
                    run.sources.add(path)
                    run.baseline_module |= is_baseline_module(doc)
                    if r.get("error") is None:
                        run.scores.setdefault(col, []).append(r["score"])
                        run.half_widths.setdefault(col, []).append(_run_half_width(r, info.metric))
                    else:
                        run.errors.setdefault(col, []).append(r["error"])
    return _ordered(columns), list(runs.values())


# Provenance fields that describe how a run's weights were packaged, not how they were trained: the release's
# bf16 export adds both, so its SUPERB files and the same run's earlier HEAR files are one run, not two.
PACKAGING_FIELDS = ("exported", "release")


def _training_provenance(provenance: dict) -> dict:
    return {k: v for k, v in provenance.items() if k not in PACKAGING_FIELDS}


def _run_half_width(run: dict, metric: str) -> float | None:
    """A merged run's own 95 % half-width: its entry's ci95, else Wilson's for an accuracy of known n_test
    (SUPERB's entries, and HEAR files written before intervals), else None."""
    ci95 = run.get("ci95")
    if ci95 is not None:
        return ci95["half_width"]
    if metric in ACCURACY_METRICS and run.get("n_test", 0) > 0 and 0.0 <= run["score"] <= 1.0:
        return wilson(run["score"], run["n_test"])["half_width"]
    return None


# ------------------------------------------------------------------------------------------- cells


def fmt(summary: dict) -> str:
    """'0.612' for one score, '0.612 ± 0.031 (n=3)' for several, DASH for none."""
    if summary["n"] == 0:
        return DASH
    if summary["n"] == 1:
        return f"{summary['mean']:.3f}"
    return f"{summary['mean']:.3f} ± {summary['ci95']:.3f} (n={summary['n']})"


def _summary(entries: list[dict]) -> dict:
    """summarize()'s dict, plus "points": the seed and score of each scored run (the plots' markers), and
    for one scored run "ci95_run": that run's own 95 % half-width (None when unknown)."""
    scored = [e for e in entries if e.get("error") is None and e.get("score") is not None]
    out = {**summarize(entries), "points": [{"seed": e.get("seed"), "score": e["score"]} for e in scored]}
    if len(scored) == 1:
        out["ci95_run"] = scored[0].get("half_width")
    return out


def _values(runs: list[Run], values: list[float | None], halves: list[float | None] | None = None) -> dict:
    halves = halves if halves is not None else [None] * len(runs)
    return _summary([{"score": v, "seed": r.seed, "half_width": h} for r, v, h in zip(runs, values, halves)
                     if v is not None])


def _task_summary(runs: list[Run], col: Column) -> dict:
    return _summary([e for r in runs if (e := r.entry(col)) is not None])


def _cells_for(runs: list[Run], columns: dict[Column, ColumnInfo], groups: list[str],
               extra_columns: list[Column]) -> tuple[list[str], list[dict]]:
    """Cells of the group means, the overall mean, then extra_columns; and their summaries."""
    summaries = [_values(runs, [r.group_score(g, columns) for r in runs],
                         [r.group_half_width(g, columns) for r in runs]) for g in groups]
    if groups:
        summaries.append(_values(runs, [r.overall(columns) for r in runs],
                                 [r.overall_half_width(columns) for r in runs]))
    summaries += [_task_summary(runs, col) for col in extra_columns]
    return [fmt(s) for s in summaries], summaries


def _measures(columns: dict[Column, ColumnInfo], groups: list[str], extra_columns: list[Column]) -> list[Measure]:
    """What _cells_for's cells hold, in its order."""
    means = [Measure(f"{g} mean", "hear", g, "", "mean") for g in groups]
    means += [Measure("overall", "hear", "overall", "", "mean of group means")] if groups else []
    return means + [column_measure(c, columns[c]) for c in extra_columns]


def _first_line(text: str, limit: int = 200) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= limit else line[:limit] + "..."


# ------------------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Measure:
    """What a score column holds: the tidy CSV's fields, and the HTML page's, LaTeX's and the plots' labels."""
    name: str     # the task as the tables name it ("mini_esc", "SUPERB KS"), "<group> mean" or "overall"
    harness: str  # "hear" or "superb"; "" for a reported number
    group: str    # one of GROUPS, "overall" for the mean of the group means, "" for a reported number
    task: str     # the harness's task name; "" for a group or overall mean
    metric: str


@dataclass
class Table:
    key: str    # short name: the first CSV column when a file holds several tables
    title: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    spans: list[tuple[str, int]] = field(default_factory=list)  # column groups over header (label, width)
    notes: list[str] = field(default_factory=list)              # Markdown lines under the table
    # The numbers behind the text cells, for the tidy CSV, the HTML page and the plots:
    measures: list[Measure | None] = field(default_factory=list)   # per header column; None: a label column
    values: list[list[dict | None]] = field(default_factory=list)  # per row and column: _summary()'s dict
    kinds: list[str] = field(default_factory=list)                 # per row: pretrained | baseline | reported
    row_runs: list[list[Run]] = field(default_factory=list)        # per row: the runs behind it


def _provenance_line(runs: list[Run]) -> str:
    """Which runs and files a table rests on: the files by name when there are few, else their folders with
    a count each (a per-task experiment writes hundreds of files)."""
    sources = sorted({s for r in runs for s in r.sources if s})
    models = sorted({display_name(r) for r in runs})
    if len(sources) <= SOURCES_LISTED:
        where = ", ".join(sources)
    else:
        folders: dict[str, int] = defaultdict(int)
        for s in sources:
            folders[os.path.dirname(s) or "."] += 1
        where = ", ".join(f"{n} in {folder}/" for folder, n in sorted(folders.items()))
    return (f"Behind it: {len(runs)} run(s) (model × pretraining seed) of {len(models)} model(s) from "
            f"{len(sources)} results file(s): {where}.")


def display_name(run: Run) -> str:
    """The leaderboard's model name: the results' model name less a trailing "-s<seed>" that repeats the
    run's pretraining seed, so `mam-s0`, `mam-s1` and `mam-s2` are the seeds of one row `mam`."""
    suffix = f"-s{run.seed}"
    if run.seed is not None and run.model.endswith(suffix) and len(run.model) > len(suffix):
        return run.model[:-len(suffix)]
    return run.model


def leaderboard(columns: dict[Column, ColumnInfo], runs: list[Run]) -> Table:
    """One row per model, pretrained models first, then baselines: every task column, then the HEAR group
    means and the overall mean."""
    groups = hear_groups(columns)
    by_model: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_model[display_name(r)].append(r)

    def kind(model: str) -> str:
        return "pretrained" if all(r.kind == "pretrained" for r in by_model[model]) else "baseline"

    def order(model: str) -> tuple:
        if kind(model) == "baseline":
            return (1, 0, model)
        variant = next(r.pretraining.get("variant") for r in by_model[model])
        return (0, VARIANTS.index(variant), model)

    rows, notes, values, kinds, row_runs = [], [], [], [], []
    for model in sorted(by_model, key=order):
        model_runs = by_model[model]
        task_summaries = [_task_summary(model_runs, c) for c in columns]
        mean_cells, summaries = _cells_for(model_runs, columns, groups, [])
        rows.append([model, *map(fmt, task_summaries), *mean_cells])
        values.append([None, *task_summaries, *summaries])
        kinds.append(kind(model))
        row_runs.append(model_runs)
        for r in sorted(model_runs, key=lambda r: (r.seed is None, r.seed or 0)):
            for col, info in columns.items():
                if col in r.errors and col not in r.scores:
                    notes.append(f"error: {model} / {column_label(col, info)} (seed {r.seed}): "
                                 f"{_first_line(r.errors[col][0])}")
    spans = [("", 1)] + [(g, sum(1 for i in columns.values() if i.group == g)) for g in ALL_GROUPS
                         if any(i.group == g for i in columns.values())]
    if groups:
        spans.append(("HEAR means", len(groups) + 1))
    header = ["model", *(column_label(c, i) for c, i in columns.items()), *(f"{g} mean" for g in groups)]
    header += ["overall"] if groups else []
    other = any(i.group == OTHER for i in columns.values())
    caption = ("Each task's primary test score, mean over runs (pretraining seeds; a model name's trailing "
               "-s<seed> is dropped, so the seeds of one model share a row) with ± the "
               "half-width of the 95% t interval and n when there are several; " + DASH + " = failed or not "
               "run. Group means are taken per run over the group's HEAR tasks (a run needs all of them) and "
               "overall is the mean of the group means; SUPERB columns are not in the means"
               + (f", nor are the {OTHER!r} tasks (of no known group)" if other else "") + ". "
               + _provenance_line(runs))
    measures = [None, *(column_measure(c, i) for c, i in columns.items()), *_measures(columns, groups, [])]
    return Table("leaderboard", "Leaderboard", caption, header, rows, spans, notes, measures, values, kinds,
                 row_runs)


def _weights(provenance: dict) -> tuple[float, ...] | None:
    config = provenance.get("pretrain_config")
    if not isinstance(config, dict):
        return None
    try:
        return tuple(float(config[k]) for k in WEIGHT_FIELDS)
    except (KeyError, TypeError, ValueError):
        return None


def config_key(provenance: dict) -> str:
    """What makes two runs the same configuration: the model config, size, evaluated step and the training
    recipe; not the seed or the model's name."""
    train = provenance.get("train_config") if isinstance(provenance.get("train_config"), dict) else {}
    distils = any(w > 0 for w in (_weights(provenance) or (0, 0, 0, 0))[1:3])
    key = {"pretrain_config": provenance.get("pretrain_config"), "size": provenance.get("size"),
           "step": provenance.get("step"), **{k: train.get(k) for k in RECIPE_FIELDS},
           "teacher": Path(train["teacher"]).name if distils and train.get("teacher") else None,
           "data": "/".join(Path(train["data"]).parts[-2:]) if train.get("data") else None}
    return json.dumps(key, sort_keys=True)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def ablation(columns: dict[Column, ColumnInfo], runs: list[Run]) -> tuple[list[Table], list[str]]:
    """The paper's three ablation tables from the runs' provenance, and notes on runs left out of them.

    (1) variants: runs whose loss weights equal a preset's (PretrainConfig.preset); (2) distillation
    positions: lambda_cls == 0 and distillation on visible only, masked only or both; (3) lambda_cls > 0, by
    value, per family (SupMAM, or SupMAM-CLAP when it also distils). Rows pool runs by config_key."""
    notes, classified = [], []
    for r in runs:
        if r.kind == "baseline":
            continue  # leaderboard only
        weights = _weights(r.pretraining)
        if weights is None:
            notes.append(f"{r.model} (seed {r.seed}): provenance has no pretrain_config with {WEIGHT_FIELDS}; "
                         "left out of the ablation")
            continue
        classified.append((r, weights))
    used = {c for r, _ in classified for c in (*r.scores, *r.errors)}
    cols = {c: i for c, i in columns.items() if c in used}
    groups = hear_groups(cols)
    superb_cols = [c for c in cols if c[0] == "superb"]
    presets = {v: _weights({"pretrain_config": PretrainConfig.preset(v).to_dict()}) for v in VARIANTS}

    sections: dict[str, dict[tuple, list[Run]]] = {"variants": defaultdict(list), "positions": defaultdict(list),
                                                   "lambda_cls": defaultdict(list)}
    labels: dict[tuple, str] = {}
    for r, (recon, visible, masked, lam) in classified:
        ckey = config_key(r.pretraining)
        for i, v in enumerate(VARIANTS):
            if (recon, visible, masked, lam) == presets[v]:
                sections["variants"][(i, ckey)].append(r)
                labels[(i, ckey)] = VARIANT_NAMES[v]
        if lam == 0 and (visible > 0 or masked > 0):
            position = 2 if visible > 0 and masked > 0 else (0 if visible > 0 else 1)
            key = (position, visible, masked, ckey)
            sections["positions"][key].append(r)
            labels[key] = (f"{('visible only', 'masked only', 'visible + masked')[position]} "
                           f"(w_visible={visible:g}, w_masked={masked:g})")
        if lam > 0:
            family = 1 if visible > 0 or masked > 0 else 0
            key = (family, lam, ckey)
            sections["lambda_cls"][key].append(r)
            labels[key] = f"{('SupMAM', 'SupMAM-CLAP')[family]}, lambda_cls={lam:g}"

    header = ["configuration", "size", "step", "runs", *(f"{g} mean" for g in groups)]
    header += (["overall"] if groups else []) + [column_label(c, cols[c]) for c in superb_cols]
    titles = {"variants": "Ablation (1): MAM vs MAM-CLAP vs SupMAM vs SupMAM-CLAP at their preset weights",
              "positions": "Ablation (2): distillation on visible / masked / both positions (lambda_cls = 0)",
              "lambda_cls": "Ablation (3): weight of the classification loss lambda_cls"}
    measures = [None] * 4 + _measures(cols, groups, superb_cols)
    tables = []
    for name, rows_by_key in sections.items():
        rows, table_notes, table_runs, seen, values = [], [], [], defaultdict(list), []
        for key in sorted(rows_by_key):
            row_runs = rows_by_key[key]
            table_runs += row_runs
            first = row_runs[0].pretraining
            ident = (labels[key], *("" if first.get(k) is None else str(first[k]) for k in ("size", "step")))
            seen[ident].append(key[-1])
            cells, summaries = _cells_for(row_runs, cols, groups, superb_cols)
            rows.append([*ident, str(len(row_runs)), *cells])
            values.append([None] * 4 + summaries)
            members = sorted(row_runs, key=lambda r: (r.model, str(r.seed)))
            table_notes.append(f"{' / '.join(ident)}: " + ", ".join(f"{r.model} (seed {r.seed})" for r in members))
        for ident, keys in seen.items():
            if len(keys) > 1:  # rows that look alike: say what tells them apart
                flat = [_flatten(json.loads(k)) for k in keys]
                differ = sorted(f for f in set().union(*flat) if len({json.dumps(d.get(f)) for d in flat}) > 1)
                table_notes.append(f"{len(keys)} rows '{ident[0]}' differ in: {', '.join(differ)}")
        if not rows:
            table_notes.append("no run with pretraining provenance fits this table")
        caption = ("Rows come from each run's pretraining provenance (loss weights), not model "
                   "names; runs of one configuration pool across model names and seeds. Cells: mean over runs "
                   "of the per-run HEAR group mean (a run needs every HEAR task of the group), the overall mean "
                   "(mean of the group means) and SUPERB accuracy, ± the half-width of the 95% t interval and n "
                   "when there are several. " + (_provenance_line(table_runs) if table_runs else
                                                   "Behind it: 0 runs."))
        tables.append(Table(name, titles[name], caption, header, rows, notes=table_notes, measures=measures,
                            values=values, kinds=["pretrained"] * len(rows),
                            row_runs=[rows_by_key[k] for k in sorted(rows_by_key)]))
    return tables, notes


def reported_table() -> Table:
    rows = [[model, *(DASH if v is None else f"{v:.1f}" for v in values), "reported", source]
            for model, values, source in REPORTED]
    caption = ("Fine-tuning numbers (AudioSet mAP %, accuracy %; SPC-2 = Speech Commands V2) as reported by "
               "the paper named in each row's source. NOT measured here, on other tasks than the measured "
               "tables: never compare them cell by cell. Behind it: 0 runs of this project.")
    measures = [None, *(Measure(c, "", "", c.rsplit(" ", 1)[0], c.rsplit(" ", 1)[1] + " (%)")
                        for c in REPORTED_COLUMNS), None, None]
    values = [[None, *(None if v is None else {"mean": v, "ci95": None, "std": None, "n": None, "points": []}
                       for v in row_values), None, None] for _, row_values, _ in REPORTED]
    return Table("reported", "Reported numbers (not measured here)", caption,
                 ["model", *REPORTED_COLUMNS, "kind", "source"], rows, measures=measures, values=values,
                 kinds=["reported"] * len(rows), row_runs=[[] for _ in rows])


# ------------------------------------------------------------------------------------------- fine-tuning

# Columns in the paper's order, then any other fine-tuning task; rows by pretraining, then by kind.
FINETUNE_ORDER = ("as2m", "as20k", "esc50", "spcv2", "spcv2_12", "spcv1_12")
FINETUNE_KINDS = {"finetune": "fine-tuned", "frozen": "frozen features", "scratch": "from scratch",
                  "scratch-frozen": "random frozen features"}
TIDY_HEADER = ["model", "pretraining", "kind", "task", "metric", "mean", "ci95", "n"]


def split_finetune(docs: list[tuple[dict, str]]) -> tuple[list[tuple[dict, str]], list[tuple[dict, str]]]:
    """(fine-tuning documents, the others): the leaderboard and ablation tables are about frozen features."""
    return ([d for d in docs if d[0]["harness"] == "finetune"], [d for d in docs if d[0]["harness"] != "finetune"])


@dataclass
class FinetuneRow:
    """The fine-tuning runs (seeds) of one model and kind, per task."""
    model: str
    variant: str | None
    kind: str
    runs: dict[str, list[dict]] = field(default_factory=dict)
    sources: set[str] = field(default_factory=set)
    pretrain_seeds: set = field(default_factory=set)

    @property
    def pretraining(self) -> str:
        return VARIANT_NAMES.get(self.variant, self.variant) if self.variant else "none (random init)"


def _fmt_percent(summary: dict) -> str:
    """'38.6' for one run, '38.6 ± 0.4 (n=3)' for several, DASH for none: scores in %, as papers write them."""
    if summary["n"] == 0:
        return DASH
    if summary["n"] == 1:
        return f"{100 * summary['mean']:.1f}"
    return f"{100 * summary['mean']:.1f} ± {100 * summary['ci95']:.1f} (n={summary['n']})"


def finetune_rows(docs: list[tuple[dict, str]]) -> tuple[list[str], dict[str, str], list[FinetuneRow], dict]:
    """(task columns, their metrics, rows, the data folders behind each column) of fine-tuning documents."""
    rows: dict[tuple[str, str], FinetuneRow] = {}
    metrics: dict[str, str] = {}
    data: dict[str, set[str]] = defaultdict(set)
    for doc, path in docs:
        variant = doc.get("pretraining", {}).get("variant")
        for task, entry in doc["tasks"].items():
            kind = entry["extra"].get("kind") or doc.get("settings", {}).get("kind") or "finetune"
            row = rows.setdefault((doc["model"], kind), FinetuneRow(doc["model"], variant, kind))
            if metrics.setdefault(task, entry["metric"]) != entry["metric"]:
                raise ResultsError(f"{path}: fine-tuning task {task!r} has metric {entry['metric']!r} here and "
                                   f"{metrics[task]!r} in another file")
            run = {"score": entry["score"], "seed": entry["seed"]}
            if entry.get("error"):
                run["error"] = entry["error"]
            row.runs.setdefault(task, []).append(run)
            row.sources.add(path)
            row.pretrain_seeds.add(doc.get("pretraining", {}).get("seed"))
            data[task].add(str(entry["extra"].get("data", "")))
    rank = {t: i for i, t in enumerate(FINETUNE_ORDER)}
    tasks = sorted(metrics, key=lambda t: (rank.get(t, len(rank)), t))
    kinds = list(FINETUNE_KINDS)

    def order(row: FinetuneRow) -> tuple:
        v = VARIANTS.index(row.variant) if row.variant in VARIANTS else len(VARIANTS) + (row.variant is None)
        return (v, kinds.index(row.kind) if row.kind in kinds else len(kinds), row.model)
    return tasks, metrics, sorted(rows.values(), key=order), data


def _orderings(tasks: list[str], labels: dict[str, str], rows: list[FinetuneRow]) -> list[str]:
    """Per task, the fine-tuned pretrained rows from best to worst mean; '>' where the 95% intervals are
    apart, '≈' where they overlap (or a row has one run), and whether SupMAM-CLAP, the paper's best, leads."""
    notes = []
    for task in tasks:
        ranked = []
        for row in rows:
            s = summarize(row.runs.get(task, []))
            if row.kind == "finetune" and row.variant and s["n"]:
                ranked.append((s["mean"], s["ci95"], row))
        if len(ranked) < 2:
            continue
        ranked.sort(key=lambda r: -r[0])
        text = f"{ranked[0][2].pretraining} ({ranked[0][2].model}) {100 * ranked[0][0]:.1f}"
        for (m1, c1, _), (m2, c2, row) in zip(ranked, ranked[1:]):
            apart = c1 is not None and c2 is not None and m1 - c1 > m2 + c2
            text += f" {'>' if apart else '≈'} {row.pretraining} ({row.model}) {100 * m2:.1f}"
        lead = ranked[0][2].variant == "supmam_clap"
        notes.append(f"ordering on {labels[task]}: {text}; SupMAM-CLAP (the paper's best) "
                     f"{'leads' if lead else 'does not lead'}")
    return notes


def finetune_table(docs: list[tuple[dict, str]]) -> tuple[Table, list[list], list[str]]:
    """The paper's fine-tuning table from fine-tuning results: a row per model and kind (fine-tuned, frozen
    features, from scratch), a column per task, mean ± 95% t half-width over fine-tuning seeds; the tidy rows
    (TIDY_HEADER, scores as fractions) and notes (orderings, data folders)."""
    from training.eval.finetune_tasks import TASKS
    tasks, metrics, rows, data = finetune_rows(docs)
    labels = {t: TASKS[t].label if t in TASKS else t for t in tasks}
    body, tidy, notes = [], [], []
    for row in rows:
        cells = []
        for task in tasks:
            s = summarize(row.runs.get(task, []))
            cells.append(_fmt_percent(s))
            if s["n"]:
                tidy.append([row.model, row.pretraining, row.kind, task, metrics[task], s["mean"], s["ci95"], s["n"]])
            for run in row.runs.get(task, []):
                if run.get("error"):
                    notes.append(f"error: {row.model} / {labels[task]} (seed {run['seed']}): "
                                 f"{_first_line(run['error'])}")
        body.append([row.model, row.pretraining, FINETUNE_KINDS.get(row.kind, row.kind), *cells])
        seeds = sorted(str(s) for s in row.pretrain_seeds if s is not None)
        if seeds:
            notes.append(f"{row.model} ({row.kind}): pretraining seed(s) {', '.join(seeds)}")
    notes += _orderings(tasks, labels, rows)
    for task in tasks:
        if len(data[task]) > 1:
            notes.append(f"{labels[task]} pools runs on {len(data[task])} data folders: "
                         f"{', '.join(sorted(data[task]))}")
    sources = sorted({s for r in rows for s in r.sources})
    caption = ("Fine-tuning (the encoder and a head on its mean-pooled tokens, `mamclap finetune`) and its "
               "baselines: frozen features (head only) and random init. Cells: the test score of the best "
               "validation epoch in % (mAP for AudioSet, accuracy otherwise; ESC-50 averaged over its folds), mean "
               "over fine-tuning runs (seeds) with ± the half-width of the 95% t interval and n when there are "
               f"several; {DASH} = failed or not run. The paper's own numbers are in reported.md, never in this "
               f"table. Behind it: {sum(len(v) for r in rows for v in r.runs.values())} run(s) from "
               f"{len(sources)} results file(s).")
    header = ["model", "pretraining", "kind", *(f"{labels[t]} {metrics[t]}" for t in tasks)]
    return Table("finetune", "Fine-tuning", caption, header, body, notes=notes), tidy, notes


def finetune_tidy_csv(rows: list[list]) -> str:
    """One numeric row per (model, kind, task): mean and ci95 as fractions (ci95 empty for one run)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(TIDY_HEADER)
    for row in rows:
        writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in row])
    return buf.getvalue()


def write_finetune_tables(docs: list[tuple[dict, str]], out: Path) -> list[Path]:
    """finetune.md / .csv / .tex and finetune_tidy.csv in out."""
    table, tidy, _ = finetune_table(docs)
    return [atomic.write_text(out / "finetune.md", to_markdown([table])),
            atomic.write_text(out / "finetune.csv", to_csv([table])),
            atomic.write_text(out / "finetune.tex", to_latex([table])),
            atomic.write_text(out / "finetune_tidy.csv", finetune_tidy_csv(tidy))]


# ------------------------------------------------------------------------------------------- rendering


def _flat_header(table: Table) -> list[str]:
    """Markdown and CSV have one header row: a task column's group is written into its header."""
    if not table.spans:
        return list(table.header)
    labels = [label for label, width in table.spans for _ in range(width)]
    return [f"{g}: {h}" if g in ALL_GROUPS else h for g, h in zip(labels, table.header)]


def to_markdown(tables: list[Table], notes: list[str] = ()) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    blocks = []
    for t in tables:
        header = _flat_header(t)
        blocks += [f"### {t.title}", t.caption,
                   "\n".join([line(header), line(["---"] * len(header)), *(line(row) for row in t.rows)])]
        if t.notes:
            blocks.append("\n".join(f"- {n}" for n in t.notes))
    if notes:
        blocks.append("\n".join(f"- note: {n}" for n in notes))
    return "\n\n".join(blocks) + "\n"


def to_csv(tables: list[Table]) -> str:
    """One header row; with several tables (the ablation) a first column "table" names each row's table."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    several = len(tables) > 1
    writer.writerow((["table"] if several else []) + _flat_header(tables[0]))
    for t in tables:
        for row in t.rows:
            writer.writerow(([t.key] if several else []) + row)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------- the command


def _loss_logs(run_dirs: list[Path]) -> list[Path]:
    logs = []
    for d in run_dirs:
        log = d if d.is_file() else d / "log.jsonl"
        if not log.is_file():
            raise ResultsError(f"--runs {d}: no log.jsonl (expected a pretraining run folder written by "
                               "`mamclap pretrain`, or its log.jsonl)")
        if not any(isinstance(r.get("loss"), (int, float)) for r in read_log(log)):
            raise ResultsError(f"--runs {d}: {log} has no records with a step and a loss")
        logs.append(log)
    return logs


def make_tables(inputs: list[Path], out: Path, run_dirs: list[Path] = ()) -> list[Path]:
    """Read the results, write every table and plot into out; the paths written, in order."""
    logs = _loss_logs(list(run_dirs))  # checked before anything is written
    docs, notes = find_results(inputs)
    finetune_docs, docs = split_finetune(docs)
    columns, runs = collect_runs(docs)
    board = leaderboard(columns, runs)
    ablation_tables, ablation_notes = ablation(columns, runs)
    reported = reported_table()
    for note in notes + ablation_notes:
        print(f"note: {note}", file=sys.stderr)
    written = []
    frozen = [("leaderboard", [board], notes), ("ablation", ablation_tables, ablation_notes)] if docs else []
    for stem, tables, extra in (*frozen, ("reported", [reported], [])):
        written.append(atomic.write_text(out / f"{stem}.md", to_markdown(tables, extra)))
        written.append(atomic.write_text(out / f"{stem}.csv", to_csv(tables)))
        written.append(atomic.write_text(out / f"{stem}.tidy.csv", to_tidy_csv(tables)))
        written.append(atomic.write_text(out / f"{stem}.tex", to_latex(tables)))
    if docs:
        written.append(atomic.write_text(out / "scores.csv", to_scores_csv(board)))
    if finetune_docs:
        written += write_finetune_tables(finetune_docs, out)
    if docs:
        written.append(atomic.write_text(out / "leaderboard.html", to_html(
            [board, *ablation_tables, reported], notes + ablation_notes, out)))
    if docs and score_panels(board):
        written += plot_scores(board, out / "group_scores",
                               title="Scores by model (bars: mean over seeds; whiskers: 95% t interval)")
    if logs:
        labels = [log.parent.name if log.name == "log.jsonl" else log.stem for log in logs]
        written.append(plot_losses(logs, out / "pretrain_losses.png", title="pretraining losses", labels=labels))
    return written


def _command(args: argparse.Namespace) -> int:
    try:
        written = make_tables(args.inputs, args.out, args.runs)
    except ResultsError as err:
        print(f"mamclap tables: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


def register(subparsers) -> None:
    from training.args import existing_path, out_dir
    p = subparsers.add_parser("tables", help="leaderboard, ablation and reported tables (Markdown, CSV, LaTeX) "
                                             "and plots from results JSONs", description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="*", type=Path, default=[Path("results")], metavar="RESULTS_JSON_OR_DIR",
                   help="results files, or folders searched for them (default: results/)")
    p.add_argument("--out", type=out_dir, default=Path("results/tables"), help="output folder (default: %(default)s)")
    p.add_argument("--runs", nargs="+", type=existing_path, default=[], metavar="PRETRAIN_RUN_DIR",
                   help="pretraining run folders (or their log.jsonl) whose loss curves to plot")
    p.set_defaults(func=_command)
