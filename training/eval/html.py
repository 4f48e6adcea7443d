"""`leaderboard.html`: every table of a `mamclap tables` folder in one self-contained page (inline CSS and a
few lines of inline JavaScript; it loads nothing, so it reads offline and from a file:// URL).

What a reader finds there: columns that sort on a click (scores best first; empty cells last either way);
the best score of each column in bold; baselines on grey hatched rows with a "baseline" tag, so they are
never taken for pretrained models; each cell's mean with the half-width of its 95 % t interval and the
number of runs, the per-seed scores in its tooltip; per-task columns, the HEAR group means and the overall
mean; each model's provenance (pretraining variant, seed, step, loss weights, recipe and the results files
it rests on, linked) in a section of its own that model names link to; the papers' reported numbers in a
box apart, labelled as not measured here.
"""
from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from training.eval.tables import Measure, Run, Table

# (pretrain_config field, label) and (train_config field, label) shown in a run's provenance.
WEIGHT_LABELS = (("recon_weight", "recon"), ("distill_visible_weight", "distill visible"),
                 ("distill_masked_weight", "distill masked"), ("lambda_cls", "λ_cls"))
RECIPE_LABELS = (("steps", "steps"), ("batch_size", "batch"), ("base_lr", "lr"), ("warmup_steps", "warmup"))

CSS = """
:root { --ink: #1d1d1f; --muted: #6b6b70; --rule: #d9d9de; --accent: #0b57d0; --base: #ececef; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1600px; padding: 16px 24px 48px; color: var(--ink); font: 14px/1.45 system-ui,
       -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
h1 { font-size: 22px; margin: 4px 0 4px; } h2 { font-size: 18px; margin: 28px 0 6px; }
h3 { font-size: 15px; margin: 18px 0 4px; }
p { margin: 4px 0 8px; max-width: 110ch; } .caption { color: var(--muted); font-size: 12.5px; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 18px; font-size: 12.5px; color: var(--muted); margin: 6px 0 12px; }
.scroll { overflow-x: auto; border: 1px solid var(--rule); border-radius: 6px; }
table.scores { border-collapse: collapse; font-variant-numeric: tabular-nums; width: 100%; font-size: 13px; }
table.scores th, table.scores td { padding: 3px 6px; border-bottom: 1px solid var(--rule); vertical-align: top; }
table.scores thead th { position: sticky; top: 0; background: #f6f6f8; font-weight: 600; font-size: 12.5px;
                        text-align: center; vertical-align: bottom; }
table.scores thead tr.spans th { border-bottom: 2px solid var(--rule); color: var(--muted); }
th .metric { display: block; font-weight: 400; color: var(--muted); font-size: 11px; }
button.sort { all: unset; cursor: pointer; display: block; width: 100%; }
button.sort:focus-visible { outline: 2px solid var(--accent); }
th[aria-sort="descending"] button.sort::after { content: " ▼"; color: var(--accent); }
th[aria-sort="ascending"] button.sort::after { content: " ▲"; color: var(--accent); }
td.label { white-space: nowrap; } td.wrap { min-width: 16ch; }
table.scores tr > :first-child { position: sticky; left: 0; z-index: 1; background: #fff; }
table.scores thead tr > :first-child { background: #f6f6f8; z-index: 2; }
table.scores tr.baseline > :first-child { background: var(--base); }
td.num { text-align: right; white-space: nowrap; }
td.num .m { display: block; } td.num .ci, td.num .n { font-size: 11px; color: var(--muted); }
td.best .m { font-weight: 700; } td.best-pretrained .m { text-decoration: underline; }
td.missing { color: var(--muted); text-align: center; }
td.mean, th.mean { border-left: 1px solid var(--rule); }
tr.baseline td { background: repeating-linear-gradient(135deg, var(--base) 0 5px, #f6f6f8 5px 10px);
                 color: #4a4a50; }
.kind { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 11px; font-weight: 600; }
.kind-pretrained { background: #dbe8ff; color: #0b3d91; } .kind-baseline { background: #e2e2e6; color: #3a3a40; }
.kind-reported { background: #fbe6b8; color: #6a4a00; }
.members { display: block; font-size: 11px; }
section.reported { margin-top: 28px; padding: 4px 16px 12px; border: 2px dashed #c9a227; border-radius: 8px;
                   background: #fffaf0; }
section.reported .caption { font-weight: 600; color: #6a4a00; }
.prov { margin: 10px 0 16px; } .prov table { font-size: 12.5px; }
.prov td { border-bottom: 1px solid var(--rule); padding: 3px 8px; vertical-align: top; }
:target { outline: 2px solid #c9a227; outline-offset: 2px; }
ul.notes { font-size: 12.5px; color: var(--muted); }
"""

