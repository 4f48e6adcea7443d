"""The tidy CSV of a table: one line per (row, score column) with the numbers as numbers, for a reader's own
analysis (`pandas.read_csv(...)`), beside the human-readable CSV whose cells are text ("0.650 ± 0.138 (n=3)").

Columns: the table's label columns (model, or configuration, size, step and runs; a first column "table"
when a file holds several tables), then kind (pretrained | baseline | reported), harness, group (a task's
group, or the group that a mean is over, or "overall"), task (empty for a mean), metric, mean, ci95 (the
half-width of the 95 % t interval; empty below two runs), std, n (scored runs), n_errors (failed runs) and
seeds. A cell with neither a score nor an error is not written.
"""
from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.eval.tables import Table

FIELDS = ("kind", "harness", "group", "task", "metric", "mean", "ci95", "std", "n", "n_errors", "seeds")


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
