"""Build a whole kit: source bank -> mini HEAR suite + SUPERB layouts -> pretraining corpus -> manifest, cards.

``build_kit("medium", seed=0, data_dir, cache_dir)`` writes ``<data_dir>/kit-medium-s0/`` (with
``corpus_clips=8000``, ``kit-medium-s0-c8000/``: the same but for a corpus of 8000 clips)::

    hear/<task>-v1.0-full/      the mini HEAR suite (training.kit.hear_suite), + stage.json (its manifest)
    superb/speech_commands/     SUPERB layouts (training.kit.superb_layouts), + stage.json
    superb/voxceleb1/
    corpus/shard-*.tar          pretraining corpus (training.kit.corpus), corpus.json, class_labels_indices.csv
    audioset/                   optional: the corpus in AudioSet's layout
    finetune/                   optional: the fine-tuning sets in their real layouts (training.kit.finetune_layouts)
    files.sha256                sha256 of every data file (what `mamclap data check` re-verifies)
    manifest.json               sources (Debian packages, versions, licences), counts, hours, timings,
                                skipped files with reasons, and the no-overlap check
    cards/<data set>.md         one data card per data set

The corpus leaves out every bank clip that an evaluation TEST split uses (every fold of a k-fold task is a
test split) and every clip of a held-out group (voice, soundfont, kit or source file that a task holds
out). The build then checks that the corpus's bank ids and the test bank ids do not intersect and fails
loudly if they do.

Each stage writes into a temporary folder and renames it when complete (the corpus resumes shard by
shard), so an interrupted build leaves no half-written stage, and a rerun skips complete stages. The HEAR
tasks and SUPERB layouts render side by side on the workers, then the corpus shards do; the files do not
depend on the number of workers. The corpus cannot start earlier: which bank clips it must leave out is
known only once the evaluation clips are rendered (their draws depend on the rendered audio's lengths, and
mini_dcase keeps an event only where it is audible).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import soundfile as sf

from hear_mamclap import atomic
from training.kit import corpus as corpus_mod
from training.kit import pool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KitSize:
    """One row of the size table; the HEAR and SUPERB modules keep their own per-size counts by name."""

    name: str
    corpus: corpus_mod.CorpusConfig
    purpose: str


SIZES: dict[str, KitSize] = {s.name: s for s in (
    KitSize("tiny", corpus_mod.CorpusConfig(clips=32, clip_seconds=4.0, shard_clips=8),
            "tests: the whole build in seconds"),
    KitSize("small", corpus_mod.CorpusConfig(clips=720, clip_seconds=10.0, shard_clips=60),
            "CPU demo: 2 hours of corpus, minutes to build"),
    KitSize("medium", corpus_mod.CorpusConfig(clips=19200, clip_seconds=10.0, shard_clips=200),
            "GPU pretraining: 53.3 hours of corpus, realistic HEAR task sizes"),
)}


class OverlapError(RuntimeError):
    """The corpus uses bank clips that an evaluation test split uses."""


def data_root() -> Path:
    """$MAMCLAP_DATA, else data/ in the current directory; absolute, so links and subprocesses that run
    elsewhere still find it."""
    return Path(os.environ.get("MAMCLAP_DATA") or "data").absolute()


def cache_root() -> Path:
    """$MAMCLAP_CACHE, else cache/ in the current directory (absolute, as data_root)."""
    return Path(os.environ.get("MAMCLAP_CACHE") or "cache").absolute()


def kit_dir(size: str, seed: int, data_dir: Path, corpus_clips: int | None = None, corpus_bank: bool = False) -> Path:
    """data_dir/kit-<size>-s<seed>, or kit-<size>-s<seed>-c<N> for a corpus of N clips other than the size's;
    a "-cb" suffix when the corpus comes from a corpus bank (training/kit/corpus_bank.py)."""
    standard = corpus_clips is None or (size in SIZES and corpus_clips == SIZES[size].corpus.clips)
    suffix = ("" if standard else f"-c{corpus_clips}") + ("-cb" if corpus_bank else "")
    return Path(data_dir) / f"kit-{size}-s{seed}{suffix}"


def corpus_config(size: str, corpus_clips: int | None = None) -> corpus_mod.CorpusConfig:
    """The size's corpus recipe, with corpus_clips clips when given (the shards keep their size and seeds,
    so such a corpus begins with the same clips as the standard one)."""
    cfg = SIZES[size].corpus
    if corpus_clips is None:
        return cfg
    if corpus_clips < 1:
        raise ValueError(f"corpus_clips must be >= 1, got {corpus_clips}")
    return replace(cfg, clips=corpus_clips)


def load_records(bank_dir: Path) -> list[dict]:
    """The bank index (bank.load_bank when the bank module is there; the same JSONL otherwise)."""
    index = Path(bank_dir) / "index.jsonl"
    if not index.is_file():
        raise FileNotFoundError(f"no source bank index at {index}: run `mamclap data bank` first")
    try:
        from training.kit.bank import load_bank
    except ImportError:
        return [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
    return load_bank(bank_dir)


def _write_json(path: Path, obj: object) -> None:
    atomic.write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=str))


def run_stage(kit: Path, name: str, build: Callable[[Path], dict]) -> tuple[dict, bool]:
    """Run build(tmp_dir) -> result unless kit/name/stage.json exists; returns (result, was_cached)."""
    final, done = kit / name, kit / name / "stage.json"
    if done.is_file():
        return json.loads(done.read_text()), True
    atomic.remove_stale(final)  # left by an interrupted run
    with atomic.directory(final) as tmp:
        result = build(tmp)
        _write_json(tmp / "stage.json", result)
    return result, False


def _unit_values(rec: dict) -> set[str]:
    """The names a task may use for a record's generalisation unit (group, voice, soundfont, kit)."""
    lab = rec.get("labels") or {}
    return {str(v) for v in (rec.get("group"), lab.get("speaker"), lab.get("soundfont"), lab.get("kit")) if v}