# Sort a table by the clicked column: numbers (data-v) best first on the first click, text A-Z; empty
# cells (no score) stay last in either direction.
JS = """
function compareCells(a, b, descending) {
  const empty = v => v === undefined || v === "";
  if (empty(a) || empty(b)) return empty(a) - empty(b);
  const x = Number(a), y = Number(b);
  const order = Number.isNaN(x) || Number.isNaN(y) ? a.localeCompare(b) : x - y;
  return descending ? -order : order;
}
document.querySelectorAll("table.sortable").forEach(table => {
  const body = table.tBodies[0];
  table.querySelectorAll("button.sort").forEach(button => {
    button.addEventListener("click", () => {
      const th = button.closest("th"), col = Number(button.dataset.col);
      const state = th.getAttribute("aria-sort");
      const descending = state ? state === "ascending" : button.dataset.type === "number";
      table.querySelectorAll("th[aria-sort]").forEach(h => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", descending ? "descending" : "ascending");
      const rows = Array.from(body.rows);
      rows.sort((r, s) => compareCells(r.cells[col].dataset.v, s.cells[col].dataset.v, descending));
      rows.forEach(r => body.appendChild(r));
    });
  });
});
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _breakable(name: str) -> str:
    """A long task name that may wrap after its underscores."""
    return "_<wbr>".join(_e(part) for part in name.split("_"))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def _number(x: float | None) -> str:
    return "" if x is None else repr(float(x))


class _Anchors:
    """Unique element ids for models and runs, so that links from any table find their provenance."""

    def __init__(self):
        self.taken: set[str] = set()
        self.runs: dict[int, str] = {}

    def new(self, base: str) -> str:
        anchor, i = base, 1
        while anchor in self.taken:
            i += 1
            anchor = f"{base}-{i}"
        self.taken.add(anchor)
        return anchor

    def run(self, run: Run) -> str:
        if id(run) not in self.runs:
            self.runs[id(run)] = self.new(f"run-{_slug(run.model)}-s{run.seed}")
        return self.runs[id(run)]


def _best(table: Table, col: int) -> tuple[set[int], set[int]]:
    """Rows holding the column's best mean; and, when only baselines do, the best pretrained rows."""
    means = {r: v[col]["mean"] for r, v in enumerate(table.values) if v[col] and v[col]["mean"] is not None}
    if not means:
        return set(), set()
    best = {r for r, m in means.items() if m == max(means.values())}
    if all(table.kinds[r] != "baseline" for r in best):
        return best, set()
    pretrained = {r: m for r, m in means.items() if table.kinds[r] == "pretrained"}
    return best, {r for r, m in pretrained.items() if m == max(pretrained.values())} if pretrained else set()


