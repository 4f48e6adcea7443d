"""The tidy CSV of a table: one line per (row, score column) with the numbers as numbers, for a reader's own
analysis (`pandas.read_csv(...)`), beside the human-readable CSV whose cells are text ("0.650 ± 0.138 (n=3)").

Columns: the table's label columns (model, or configuration, size, step and runs; a first column "table"
when a file holds several tables), then kind (pretrained | baseline | reported), harness, group (a task's
group, or the group that a mean is over, or "overall"), task (empty for a mean), metric, mean, ci95 (the
half-width of the 95 % t interval; empty below two runs), std, n (scored runs), n_errors (failed runs) and
seeds. A cell with neither a score nor an error is not written.

`to_scores_csv` writes the leaderboard's numbers in six columns, SCORES_HEADER: model, kind, metric (the
measure: a task as the tables name it, "<group> mean" or "overall"), mean, ci95 (a 95 % half-width: the t
interval's over the n runs pooled when n >= 2, that one run's own interval when n == 1, empty when unknown)
and n.
"""
from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.eval.tables import Table

FIELDS = ("kind", "harness", "group", "task", "metric", "mean", "ci95", "std", "n", "n_errors", "seeds")
SCORES_HEADER = ("model", "kind", "metric", "mean", "ci95", "n")


def _number(x: float | int | None) -> str:
    """Six significant digits: the scores' own precision, without float noise (0.35000000000000003)."""
    return "" if x is None else f"{x:.6g}"


def _label_columns(table: Table) -> list[int]:
    """The label columns, less "kind" (the tidy CSV has its own)."""
    return [i for i, (h, m) in enumerate(zip(table.header, table.measures)) if m is None and h != "kind"]


def to_tidy_csv(tables: list[Table]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    several = len(tables) > 1
    labels = _label_columns(tables[0])
    writer.writerow((["table"] if several else []) + [tables[0].header[i] for i in labels] + list(FIELDS))
    for t in tables:
        for row, values, kind in zip(t.rows, t.values, t.kinds):
            ident = ([t.key] if several else []) + [row[i] for i in labels]
            for measure, value in zip(t.measures, values):
                if measure is None or value is None or (value["mean"] is None and not value.get("n_errors")):
                    continue
                writer.writerow(ident + [kind, measure.harness, measure.group, measure.task, measure.metric,
                                         _number(value["mean"]), _number(value["ci95"]), _number(value["std"]),
                                         _number(value["n"]), _number(value.get("n_errors")),
                                         " ".join(map(str, value.get("seeds", [])))])
    return buf.getvalue()


def to_scores_csv(board: Table) -> str:
    """The leaderboard as rows (model, kind, metric, mean, ci95, n), one per scored cell."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SCORES_HEADER)
    for row, values, kind in zip(board.rows, board.values, board.kinds):
        for measure, value in zip(board.measures, values):
            if measure is None or value is None or value["mean"] is None:
                continue
            ci95 = value["ci95"] if value["n"] >= 2 else value.get("ci95_run")
            writer.writerow([row[0], kind, measure.name, _number(value["mean"]), _number(ci95), value["n"]])
    return buf.getvalue()
