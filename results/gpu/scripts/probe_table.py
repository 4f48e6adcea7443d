"""The markdown table of `mamclap hear probe` results (the readout's ridge probes scored on test), or of
`mamclap hear readout` files (each task's chosen candidate's validation score): one row per model, seeds
(names ending in -sN) gathered into one row.

    python results/gpu/scripts/probe_table.py PATH... [--csv scores.csv] > table.md

Each PATH is a folder of probe (or readout) JSON files or one such file; files of the same name in a later
PATH take the place of earlier ones (a call set that reuses an earlier one's baseline files: same suite).

Per task: the mean test score over seeds. "mean": the mean over the scene tasks; its 95 % interval is a t
interval over the seeds' means for n >= 2 seeds, else the one run's interval from the per-task bootstrap ones
(training.eval.intervals.combine_half_widths). Every number is read from the files; nothing is typed in.
--csv also writes the numbers in the columns of the tables' scores.csv (model, kind, metric, mean, ci95, n;
metric "probe/<task>" per task and "probe/mean"; ci95 is the half-width; n the seeds), kind "baseline" for
log-mel and random init.
"""
from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
from scipy import stats


def family(name: str) -> tuple[str, int | None]:
    m = re.fullmatch(r"(.+)-s(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else (name, None)


BASELINES = ("logmel", "random_init")


def t_half(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    return float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))


def as_probe(doc: dict) -> dict:
    """A `mamclap hear readout` file in the shape of a probe file: each scene task's score is the validation
    score of its chosen candidate (optimistic: the best of the candidates x weight decays tried; no interval)."""
    if doc.get("format") != "mamclap-readout":
        return doc
    tasks = {k: {"score": e["valid"][e["candidate"]], "ci95": {"half_width": None}}
             for k, e in doc["tasks"].items() if e.get("candidate")}
    return {"tasks": tasks, "mean": float(np.mean([t["score"] for t in tasks.values()])) if tasks else None,
            "mean_half_width": None}


def main(paths: list[str], csv_path: str | None = None) -> None:
    docs = {}
    for path in map(Path, paths):
        if not path.exists():
            sys.exit(f"{path}: no such folder or file (expected probe or readout JSON files)")
        for p in sorted(path.glob("*.json")) if path.is_dir() else [path]:
            docs[p.stem] = as_probe(json.loads(p.read_text()))
    docs = dict(sorted(docs.items()))
    rows: dict[str, list[dict]] = {}
    out: list[list] = []
    for name, doc in docs.items():
        rows.setdefault(family(name)[0], []).append(doc)
    tasks = sorted({t for doc in docs.values() for t in doc["tasks"]})
    short = [t.replace("mini_", "") for t in tasks]
    print("| model | n | " + " | ".join(short) + " | mean (95 % CI) |")
    print("|---|---|" + "---|" * len(tasks) + "---|")
    for fam, runs in rows.items():
        cells = []
        for t in tasks:
            vals = [r["tasks"][t]["score"] for r in runs if t in r["tasks"]]
            cells.append(f"{np.mean(vals):.3f}" if vals else "-")
        means = [r["mean"] for r in runs if r["mean"] is not None and set(r["tasks"]) == set(tasks)]
        if len(means) >= 2:
            mean = f"{np.mean(means):.3f} +- {t_half(means):.3f} (t, seeds)"
        elif means:
            one = next(r for r in runs if r["mean"] == means[0])
            mean = (f"{means[0]:.3f}" if one["mean_half_width"] is None
                    else f"{means[0]:.3f} +- {one['mean_half_width']:.3f} (bootstrap)")
        else:
            mean = "-"
        print(f"| {fam} | {len(runs)} | " + " | ".join(cells) + f" | {mean} |")
        kind = "baseline" if fam.startswith(BASELINES) else "pretrained"
        for t in tasks:
            vals = [r["tasks"][t]["score"] for r in runs if t in r["tasks"]]
            if vals:
                half = t_half(vals) if len(vals) >= 2 else next(
                    r["tasks"][t]["ci95"]["half_width"] for r in runs if t in r["tasks"])
                out.append([fam, kind, f"probe/{t}", float(np.mean(vals)), half, len(vals)])
        if means:
            half = t_half(means) if len(means) >= 2 else one["mean_half_width"]
            out.append([fam, kind, "probe/mean", float(np.mean(means)), half, len(means)])
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["model", "kind", "metric", "mean", "ci95", "n"])
            w.writerows([[m, k, x, f"{v:.6f}", "" if h is None else f"{h:.6f}", n] for m, k, x, v, h, n in out])


if __name__ == "__main__":
    args = sys.argv[1:]
    csv_out = None
    if "--csv" in args:
        i = args.index("--csv")
        if i + 1 >= len(args):
            sys.exit("usage: " + __doc__.splitlines()[2].strip())
        csv_out = args[i + 1]
        args = args[:i] + args[i + 2:]
    if not args:
        sys.exit("usage: " + __doc__.splitlines()[2].strip())
    main(args, csv_out)