def _score_cell(value: dict | None, text: str, measure: Measure, classes: list[str]) -> str:
    if value is None or value["mean"] is None:
        why = ("failed (the notes say why)" if value and value.get("n_errors") else "not run or not given")
        return f'<td class="num missing {" ".join(classes)}" data-v="" title="{_e(why)}">—</td>'
    if value["n"] is None:  # a reported number: the paper's own precision, no interval
        return f'<td class="num {" ".join(classes)}" data-v="{_number(value["mean"])}"><span class="m">{_e(text)}</span></td>'
    points = ", ".join(f"{p['score']:.3f}" + (f" (seed {p['seed']})" if p["seed"] is not None else "")
                       for p in value.get("points", []))
    tip = f"{measure.name} ({measure.metric}): mean {value['mean']:.4f}"
    if value["ci95"] is not None:
        tip += f", 95% t interval ± {value['ci95']:.4f}, std {value['std']:.4f}"
    tip += f", n={value['n']}" + (f"; {value['n_errors']} failed" if value.get("n_errors") else "")
    tip += f". Runs: {points}" if points else ""
    ci = f'<span class="ci">± {value["ci95"]:.3f}</span>' if value["ci95"] is not None else ""
    return (f'<td class="num {" ".join(classes)}" data-v="{_number(value["mean"])}" title="{_e(tip)}">'
            f'<span class="m">{value["mean"]:.3f}</span>{ci} <span class="n">n={value["n"]}</span></td>')


def _header_cell(label: str, measure: Measure | None, col: int, classes: str = "") -> str:
    kind = "number" if measure is not None else "text"
    if measure is not None and measure.harness:
        inner = f'{_breakable(measure.name)}<span class="metric">{_e(measure.metric)}</span>'
    else:
        inner = _e(label)
    return (f'<th scope="col" class="{classes}" title="{_e(label)}"><button type="button" class="sort" '
            f'data-col="{col}" data-type="{kind}">{inner}</button></th>')


def _display_columns(table: Table) -> tuple[list[int | str], list[tuple[str, int]]]:
    """The page's columns: indices into table.header, and "kind" and "seeds" (added after a model's name in
    a table of models); with the header spans over them. A leaderboard with per-task columns shows its HEAR
    means first, where a reader looks, then the tasks by group."""
    measures = table.measures or [None] * len(table.header)
    per_model = table.header[0] == "model" and any(table.row_runs)
    labels = [i for i, m in enumerate(measures) if m is None]
    means = [i for i, m in enumerate(measures) if m is not None and m.harness == "hear" and not m.task]
    tasks = [i for i, m in enumerate(measures) if m is not None and m.harness == "hear" and m.task]
    if tasks:
        order = labels + means + [i for i in range(len(measures)) if i not in labels + means]
    else:
        order = list(range(len(measures)))
    if per_model:
        order[1:1] = ["kind", "seeds"]
    spans: list[tuple[str, int]] = []
    if table.spans or tasks:
        for col in order:
            m = measures[col] if isinstance(col, int) else None
            label = "" if m is None else ("HEAR means" if m.harness == "hear" and not m.task else m.group)
            if spans and spans[-1][0] == label:
                spans[-1] = (label, spans[-1][1] + 1)
            else:
                spans.append((label, 1))
    return order, spans