def evaluation_holdout(hear: dict, superb: dict, records: list[dict]) -> dict:
    """Bank ids the corpus must not use: {"test_ids", "heldout_units", "heldout_ids"} (sets).

    test_ids: ids in any test split (for k-fold tasks, any fold); heldout_ids: ids of records whose group,
    voice, soundfont or kit is a held-out unit of some task.
    """
    test_ids: set[str] = set()
    units: set[str] = set()
    for task, entry in hear.items():
        if not isinstance(entry, dict) or "held_out_by" not in entry:
            continue  # e.g. skipped_bank_clips
        for split, ids in entry.items():
            if split == "test" or split.startswith("fold"):
                test_ids.update(ids)
        units.update(entry.get("heldout_groups", []))
    for name, entry in superb.items():
        if not isinstance(entry, dict) or "test" not in entry:
            continue
        test_ids.update(entry["test"])
        units.update((entry.get("voices") or {}).get("test", []))
    heldout_ids = {r["id"] for r in records if _unit_values(r) & units}
    return {"test_ids": test_ids, "heldout_units": units, "heldout_ids": heldout_ids}


def check_no_overlap(corpus_ids: set[str] | list[str], test_ids: set[str] | list[str]) -> dict:
    """The no-overlap check; raises OverlapError naming the shared bank ids if there are any."""
    shared = sorted(set(corpus_ids) & set(test_ids))
    if shared:
        raise OverlapError(f"the corpus uses {len(shared)} bank clips of evaluation test splits, e.g. "
                           f"{shared[:5]}: the kit would leak test material into pretraining")
    return {"corpus_bank_ids": len(set(corpus_ids)), "test_bank_ids": len(set(test_ids)), "intersection": []}


DATA_DIRS = ("hear", "superb", "corpus", "audioset", "finetune")


def data_files(kit: Path) -> list[Path]:
    """Every data file of a kit, sorted (stage.json and corpus.json hold build logs, not data)."""
    out = []
    for d in DATA_DIRS:
        if (kit / d).is_dir():
            out += [p for p in (kit / d).rglob("*") if p.is_file() and p.name not in ("stage.json", "corpus.json")]
    return sorted(out)


