"""`mamclap export`: an encoder as a folder with a model card, and the repository's release.

    mamclap export runs/supmam_clap/checkpoint.pt --out runs/supmam_clap/step-1000   # float32 export + card
    mamclap export runs/supmam_clap/encoder --release --name NAME \\
        --scores results/tables/main/scores.csv --scores-model supmam-clap
    mamclap export results/gpu/representations/runs/supmam-s0/encoder --release --name NAME ...

The source is an export folder (float32, or a sharded one), a pretraining checkpoint.pt, or what the GPU
drivers bring back: a folder with the export's version-1 encoder.json and the weights in bfloat16 shards
`<run>.bf16-00001-of-0000N.safetensors` (hear_mamclap.checkpoint reads that as an export; bfloat16 to
float32 and back is exact, so the release holds the shards' weights bit for bit).

A release is results/models/NAME/: the encoder's weights in bfloat16 as safetensors files of at most 16 MiB
(plain git files, no LFS), at most 48 MiB in all, the sharded export's encoder.json
(hear_mamclap.checkpoint), and a README.md model card generated from the source's provenance (variant,
recipe, data, losses) and the scores given (default: results/tables/main/scores.csv when it exists; its
rows of --scores-model, with their 95 % intervals, and the baselines'); a card without scores says none
were measured, and no number in it comes from anywhere but those files. The repository holds one release: a new one replaces the old
(--replace), never sits beside it, and only when it is better: its HEAR overall score (recorded in
encoder.json's metadata "release") at least the old one's. hear_mamclap.load_model, `-u mamclap -k results/models/NAME` and every
harness read it as they read any export.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import re
import shutil
from pathlib import Path

import torch

from hear_mamclap import atomic
from hear_mamclap.checkpoint import CONFIG_NAME, export_encoder, load_encoder, read_metadata
from hear_mamclap.errors import UserError
from hear_mamclap.hub import CARD_NAME, model_card
from hear_mamclap.model import MAMCLAPEncoder

# The released encoder's folder name. A placeholder until the release is trained: set it here, and in the
# README's HEAR and SUPERB commands (tests/test_readme.py checks that they agree, and that a release in
# results/models/ has this name).
RELEASE_NAME = "mamclap-vits"
MODELS_DIR = Path("results/models")  # under the current directory: a checkout's root
DEFAULT_SCORES = Path("results/tables/main/scores.csv")  # `mamclap tables` of the main experiment
MAX_SHARD_BYTES = 16 * 2**20
MAX_RELEASE_BYTES = 48 * 2**20
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SCORE_COLUMNS = ("model", "kind", "metric", "mean")  # what a scores CSV must have; ci95, n, harness, group and
SCORE_KEYS = ("harness", "group", "task", "metric")  # task are read when present
_LOG_FIELDS = {"step", "lr", "grad_norm", "skipped", "elapsed_s", "peak_mem_gib"}  # log.jsonl fields, not losses


def release_dirs(models_dir: str | Path = MODELS_DIR) -> list[Path]:
    """The releases in models_dir: its folders holding an encoder.json."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    return sorted(p for p in models_dir.iterdir() if p.is_dir() and (p / CONFIG_NAME).is_file())


def find_release(models_dir: str | Path = MODELS_DIR) -> Path | None:
    """The release in models_dir, None without one; an error when there are several (one is the rule)."""
    found = release_dirs(models_dir)
    if len(found) > 1:
        raise UserError(f"{models_dir} holds {len(found)} releases ({', '.join(p.name for p in found)}); it "
                        "should hold one: remove all but the best")
    return found[0] if found else None


def bf16_bytes(encoder: MAMCLAPEncoder) -> int:
    """Bytes of the encoder's saved tensors with floating-point ones in bfloat16 (headers not counted)."""
    return sum(v.numel() * (2 if v.is_floating_point() else v.element_size()) for v in encoder.state_dict().values())


# ---------------------------------------------------------------------------------------------- scores


def _csv_rows(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"--scores {path}: not a readable CSV ({err})") from None
    missing = [c for c in SCORE_COLUMNS if c not in columns]
    if missing:
        raise UserError(f"--scores {path}: no column {', '.join(missing)}; expected a tidy scores CSV with "
                        f"{', '.join(SCORE_COLUMNS)} (and ci95, n), as `mamclap tables` writes")
    return rows