def _table_html(table: Table, anchors: _Anchors, model_anchors: dict[int, str]) -> str:
    measures = table.measures or [None] * len(table.header)
    values = table.values or [[None] * len(table.header) for _ in table.rows]
    kinds = table.kinds or [""] * len(table.rows)
    order, spans = _display_columns(table)
    best = {i: _best(table, i) for i, m in enumerate(measures) if m is not None and table.values}

    def is_mean(i: int | str) -> bool:
        return isinstance(i, int) and measures[i] is not None and measures[i].harness == "hear" and not measures[i].task

    head = []
    if spans:
        head.append('<tr class="spans">' + "".join(f'<th colspan="{w}">{_e(label)}</th>' for label, w in spans)
                    + "</tr>")
    head.append("<tr>" + "".join(
        _header_cell(col, None, n) if isinstance(col, str) else
        _header_cell(table.header[col], measures[col], n, "mean" if is_mean(col) else "")
        for n, col in enumerate(order)) + "</tr>")

    body = []
    for r, (row, kind) in enumerate(zip(table.rows, kinds)):
        cells = []
        for col in order:
            if col == "kind":
                cells.append(f'<td class="label" data-v="{_e(kind)}"><span class="kind kind-{_e(kind)}">'
                             f'{_e(kind)}</span></td>')
                continue
            if col == "seeds":
                seeds = sorted({run.seed for run in table.row_runs[r] if run.seed is not None})
                cells.append(f'<td class="label" data-v="{len(table.row_runs[r])}">'
                             f'{_e(", ".join(map(str, seeds)) or "—")}</td>')
                continue
            text, m = row[col], measures[col]
            if m is not None:
                top, top_pretrained = best.get(col, (set(), set()))
                classes = (["mean"] if is_mean(col) else []) + (["best"] if r in top else [])
                classes += ["best-pretrained"] if r in top_pretrained else []
                cells.append(_score_cell(values[r][col], text, m, classes))
                continue
            if col == 0 and r in model_anchors:
                content = f'<a href="#{model_anchors[r]}">{_e(text)}</a>'
            elif table.header[col] == "kind":
                content = f'<span class="kind kind-{_e(text)}">{_e(text)}</span>'
            else:
                content = _e(text)
            if col == 0 and r not in model_anchors and table.row_runs and table.row_runs[r]:
                links = " · ".join(f'<a href="#{anchors.run(run)}">{_e(run.model)}</a>' for run in
                                   sorted(table.row_runs[r], key=lambda run: (run.model, str(run.seed))))
                content += f'<span class="members">{links}</span>'
            cells.append(f'<td class="{"wrap" if len(text) > 40 else "label"}" data-v="{_e(text)}">{content}</td>')
        body.append(f'<tr class="{_e(kind)}" data-kind="{_e(kind)}">{"".join(cells)}</tr>')
    if not table.rows:
        body.append(f'<tr><td colspan="{len(order)}" class="missing">no runs</td></tr>')
    return (f'<div class="scroll"><table class="scores sortable" id="table-{_slug(table.key)}">'
            f'<thead>{"".join(head)}</thead><tbody>{"".join(body)}</tbody></table></div>')


def _provenance_line(provenance: dict) -> str:
    parts = [f"{k} {provenance[k]}" for k in ("variant", "size", "step") if provenance.get(k) is not None]
    return " · ".join(parts) or "no pretraining provenance"


def _weights(provenance: dict) -> str:
    config = provenance.get("pretrain_config")
    if not isinstance(config, dict):
        return "—"
    return " · ".join(f"{label} {config[k]:g}" for k, label in WEIGHT_LABELS
                      if isinstance(config.get(k), (int, float))) or "—"


def _recipe(provenance: dict) -> str:
    train = provenance.get("train_config")
    if not isinstance(train, dict):
        return "—"
    parts = [f"{label} {train[k]}" for k, label in RECIPE_LABELS if train.get(k) is not None]
    if train.get("data"):
        parts.append("data " + "/".join(Path(train["data"]).parts[-2:]))
    return " · ".join(parts) or "—"


def _source_link(source: str, out_dir: Path) -> str:
    href = quote(os.path.relpath(Path(source).resolve(), Path(out_dir).resolve()).replace(os.sep, "/"))
    return f'<li><a href="{href}">{_e(source)}</a></li>'


