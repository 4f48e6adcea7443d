"""LaTeX tables that compile and fit the page: booktabs rules, short column labels that the caption's legend
spells out, every name escaped. A leaderboard with per-task columns becomes a table of the HEAR means and
one table per task group, each narrow enough to read; a cell with an interval wraps its "(n=...)" under the
mean, and a table still wider than the text is scaled down to \\linewidth (graphicx), never cut off.
Baselines sit under their own rule, apart from the pretrained models.

Needs \\usepackage{booktabs,array,graphicx}.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from training.eval.results import FULL, key_parts

if TYPE_CHECKING:
    from training.eval.tables import Measure, Table

PACKAGES = ("booktabs", "array", "graphicx")
# Short labels of the mini suite's and HEAR 2021's tasks; any other task is named without its "mini_" prefix.
SHORT_TASK_LABELS = {
    "mini_esc": "ESC", "mini_mixtures": "Mix", "mini_dcase": "DCASE", "mini_drum_stroke": "Drum",
    "mini_instrument_family": "Inst", "mini_nsynth_pitch": "Pitch", "mini_language_id": "Lang",
    "mini_speaker_id": "Spk", "mini_speech_commands": "Cmd",
    "dcase2016_task2": "DCASE16", "esc50": "ESC-50", "fsd50k": "FSD50K", "gunshot_triangulation": "Gunshot",
    "tfds_crema_d": "CREMA-D", "libricount": "LibriCount", "speech_commands": "SC", "vocal_imitation": "VocIm",
    "vox_lingua_top10": "VoxLingua", "tfds_gtzan": "GTZAN", "tfds_gtzan_music_speech": "GTZAN-MS",
    "beijing_opera": "Opera", "mridangam_stroke": "MriS", "mridangam_tonic": "MriT", "nsynth_pitch": "NSynth",
    "maestro": "Maestro",
}
SHORT_GROUP_LABELS = {"environmental": "Env", "music": "Music", "speech": "Speech", "overall": "Overall"}
INTERVAL_WIDTH = "6.4em"  # "-0.650 ± 0.138" on one line (digits are 0.5 em), "(n=3)" under it
WIDE_LABEL = 24           # a label column with a longer cell wraps, in WIDE_LABEL_WIDTH
WIDE_LABEL_WIDTH = "11em"
BOX = r"\mamclaptablebox"  # the box a table is measured in before it is set

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
            "±": r"$\pm$", "—": "---", "×": r"$\times$"}


def latex_escape(text: str) -> str:
    """Text as LaTeX prints it: the ten special characters and <, >, | (which the default font encoding
    would print as ¡, ¿ and an em dash) spelled out."""
    return "".join(_SPECIAL.get(ch, ch) for ch in text)


def short_label(measure: Measure, in_group: bool = False) -> str:
    """"ESC", "KS", "Env"; a group's own mean is "mean" inside that group's table."""
    if not measure.harness:
        return measure.name  # a reported column, already short
    if not measure.task:
        return "mean" if in_group else SHORT_GROUP_LABELS.get(measure.group, measure.group)
    if measure.harness == "superb":
        return measure.name.removeprefix("SUPERB ")
    task, variant = key_parts(measure.task)  # "speech_commands-5h" -> ("speech_commands", "5h")
    short = SHORT_TASK_LABELS.get(task, task.removeprefix("mini_"))
    return f"{short}-{variant}" if variant not in (None, FULL) else short


def _legend_entry(label: str, measure: Measure) -> str:
    if not measure.task:
        what = ("the mean of the group means" if measure.group == "overall" else
                f"the mean of the {measure.group} HEAR tasks")
        return f"{label} = {what}"
    where = "SUPERB " + measure.task if measure.harness == "superb" else measure.name
    return f"{label} = {where} ({measure.metric})"


def _parts(table: Table) -> list[tuple[str, str, list[int], list[tuple[str, int]]]]:
    """(title, label suffix, column indices, spans) of the LaTeX tables one Table becomes."""
    measures = table.measures or [None] * len(table.header)
    labels = [i for i, m in enumerate(measures) if m is None]
    if not any(m is not None and m.harness == "hear" and m.task for m in measures):
        return [(table.title, "", list(range(len(table.header))), list(table.spans))]
    means = [i for i, m in enumerate(measures) if m is not None and not m.task]
    parts = [(f"{table.title}: HEAR group means and overall", "means", labels + means,
              [("", len(labels)), ("HEAR means", len(means))])]
    groups = list(dict.fromkeys(m.group for m in measures if m is not None and m.task))
    for g in groups:
        tasks = [i for i, m in enumerate(measures) if m is not None and m.task and m.group == g]
        own = [i for i in means if measures[i].group == g]
        parts.append((f"{table.title}: {g} tasks", g, labels + tasks + own,
                      [("", len(labels)), (g, len(tasks))] + ([("", len(own))] if own else [])))
    return parts


def _column_spec(table: Table, i: int) -> str:
    cells = [row[i] for row in table.rows]
    if table.measures and table.measures[i] is not None:
        return rf">{{\centering\arraybackslash}}p{{{INTERVAL_WIDTH}}}" if any("(n=" in c for c in cells) else "c"
    if any(len(c) > WIDE_LABEL for c in cells):
        return rf">{{\raggedright\arraybackslash}}p{{{WIDE_LABEL_WIDTH}}}"
    return "l" if i == 0 else "c"


def _table(table: Table, title: str, suffix: str, cols: list[int], spans: list[tuple[str, int]],
           first: str | None) -> list[str]:
    """One table environment of the given columns. Label columns other than the first that hold one value
    in every row move into the caption ("Every row: size small"), and long ones (a paper's citation) become
    numbered references listed there; first is the label of an earlier part whose caption this one shares."""
    measures = table.measures or [None] * len(table.header)
    group = suffix if suffix not in ("", "means") else None
    notes, references = [], {}
    kept, kept_spans = [], []
    for (span_label, width), start in zip(spans, [sum(w for _, w in spans[:k]) for k in range(len(spans))]):
        span_cols = cols[start:start + width]
        mine = [i for i in span_cols if not (measures[i] is None and i != 0 and len(table.rows) > 1
                                             and len({row[i] for row in table.rows}) == 1)]
        notes += [f"{table.header[i]} {table.rows[0][i]}" for i in span_cols if i not in mine]
        kept += mine
        if mine:
            kept_spans.append((span_label, len(mine)))
    cols = kept
    long = [i for i in cols if measures[i] is None and i != 0 and any(len(r[i]) > WIDE_LABEL for r in table.rows)]
    cells_of = {}
    for i in long:
        for row in table.rows:
            references.setdefault(row[i], len(references) + 1)
        cells_of[i] = {text: f"[{n}]" for text, n in references.items()}

    header, legend = [], []
    for i in cols:
        m = measures[i]
        if m is None:
            header.append(table.header[i])
        else:
            header.append(short_label(m, in_group=group is not None and m.group == group))
            if m.harness:
                legend.append(_legend_entry(header[-1], m))
    text, _, behind = table.caption.partition(" Behind it: ")
    caption = f"{title}. " + (text if first is None else f"Cells as in Table \\ref{{{first}}}.")
    caption += f" Every row: {'; '.join(notes)}." if notes else ""
    caption += f" Columns: {'; '.join(legend)}." if legend else ""
    caption += (" " + " ".join(f"[{n}] {ref}." for ref, n in references.items())) if references else ""
    label = "tab:" + table.key + (f"-{suffix}" if suffix else "")
    specs = "".join("l" if i in long else _column_spec(table, i) for i in cols)
    out = ([f"% Behind it: {behind}"] if behind else []) + [
        r"\begin{table}[htbp]", r"\centering", r"\footnotesize", r"\setlength{\tabcolsep}{3pt}",
        rf"\caption{{{_caption_escape(caption)}}}\label{{{label}}}",
        rf"\sbox{{{BOX}}}{{\begin{{tabular}}{{{specs}}}", r"\toprule"]
    if any(span_label for span_label, _ in kept_spans):
        cells, rules, start = [], [], 1
        for span_label, width in kept_spans:
            cells.append(rf"\multicolumn{{{width}}}{{c}}{{{latex_escape(span_label)}}}" if span_label else
                         " & ".join([""] * width))
            if span_label:
                rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
            start += width
        out += [" & ".join(cells) + r" \\", " ".join(rules)]
    out += [" & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    kinds = table.kinds or [""] * len(table.rows)
    for n, (row, kind) in enumerate(zip(table.rows, kinds)):
        if kind == "baseline" and n > 0 and kinds[n - 1] != "baseline":
            out += [r"\midrule", rf"\multicolumn{{{len(cols)}}}{{l}}{{\emph{{baselines}}}} \\"]
        out.append(" & ".join(cells_of[i][row[i]] if i in cells_of else latex_escape(row[i]) for i in cols)
                   + r" \\")
    if not table.rows:
        out.append(rf"\multicolumn{{{len(cols)}}}{{c}}{{no runs}} \\")
    return out + [r"\bottomrule", r"\end{tabular}}",
                  rf"\ifdim\wd{BOX}>\linewidth\resizebox{{\linewidth}}{{!}}{{\usebox{{{BOX}}}}}"
                  rf"\else\usebox{{{BOX}}}\fi", r"\end{table}", ""]


def _caption_escape(caption: str) -> str:
    """latex_escape, but a \\ref{...} written by _table stays a reference."""
    parts = caption.split("\\ref{")
    out = latex_escape(parts[0])
    for part in parts[1:]:
        key, _, rest = part.partition("}")
        out += rf"\ref{{{key}}}" + latex_escape(rest)
    return out


def to_latex(tables: list[Table]) -> str:
    out = [f"% Written by `mamclap tables` from results files; needs \\usepackage{{{','.join(PACKAGES)}}}.",
           rf"\ifdefined{BOX}\else\newsavebox{{{BOX}}}\fi"]
    for t in tables:
        first = None
        for title, suffix, cols, spans in _parts(t):
            out += _table(t, title, suffix, cols, spans or [("", len(cols))], first)
            first = first or "tab:" + t.key + (f"-{suffix}" if suffix else "")
    return "\n".join(out)