def write_checksums(kit: Path) -> str:
    """Write kit/files.sha256 (sha256sum format); returns the sha256 of that listing (the kit digest)."""
    lines = [f"{atomic.sha256_file(p)}  {p.relative_to(kit).as_posix()}\n" for p in data_files(kit)]
    text = "".join(lines)
    atomic.write_text(kit / "files.sha256", text)
    return hashlib.sha256(text.encode()).hexdigest()


def packages(records: list[dict]) -> list[dict]:
    """[{"package", "version", "license", "clips"}] over the records' sources."""
    by: dict[str, dict] = {}
    for r in records:
        src = r.get("source") or {}
        name = src.get("package") or "unknown"
        entry = by.setdefault(name, {"package": name, "version": src.get("version"), "license": src.get("license"),
                                     "synth": set(), "clips": 0})
        entry["clips"] += 1
        if src.get("synth"):
            entry["synth"].add(src["synth"])
    return [dict(v, synth=sorted(v["synth"])) for _, v in sorted(by.items())]


CATEGORIES = ("speech", "music", "drum", "env", "noise")  # the bank's kinds


def sources_by_category(ids: set[str] | list[str], by_id: dict[str, dict]) -> dict[str, dict]:
    """Per bank kind: the distinct source recordings (bank clips) among ids, their hours (each counted
    once, however many clips mix it) and their groups (voices, soundfonts, kits or source files)."""
    out = {}
    for kind in CATEGORIES:
        recs = [by_id[i] for i in sorted(set(ids)) if i in by_id and by_id[i]["kind"] == kind]
        seconds = sum(float(r.get("duration") or 0.0) for r in recs)
        out[kind] = {"recordings": len(recs), "hours": round(seconds / 3600, 4),
                     "groups": len({r.get("group") for r in recs})}
    return out


def _wav_seconds(folder: Path) -> tuple[int, float, int]:
    """(files, seconds, bytes) of the audio files under folder."""
    n, seconds, size = 0, 0.0, 0
    for p in sorted(folder.rglob("*")):
        if p.suffix in (".wav", ".flac") and p.is_file():
            info = sf.info(str(p))
            n, seconds, size = n + 1, seconds + info.frames / info.samplerate, size + p.stat().st_size
    return n, seconds, size


def _hear_stats(task_dir: Path) -> dict:
    meta = json.loads((task_dir / "task_metadata.json").read_text())
    splits = {}
    for split in meta["splits"]:
        labels = json.loads((task_dir / f"{split}.json").read_text())
        counts: Counter = Counter()
        for value in labels.values():
            for lab in value:
                counts[lab["label"] if isinstance(lab, dict) else lab] += 1
        splits[split] = {"clips": len(labels), "classes": dict(sorted(counts.items(), key=lambda kv: str(kv[0])))}
    n, seconds, size = _wav_seconds(task_dir)
    return {"path": str(task_dir), "files": n, "hours": round(seconds / 3600, 4), "bytes": size,
            "sample_duration": meta["sample_duration"], "prediction_type": meta["prediction_type"],
            "split_mode": meta["split_mode"], "splits": splits}


def _superb_stats(folder: Path) -> dict:
    classes: dict[str, Counter] = {}
    for p in sorted(folder.rglob("*.wav")):
        rel = p.relative_to(folder).parts
        split = rel[0]
        label = rel[1] if folder.name == "speech_commands" else rel[-3] if len(rel) >= 3 else "?"
        classes.setdefault(split, Counter())[label] += 1
    n, seconds, size = _wav_seconds(folder)
    return {"path": str(folder), "files": n, "hours": round(seconds / 3600, 4), "bytes": size,
            "splits": {s: {"clips": sum(c.values()), "classes": dict(sorted(c.items()))} for s, c in classes.items()}}


def _ids_of(entry: dict) -> set[str]:
    return {i for k, v in entry.items() if (k in ("train", "valid", "test") or k.startswith("fold"))
            and isinstance(v, list) for i in v}