def _provenance_html(board: Table, anchors: _Anchors, model_anchors: dict[int, str], out_dir: Path) -> str:
    blocks = []
    for r, row in enumerate(board.rows):
        if r not in model_anchors:
            continue
        kind = board.kinds[r]
        runs = []
        for run in sorted(board.row_runs[r], key=lambda run: (run.seed is None, run.seed or 0, run.model)):
            sources = sorted(run.sources)
            files = (f'<details><summary>{len(sources)} results file(s)</summary><ul>'
                     f'{"".join(_source_link(s, out_dir) for s in sources)}</ul></details>')
            module = " (baseline module)" if run.baseline_module else ""
            runs.append(f'<tr id="{anchors.run(run)}"><td>{_e(run.model)}</td><td>{_e(run.seed)}</td>'
                        f'<td>{_e(_provenance_line(run.pretraining) + module)}</td><td>{_e(_weights(run.pretraining))}'
                        f'</td><td>{_e(_recipe(run.pretraining))}</td><td>{files}</td></tr>')
        blocks.append(f'<div class="prov" id="{model_anchors[r]}"><h3>{_e(row[0])} <span class="kind kind-{_e(kind)}">'
                      f'{_e(kind)}</span></h3><table><thead><tr><th>run</th><th>seed</th><th>pretraining</th>'
                      f'<th>loss weights</th><th>recipe</th><th>results</th></tr></thead><tbody>{"".join(runs)}'
                      f'</tbody></table></div>')
    return "".join(blocks)


def _notes(notes: list[str]) -> str:
    return f'<ul class="notes">{"".join(f"<li>{_e(n)}</li>" for n in notes)}</ul>' if notes else ""


def _section(table: Table, anchors: _Anchors, model_anchors: dict[int, str], level: str = "h3") -> str:
    caption, _, behind = table.caption.partition(" Behind it: ")
    return (f'<{level} id="{_slug(table.key)}">{_e(table.title)}</{level}><p class="caption">{_e(caption)}</p>'
            f'{_table_html(table, anchors, model_anchors)}'
            + (f'<p class="caption">Behind it: {_e(behind)}</p>' if behind else "") + _notes(table.notes))


def to_html(tables: list[Table], notes: list[str], out_dir: Path, title: str = "mamclap leaderboard") -> str:
    """The page for tables: the first is the leaderboard (its rows get provenance anchors), tables of
    reported numbers go in a box apart, the others (the ablation) between them."""
    board, rest = tables[0], tables[1:]
    anchors = _Anchors()
    model_anchors = {r: anchors.new(f"prov-{_slug(row[0])}") for r, row in enumerate(board.rows)
                     if board.row_runs and board.row_runs[r]}
    measured = [t for t in rest if not t.kinds or any(k != "reported" for k in t.kinds)]
    reported = [t for t in rest if t not in measured]
    parts = [f'<h1>{_e(title)}</h1>',
             '<p>Written by <code>mamclap tables</code> from the results JSONs of the HEAR and SUPERB harnesses. '
             'Click a column header to sort by it (again to reverse).</p>',
             '<div class="legend"><span><b>bold</b>: best in its column</span>'
             '<span><u>underlined</u>: best pretrained model where a baseline is best</span>'
             '<span>± : half-width of the 95 % t interval over runs (seeds)</span><span>n : runs scored</span>'
             '<span><span class="kind kind-pretrained">pretrained</span> our checkpoints</span>'
             '<span><span class="kind kind-baseline">baseline</span> log-mel, random init, other models '
             '(hatched rows)</span><span>— : failed or not run</span></div>',
             _section(board, anchors, model_anchors, "h2")]
    if measured:
        parts.append('<h2 id="ablation">Ablation</h2>')
        parts += [_section(t, anchors, {}) for t in measured]
    for t in reported:
        parts.append('<section class="reported">' + _section(t, anchors, {}, "h2") + '</section>')
    parts.append('<h2 id="provenance">Provenance</h2><p class="caption">Each leaderboard row\'s runs: the '
                 "checkpoint's pretraining as its results files record it, and the files (links relative to "
                 "this page).</p>" + _provenance_html(board, anchors, model_anchors, out_dir))
    if notes:
        parts.append('<h2 id="notes">Notes</h2>' + _notes(notes))
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>{_e(title)}</title><style>{CSS}</style></head>\n<body>'
            + "\n".join(parts) + f"\n<script>{JS}</script>\n</body></html>\n")