def _results_rows(paths: list[Path]) -> list[dict]:
    """The leaderboard's tidy rows of results JSONs (or folders of them), as `mamclap tables` computes them."""
    from training.eval.results import ResultsError
    from training.eval.tables import collect_runs, find_results, leaderboard, split_finetune
    from training.eval.tidy import to_scores_csv

    try:
        docs, _notes = find_results(paths)
        _finetune, docs = split_finetune(docs)
        if not docs:
            raise ResultsError(f"{', '.join(map(str, paths))}: no HEAR or SUPERB results")
        board = leaderboard(*collect_runs(docs))
    except ResultsError as err:
        raise UserError(f"--scores: {err}") from None
    return list(csv.DictReader(to_scores_csv(board).splitlines()))


def read_scores(paths: list[str | Path]) -> list[dict]:
    """Score rows (model, kind, metric, mean, ci95, n, ...) from tidy CSVs and results JSONs or folders."""
    paths = [Path(p) for p in paths]
    rows = [r for p in paths if p.suffix == ".csv" for r in _csv_rows(p)]
    others = [p for p in paths if p.suffix != ".csv"]
    return rows + (_results_rows(others) if others else [])


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _cell(row: dict | None) -> str:
    if row is None or _number(row.get("mean")) is None:
        return "-"
    text = f"{_number(row['mean']):.3f}"
    ci, n = _number(row.get("ci95")), _number(row.get("n"))
    if ci is not None:
        text += f" ± {ci:.3f}"
    return text + (f" (n={n:g})" if n is not None else "")


def scores_section(rows: list[dict], model: str, sources: list[str | Path] = ()) -> str:
    """Markdown: one line per score of `model`, a column for it and one per baseline (kind "baseline")."""
    models = sorted({r["model"] for r in rows})
    if model not in models:
        raise UserError(f"--scores: no rows for model {model!r} (--scores-model); the scores have "
                        f"{', '.join(models) or 'no models'}")
    baselines = sorted({r["model"] for r in rows if r.get("kind") == "baseline" and r["model"] != model})
    cells: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r["model"] == model or r["model"] in baselines:
            cells.setdefault(tuple(r.get(k) or "" for k in SCORE_KEYS), {})[r["model"]] = r
    keys = [k for k in cells if model in cells[k]]  # the release's own scores, in their files' order
    header = ["score", f"**{model}** (this model)", *baselines]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in keys:
        label = " / ".join(part for part in key if part)
        lines.append("| " + " | ".join([label, _cell(cells[key][model]), *(_cell(cells[key].get(b))
                                                                           for b in baselines)]) + " |")
    where = f" (from {', '.join(f'`{p}`' for p in sources)})" if sources else ""
    return ("\n## Scores\n\nMean over n runs, ± the half-width of its 95 % interval where the scores give one (over "
            "runs when n >= 2; for one run, that run's own interval: a bootstrap over the test clips, else "
            f"Wilson's), beside the baselines' scores{where}. results/PROTOCOL.md says how they were measured."
            "\n\n" + "\n".join(lines) + "\n\nA task without a row was not scored: the group means and overall "
            "are over the rows shown.\n")


NO_SCORES = ("\n## Scores\n\nNone measured: this card was written without scores (no `--scores`, and no "
             f"rows for it in {DEFAULT_SCORES} then). Evaluate the encoder (`mamclap hear eval`, `mamclap superb eval`, "
             "`mamclap tables`) before relying on it.\n")


# ----------------------------------------------------------------------------------------- provenance


def _log_for(source: Path) -> Path | None:
    """The pretraining run's log.jsonl beside the source (a run's checkpoint.pt, or its encoder/ export)."""
    folders = [source, source.parent] if source.is_dir() else [source.parent]
    if not source.is_dir() and source.parent.name == "encoder":
        folders.append(source.parent.parent)
    return next((f / "log.jsonl" for f in folders if (f / "log.jsonl").is_file()), None)


def losses_line(log: Path) -> str | None:
    """"loss 4.910 -> 1.247, recon 1.322 -> 0.713 (steps 10 -> 1000)" from a log's first and last records."""
    records = []
    for line in log.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and isinstance(r.get("step"), int):
            records.append(r)
    if not records:
        return None
    first, last = records[0], records[-1]
    names = [k for k, v in last.items() if k not in _LOG_FIELDS and isinstance(v, (int, float))
             and isinstance(first.get(k), (int, float))]
    if not names:
        return None
    parts = ", ".join(f"{k} {first[k]:.3f} -> {last[k]:.3f}" for k in names)
    return f"{parts} (steps {first['step']} -> {last['step']}; {_shown(log)})"