def build_kit(size: str, seed: int, data_dir: Path | None = None, cache_dir: Path | None = None, workers: int = 2,
              audioset_layout: bool = False, bank_dir: Path | None = None, progress: bool = True,
              finetune_layouts: bool = False, corpus_clips: int | None = None, corpus_bank: Path | None = None,
              corpus_only: bool = False) -> dict:
    """Build (or finish, or reuse) data_dir/kit-<size>-s<seed>/; returns the manifest.

    workers: processes for the bank, the HEAR tasks and SUPERB layouts (rendered side by side) and the
    corpus shards; the files are the same for any number.
    bank_dir: the source bank (default data_dir/bank; built there from cache_dir when missing).
    finetune_layouts: also write finetune/ (AudioSet, ESC-50 and Speech Commands V2 in their own layouts).
    corpus_clips: a corpus of this many clips instead of the size's, in kit-<size>-s<seed>-c<N>/ (the same
    HEAR suite, SUPERB layouts and held-out material as the standard kit).
    corpus_bank: mix the corpus from this corpus bank (training/kit/corpus_bank.py, made for this size and
    seed) instead of the bank, in a folder ending "-cb"; the HEAR suite and SUPERB layouts still come from the
    bank, and the no-overlap check covers the corpus bank's records too.
    corpus_only: with corpus_bank, build the corpus alone (no bank needed; returns corpus.json's summary, writes
    no manifest): a later full build reuses it and runs the checks (a GPU node that gets the corpus bank
    before the bank).
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {list(SIZES)}, got {size!r}")
    from training.kit import superb_layouts
    from training.kit.hear_suite import build_hear_suite

    data_dir = Path(data_dir) if data_dir is not None else data_root()
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
    bank_dir = Path(bank_dir) if bank_dir is not None else data_dir / "bank"
    cfg = corpus_config(size, corpus_clips)
    kit = kit_dir(size, seed, data_dir, corpus_clips, corpus_bank is not None)
    kit.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float | str] = {}
    cb_records: list[dict] = []
    if corpus_bank is not None:
        cb_records = load_records(Path(corpus_bank))
        cb_meta = json.loads((Path(corpus_bank) / "bank.json").read_text())
        # made for this size and seed (any corpus size: they share the holdout, which the digest checks below)
        if cb_meta.get("kind") != "corpus bank" or not re.fullmatch(rf"kit-{size}-s{seed}(-c\d+)?",
                                                                     str(cb_meta.get("kit"))):
            raise ValueError(f"{corpus_bank}: expected a corpus bank made for kit-{size}-s{seed} "
                             f"(`mamclap data corpus-bank --size {size} --seed {seed}`), got one for "
                             f"{cb_meta.get('kit')!r}")
    if corpus_only:
        if corpus_bank is None:
            raise ValueError("corpus_only needs a corpus bank (its records are the corpus's)")
        if (kit / "corpus" / "corpus.json").is_file():
            return json.loads((kit / "corpus" / "corpus.json").read_text())
        return corpus_mod.build_corpus(cb_records, Path(corpus_bank), kit / "corpus", cfg, seed, set(), workers,
                                       progress)

    t0 = time.time()
    if (bank_dir / "index.jsonl").is_file():
        timings["bank"] = "cached"
    else:
        from training.kit.bank import build_bank
        log.info("building the source bank in %s", bank_dir)
        build_bank(bank_dir, cache_dir, seed=0, workers=workers)
        timings["bank"] = round(time.time() - t0, 2)
    records = load_records(bank_dir)
    by_id = {r["id"]: r for r in records}

    def timed(name: str, build: Callable[[Path], dict]) -> dict:
        t = time.time()
        result, cached = run_stage(kit, name, build)
        timings[name] = "cached" if cached else round(time.time() - t, 2)
        log.info("stage %s: %s", name, timings[name])
        return result

    # The HEAR tasks and the SUPERB layouts render side by side on one pool of workers; each stage still
    # becomes complete (its folder renamed into place) on its own.
    jobs = {"hear": 9, "superb": 2}
    todo = sum(n for name, n in jobs.items() if not (kit / name / "stage.json").is_file())
    t = time.time()
    with pool.process_pool(min(workers, todo)) if workers > 1 and todo > 1 else nullcontext() as ex:
        def hear_stage(out: Path) -> dict:
            return build_hear_suite(records, out, size, seed, bank_dir=bank_dir, executor=ex)

        def superb_stage(out: Path) -> dict:
            return superb_layouts.build_superb(records, out, size, seed, bank_dir=bank_dir, executor=ex)

        if ex is None:
            hear, superb = timed("hear", hear_stage), timed("superb", superb_stage)
        else:
            with ThreadPoolExecutor(2) as stages:
                superb_run = stages.submit(timed, "superb", superb_stage)
                hear_run = stages.submit(timed, "hear", hear_stage)
                hear, superb = hear_run.result(), superb_run.result()
    if todo:
        timings["hear+superb"] = round(time.time() - t, 2)

    holdout = evaluation_holdout(hear, superb, records + cb_records)
    exclude = holdout["test_ids"] | holdout["heldout_ids"]
    if corpus_bank is not None:
        from training.kit.corpus_bank import holdout_digest
        base_holdout = evaluation_holdout(hear, superb, records)
        if holdout_digest(base_holdout) != cb_meta.get("holdout_digest"):
            raise ValueError(f"{corpus_bank} was made for another holdout than this kit's (another bank or kit "
                             "version): rebuild it with `mamclap data corpus-bank`")
        by_id.update({r["id"]: r for r in cb_records})
    t = time.time()
    corpus_dir = kit / "corpus"
    if (corpus_dir / "corpus.json").is_file():
        corpus = json.loads((corpus_dir / "corpus.json").read_text())
        timings["corpus"] = "cached"
    else:
        corpus = corpus_mod.build_corpus(cb_records or records, Path(corpus_bank or bank_dir), corpus_dir, cfg, seed,
                                         exclude, workers, progress)
        timings["corpus"] = round(time.time() - t, 2)
    overlap = check_no_overlap(corpus["bank_ids"], holdout["test_ids"] | holdout["heldout_ids"])

    if audioset_layout:
        t = time.time()
        if (kit / "audioset" / "unbalanced_train_segments.csv").is_file():
            timings["audioset"] = "cached"
        else:
            corpus_mod.write_audioset_layout(corpus_dir, kit / "audioset", progress)
            timings["audioset"] = round(time.time() - t, 2)

    finetune = None
    if finetune_layouts or (kit / "finetune" / "stage.json").is_file():
        from training.kit.finetune_layouts import build_finetune_layouts
        finetune = timed("finetune", lambda out: build_finetune_layouts(
            records, out, size, seed, bank_dir, corpus_dir, cfg, exclude, superb))
        check_no_overlap(corpus["bank_ids"], finetune["test_ids"])

    t = time.time()
    digest = write_checksums(kit)
    timings["checksums"] = round(time.time() - t, 2)

    available = Counter(r["kind"] for r in (cb_records or records) if r["id"] not in exclude)
    datasets: dict[str, dict] = {}
    for task, entry in hear.items():
        if isinstance(entry, dict) and "held_out_by" in entry:
            stats = _hear_stats(kit / "hear" / f"{task}-v1.0-full")
            stats.update(held_out_by=entry["held_out_by"], bank_ids=len(_ids_of(entry)),
                         heldout_groups=len(entry.get("heldout_groups", [])))
            datasets[f"hear/{task}"] = (stats, _ids_of(entry))
    for name, entry in superb.items():
        if isinstance(entry, dict) and (kit / "superb" / name).is_dir():
            datasets[f"superb/{name}"] = (_superb_stats(kit / "superb" / name), _ids_of(entry))
    corpus_stats = {"path": str(corpus_dir), "clips": corpus["clips"], "hours": corpus["hours"],
                    "shards": corpus["shards"], "bytes": sum(p.stat().st_size for p in corpus_dir.glob("shard-*.tar")),
                    "clip_seconds": corpus["clip_seconds"], "labels": corpus["labels"],
                    "parts_per_clip": corpus["parts_per_clip"], "bank_ids": len(corpus["bank_ids"]),
                    "sources_by_category": sources_by_category(corpus["bank_ids"], by_id)}
    datasets["corpus"] = (corpus_stats, set(corpus["bank_ids"]))
    if (kit / "audioset").is_dir():
        datasets["audioset"] = ({"path": str(kit / "audioset"), "clips": corpus["clips"],
                                 "note": "the corpus in AudioSet's layout"}, set(corpus["bank_ids"]))
    if finetune is not None:
        for name, entry in finetune.items():
            if isinstance(entry, dict):
                stats = {k: v for k, v in entry.items() if isinstance(v, (int, float, str))}
                datasets[f"finetune/{name}"] = ({"path": str(kit / "finetune" / name), **stats},
                                                set(entry.get("test", [])) | set(entry.get("train", [])))

    bank_meta = json.loads((bank_dir / "bank.json").read_text()) if (bank_dir / "bank.json").is_file() else {}
    manifest = {
        "kit": kit.name, "size": size, "seed": seed, "purpose": SIZES[size].purpose, "digest": digest,
        "corpus_clips": cfg.clips, "standard_corpus_clips": SIZES[size].corpus.clips,
        "bank": {"path": str(bank_dir), "clips": len(records), "version": bank_meta.get("version"),
                 "counts": dict(sorted(Counter(r["kind"] for r in records).items())),
                 "skipped": bank_meta.get("skipped", {})},
        **({"corpus_bank": {"path": str(corpus_bank), "clips": len(cb_records), "version": cb_meta.get("version"),
                            "counts": dict(sorted(Counter(r["kind"] for r in cb_records).items())),
                            "plan": cb_meta.get("plan"), "holdout_digest": cb_meta.get("holdout_digest")}}
           if corpus_bank is not None else {}),
        "sources": packages(records),
        "datasets": {name: dict(stats, sources=sorted({p["package"] for p in packages([by_id[i] for i in ids if i in by_id])}))
                     for name, (stats, ids) in datasets.items()},
        "timings_s": timings,
        "skipped": {"hear": hear.get("skipped_bank_clips", {}), "superb": superb.get("skipped_bank_clips", {}),
                    "corpus": corpus.get("skipped_bank_clips", {})},
        "no_overlap": dict(overlap, heldout_units=sorted(holdout["heldout_units"]),
                           excluded_bank_ids=len(exclude), corpus_available_by_kind=dict(sorted(available.items()))),
    }
    missing = sorted(set(corpus_mod.FOREGROUND_KINDS) - {k for k, v in available.items() if v})
    if missing:
        manifest["warnings"] = [f"the corpus has no {k} clips: all are held out for evaluation" for k in missing]
        log.warning("%s", manifest["warnings"])
    write_cards(kit, manifest, by_id, datasets)
    _write_json(kit / "manifest.json", manifest)
    return manifest


def write_cards(kit: Path, manifest: dict, by_id: dict[str, dict], datasets: dict[str, tuple[dict, set]]) -> None:
    """cards/<data set>.md: sources with licences, class counts, durations, splits."""
    command = f"mamclap data build --size {manifest['size']} --seed {manifest['seed']}"
    if manifest["corpus_clips"] != manifest["standard_corpus_clips"]:
        command += f" --corpus-clips {manifest['corpus_clips']}"
    atomic.remove_stale(kit / "cards")
    with atomic.directory(kit / "cards") as tmp:
        for name, (stats, ids) in datasets.items():
            lines = [f"# {name} ({manifest['kit']})", "",
                     f"Built by `{command}` from the "
                     "mamclap source bank (Debian data packages and synthesizers; no downloads from elsewhere).", "",
                     f"- path: `{stats.get('path')}`"]
            if name == "corpus" and manifest["corpus_clips"] != manifest["standard_corpus_clips"]:
                lines.append(f"- not the standard {manifest['size']} corpus: {manifest['corpus_clips']} clips instead "
                             f"of {manifest['standard_corpus_clips']} (the same HEAR suite, SUPERB layouts and "
                             "held-out material)")
            for key in ("clips", "files", "hours", "bytes", "shards", "clip_seconds", "sample_duration",
                        "prediction_type", "split_mode", "held_out_by", "bank_ids", "heldout_groups"):
                if key in stats:
                    lines.append(f"- {key.replace('_', ' ')}: {stats[key]}")
            lines += ["", "## Sources", "", "| Debian package | version | licence | synthesizer | bank clips used |",
                      "|---|---|---|---|---|"]
            for p in packages([by_id[i] for i in sorted(ids) if i in by_id]):
                lines.append(f"| {p['package']} | {p['version']} | {p['license']} | {', '.join(p['synth']) or '-'} "
                             f"| {p['clips']} |")
            if "splits" in stats:
                lines += ["", "## Splits and class counts", ""]
                for split, s in stats["splits"].items():
                    classes = ", ".join(f"{k}: {v}" for k, v in s["classes"].items())
                    lines.append(f"- **{split}** ({s['clips']} clips): {classes}")
            if "labels" in stats:
                lines += ["", "## Tags (clips per ontology class)", "",
                          ", ".join(f"{k}: {v}" for k, v in sorted(stats["labels"].items(), key=lambda kv: -kv[1]))]
            if "sources_by_category" in stats:
                lines += ["", "## Distinct source recordings", "",
                          "Each bank clip counted once, however many corpus clips mix it; groups are voices, "
                          "soundfonts, drum kits or source files.", "",
                          "| category | source recordings | hours | groups |", "|---|---|---|---|"]
                for kind, c in stats["sources_by_category"].items():
                    lines.append(f"| {kind} | {c['recordings']} | {c['hours']} | {c['groups']} |")
            if name == "corpus":
                ov = manifest["no_overlap"]
                lines += ["", "## Held-out material", "",
                          f"{ov['excluded_bank_ids']} bank clips are left out (evaluation test splits and held-out "
                          f"groups); the corpus shares {len(ov['intersection'])} bank clips with them."]
            (tmp / f"{name.replace('/', '-')}.md").write_text("\n".join(lines) + "\n")


def check_kit(kit: Path) -> dict:
    """Re-verify a built kit: no overlap between corpus and test bank ids, and every data file's sha256.

    Raises OverlapError or RuntimeError (listing the bad files); returns a summary when all is well.
    """
    kit = Path(kit)
    for need in ("manifest.json", "files.sha256", "hear/stage.json", "superb/stage.json", "corpus/corpus.json"):
        if not (kit / need).is_file():
            raise FileNotFoundError(f"{kit / need} missing: the kit is incomplete; rerun `mamclap data build`")
    manifest = json.loads((kit / "manifest.json").read_text())
    records = load_records(Path(manifest["bank"]["path"]))
    if manifest.get("corpus_bank"):  # its records' held-out units count too
        records += load_records(Path(manifest["corpus_bank"]["path"]))
    hear = json.loads((kit / "hear" / "stage.json").read_text())
    superb = json.loads((kit / "superb" / "stage.json").read_text())
    holdout = evaluation_holdout(hear, superb, records)
    corpus_ids: set[str] = set()
    for stats in sorted((kit / "corpus").glob("shard-*.tar.stats.json")):
        corpus_ids.update(json.loads(stats.read_text())["bank_ids"])
    overlap = check_no_overlap(corpus_ids, holdout["test_ids"] | holdout["heldout_ids"])
    if (kit / "finetune" / "stage.json").is_file():
        check_no_overlap(corpus_ids, json.loads((kit / "finetune" / "stage.json").read_text())["test_ids"])
    expected = {}
    for line in (kit / "files.sha256").read_text().splitlines():
        digest, rel = line.split("  ", 1)
        expected[rel] = digest
    present = {p.relative_to(kit).as_posix() for p in data_files(kit)}
    bad = sorted(rel for rel in expected if rel not in present or atomic.sha256_file(kit / rel) != expected[rel])
    extra = sorted(present - set(expected))
    if bad or extra:
        raise RuntimeError(f"{kit}: {len(bad)} data files missing or changed (e.g. {bad[:5]}), "
                           f"{len(extra)} unexpected files (e.g. {extra[:5]})")
    return {"kit": kit.name, "files": len(expected), "no_overlap": overlap}