def _shown(path: Path) -> str:
    """A path as the card names it: relative to the current directory (a checkout's root) when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _kit_manifest(data: str, source: Path, given: Path | None) -> Path | None:
    """The kit manifest of the corpus `data`: the one given, the kit's own (`<kit>/manifest.json`), or a copy
    `kits/<kit>.manifest.json` in a folder above the source (what a GPU driver's results bring back)."""
    if given is not None:
        if not given.is_file():
            raise UserError(f"--kit-manifest {given}: no such file")
        return given
    if not data:
        return None
    kit = Path(data).parent
    if (kit / "manifest.json").is_file():
        return kit / "manifest.json"
    return next((p for folder in source.resolve().parents if (p := folder / "kits" / f"{kit.name}.manifest.json")
                 .is_file()), None)


def _data_facts(data: str, manifest: Path | None) -> list[tuple[str, str]]:
    """The corpus path, and what its kit's manifest says of it when there is one."""
    facts = [("corpus", f"`{data}`" if data else "unknown")]
    if manifest is None:
        return facts
    try:
        kit = json.loads(manifest.read_text())
        corpus = kit["datasets"]["corpus"]
    except (OSError, ValueError, KeyError, TypeError):
        return facts
    facts.append(("kit", f"{kit.get('kit', '?')} (digest {str(kit.get('digest', '?'))[:12]}; `{_shown(manifest)}`)"))
    for key, label in (("clips", "clips"), ("hours", "hours"), ("bank_ids", "distinct source recordings")):
        if key in corpus:
            facts.append((label, str(corpus[key])))
    return facts


def _batch_fact(train: dict, metadata: dict) -> str:
    """"B per process x A accumulation x W processes = G clips per step; S clips seen", from what is recorded
    (world_size, or clips_seen / step)."""
    per_step = train.get("batch_size", 0) * train.get("accum", 1)
    step, seen, world = metadata.get("step"), metadata.get("clips_seen"), metadata.get("world_size")
    if not world and isinstance(seen, int) and isinstance(step, int) and step > 0 and per_step > 0 \
            and seen % (step * per_step) == 0:
        world = seen // (step * per_step)
    if not isinstance(seen, int) and world and isinstance(step, int):
        seen = per_step * world * step
    text = f"{train.get('batch_size')} per process x {train.get('accum', 1)} accumulation x "
    text += (f"{world} process{'es' if world > 1 else ''} = {per_step * world} clips per step" if world
             else "? processes (not recorded)")
    return text + (f"; {seen:,} clips seen" if isinstance(seen, int) else "")


def training_section(metadata: dict, source: Path, log: Path | None = None, kit_manifest: Path | None = None) -> str:
    """Markdown: the data and the recipe from the training config, and the losses from the run's log (the
    one given, else a log.jsonl beside the source)."""
    train = metadata.get("train_config") if isinstance(metadata.get("train_config"), dict) else {}
    data = str(train.get("data", ""))
    facts = _data_facts(data, _kit_manifest(data, source, kit_manifest))
    if train:
        facts += [("variant", str(train.get("variant"))), ("encoder size", str(train.get("size"))),
                  ("steps", str(train.get("steps"))), ("batch", _batch_fact(train, metadata)),
                  ("learning rate", f"base {train.get('base_lr')} x global batch / 256, "
                                    f"{train.get('warmup_steps')} warm-up steps then cosine"),
                  ("weight decay", str(train.get("weight_decay"))), ("seed", str(train.get("seed"))),
                  ("teacher", f"`{train['teacher']}`" if train.get("teacher") else "none")]
        overrides = train.get("overrides") or []
        if overrides:
            facts.append(("config overrides", ", ".join(f"{k}={v}" for k, v in overrides)))
    if log is not None and not log.is_file():
        raise UserError(f"--log {log}: no such file")
    log = log or _log_for(source)
    losses = losses_line(log) if log is not None else None
    if losses:
        facts.append(("losses (first -> last logged)", losses))
    rows = "\n".join(f"| {k} | {v} |" for k, v in facts)
    return f"\n## Training data and recipe\n\n| | |\n|---|---|\n{rows}\n"


def release_section(name: str, files: list[dict]) -> str:
    """Markdown: where the release is and its files."""
    sizes = ", ".join(f"{f['name']} ({f['bytes'] / 2**20:.1f} MiB)" for f in files)
    total = sum(f["bytes"] for f in files)
    return (f"\n## This release\n\n`{MODELS_DIR / name}/`: the weights in bfloat16 (loaded as float32), "
            f"{len(files)} safetensors file{'s' if len(files) > 1 else ''}, {total / 2**20:.1f} MiB: {sizes}.\n")


# ------------------------------------------------------------------------------------------- writing


def _source_metadata(encoder: MAMCLAPEncoder, source: Path) -> dict:
    from training.eval.results import source_commit

    return {**(getattr(encoder, "metadata", None) or {}),
            "exported": {"from": str(source), "commit": source_commit(),
                         "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}}


def _card_extra(metadata: dict, source: Path, scores: list[str | Path], scores_model: str | None,
                log: Path | None = None, kit_manifest: Path | None = None) -> tuple[str, list[dict]]:
    """The card's data, recipe and scores sections, and the model's own score rows."""
    extra = training_section(metadata, source, log, kit_manifest)
    if not scores:
        return extra + NO_SCORES, []
    rows = read_scores(scores)
    own = [{k: r.get(k) for k in ("metric", "mean", "ci95", "n") if r.get(k) not in (None, "")}
           for r in rows if r["model"] == scores_model and not r.get("task")]
    return extra + scores_section(rows, scores_model, scores), own


def overall_score(rows: list[dict]) -> float | None:
    """The HEAR overall mean (the leaderboard's "overall": the mean of the group means) among score rows."""
    return next((m for r in rows if str(r.get("metric", "")).lower() == "overall"
                 and (m := _number(str(r.get("mean", "")))) is not None), None)


def _check_better(new: list[dict], olds: list[Path]) -> None:
    """A release replaces another only when its overall score is at least the other's (as its encoder.json
    records it); one with no recorded overall score may be replaced by any."""
    mine = overall_score(new)
    for old in olds:
        theirs = overall_score((read_metadata(old).get("release") or {}).get("scores") or [])
        if theirs is None:
            continue
        if mine is None or mine < theirs:
            raise UserError(f"{old} scores {theirs:.4f} overall; this encoder "
                            + ("has no overall score (--scores, --scores-model)" if mine is None else
                               f"scores {mine:.4f}") + ": a release is replaced only by a better one (remove "
                            f"{old} by hand if its score no longer compares)")


def write_release(source: str | Path, name: str = RELEASE_NAME, models_dir: str | Path = MODELS_DIR,
                  scores: list[str | Path] = (), scores_model: str | None = None, replace: bool = False,
                  log: str | Path | None = None, kit_manifest: str | Path | None = None) -> Path:
    """Write models_dir/name from an export or checkpoint (see the module docstring); returns the folder.
    scores_model: the source's model name in the scores (default: name). replace: remove the release
    already in models_dir once the new one is in place. log, kit_manifest: the run's log.jsonl and its
    kit's manifest for the card, when they are not beside the source."""
    source, models_dir = Path(source), Path(models_dir)
    if not NAME.fullmatch(name):
        raise UserError(f"--name {name!r}: a folder name of letters, digits, '.', '_' and '-' is expected")
    others = [p for p in release_dirs(models_dir) if p.name != name]
    if others and not replace:
        raise UserError(f"{models_dir} already holds the release {', '.join(p.name for p in others)}; a release "
                        "replaces the old one, never sits beside it: pass --replace to remove it")
    encoder = load_encoder(source)
    need = bf16_bytes(encoder)
    if need > MAX_RELEASE_BYTES:
        raise UserError(f"{source}: the encoder takes {need / 2**20:.1f} MiB in bfloat16, over the release limit "
                        f"of {MAX_RELEASE_BYTES / 2**20:g} MiB; release a smaller encoder (a ViT-S takes ~41 MiB)")
    metadata = _source_metadata(encoder, source)
    extra, own = _card_extra(metadata, source, list(scores), scores_model or name,  # refuses bad scores first
                             Path(log) if log else None, Path(kit_manifest) if kit_manifest else None)
    target = models_dir / name
    _check_better(own, release_dirs(models_dir))  # the one in place, under this name or another
    metadata["release"] = {"name": name, "scores_model": scores_model or name, "scores": own}
    atomic.remove_stale(target)
    with atomic.directory(target) as tmp:
        export_encoder(encoder, tmp, metadata=metadata, dtype=torch.bfloat16, max_shard_bytes=MAX_SHARD_BYTES)
        files = json.loads((tmp / CONFIG_NAME).read_text())["weights"]["files"]
        atomic.write_text(tmp / CARD_NAME, model_card(encoder, metadata, release_section(name, files) + extra,
                                                      location=str(MODELS_DIR / name)))
        total = sum(p.stat().st_size for p in tmp.iterdir())
        if total > MAX_RELEASE_BYTES:
            raise UserError(f"{target}: {total / 2**20:.1f} MiB in all, over the release limit of "
                            f"{MAX_RELEASE_BYTES / 2**20:g} MiB; release a smaller encoder")
        _check_round_trip(encoder, tmp)
    for old in others:
        shutil.rmtree(old)
    return target


def _check_round_trip(encoder: MAMCLAPEncoder, folder: Path) -> None:
    """The written release loads to the source's weights rounded to bfloat16, before it is renamed in place."""
    loaded = load_encoder(folder).state_dict()
    for key, value in encoder.state_dict().items():
        want = value.to(torch.bfloat16).float() if value.is_floating_point() else value
        if not torch.equal(loaded[key], want):
            raise RuntimeError(f"{folder}: {key} does not read back as written")


def write_export(source: str | Path, out: str | Path, scores: list[str | Path] = (),
                 scores_model: str | None = None, log: str | Path | None = None,
                 kit_manifest: str | Path | None = None) -> Path:
    """A float32 single-file export of source with a model card, in out (its files replaced one by one)."""
    from hear_mamclap.hub import save_pretrained

    source, out = Path(source), Path(out)
    encoder = load_encoder(source)
    metadata = _source_metadata(encoder, source)
    extra, _own = _card_extra(metadata, source, list(scores), scores_model or out.name,
                              Path(log) if log else None, Path(kit_manifest) if kit_manifest else None)
    return save_pretrained(encoder, out, metadata=metadata, card_extra=extra)


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="an encoder export with a model card, or the repository's release",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="encoder export folder, its encoder.safetensors, or a pretraining checkpoint.pt")
    p.add_argument("--out", type=Path, help="write a float32 export with a model card here (without --release)")
    p.add_argument("--release", action="store_true",
                   help=f"write the release: MODELS_DIR/NAME in bfloat16, files <= {MAX_SHARD_BYTES // 2**20} MiB, "
                        f"<= {MAX_RELEASE_BYTES // 2**20} MiB in all")
    p.add_argument("--name", default=RELEASE_NAME,
                   help="the release's folder name (with --release; default: %(default)s)")
    p.add_argument("--models-dir", type=Path, default=MODELS_DIR,
                   help="where releases live (with --release; default: %(default)s)")
    p.add_argument("--replace", action="store_true", help="remove the release already there (with --release)")
    scores = p.add_mutually_exclusive_group()
    scores.add_argument("--scores", nargs="+", metavar="FILE",
                        help=f"scores for the card: scores CSVs (model, kind, metric, mean, ci95, n) or results "
                             f"JSONs/folders (default: {DEFAULT_SCORES} when it exists)")
    scores.add_argument("--no-scores", action="store_true", help="a card without scores (it says none were measured)")
    p.add_argument("--scores-model", metavar="MODEL",
                   help="this encoder's model name in the scores (default: the release name, or --out's name)")
    p.add_argument("--log", type=Path, help="the run's log.jsonl for the card's losses (default: one beside MODEL)")
    p.add_argument("--kit-manifest", type=Path,
                   help="the training kit's manifest.json for the card's data (default: the kit's own, or a "
                        "kits/<kit>.manifest.json above MODEL)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    if args.no_scores:
        args.scores = []
    elif args.scores is None:
        args.scores = [DEFAULT_SCORES] if DEFAULT_SCORES.is_file() else []
        model = args.scores_model or (args.name if args.release else Path(args.out or ".").name)
        if args.scores and model not in {r["model"] for r in read_scores(args.scores)}:
            # the main table scores the experiment's models, not every encoder one exports
            print(f"mamclap export: {DEFAULT_SCORES} has no rows for {model!r}: a card without scores "
                  "(--scores and --scores-model to give some)", flush=True)
            args.scores = []
        if args.scores:
            print(f"mamclap export: scores from {DEFAULT_SCORES} (--scores, --no-scores to choose)", flush=True)
    if args.release == (args.out is not None):
        raise UserError("give either --release (results/models/NAME) or --out DIR")
    if not args.release:
        given = [f"--{f.replace('_', '-')}" for f in ("name", "models_dir", "replace")
                 if getattr(args, f) not in (RELEASE_NAME, MODELS_DIR, False)]
        if given:
            raise UserError(f"{', '.join(given)} go with --release")
        print(f"wrote {write_export(args.model, args.out, args.scores, args.scores_model, args.log, args.kit_manifest)}")
        return 0
    folder = write_release(args.model, args.name, args.models_dir, args.scores, args.scores_model, args.replace,
                           args.log, args.kit_manifest)
    total = sum(p.stat().st_size for p in folder.iterdir())
    print(f"wrote {folder}: {len(list(folder.glob('*.safetensors')))} weight files, {total / 2**20:.1f} MiB")
    return 0
