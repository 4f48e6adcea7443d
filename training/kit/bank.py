"""The source bank: a compact set of real recordings, synthesized utterances and rendered notes, cut from
Debian packages (training/kit/debian.py) by the planners in training/kit/bank_sources.py.

    data/bank/index.jsonl           one record per clip, sorted by id (schema: validate_record)
    data/bank/audio/<kind>/<name>.flac   16 kHz mono 16-bit FLAC, silence trimmed, peak 0.8 full scale
                                         (.opus: Ogg Opus, in the corpus bank of training/kit/corpus_bank.py)
    data/bank/bank.json             seed, counts, skipped sources with reasons, packages and versions

Vocabularies (labels) are those of bank_sources.py:
    speech  language: ISO 639-1 codes of ktuberling (one speaker per language), tuxpaint (one per
            language; phrases), hedgewars (15 voice packs, mostly en); text for ktuberling and
            translated hedgewars packs is the English gloss of the file name. word: KWS_WORDS,
            UNKNOWN_WORDS, ktuberling glosses, single-word hedgewars phrases, or null (phrases).
            voice_type: recorded | synthetic | whisper; gender: male | female | unknown; accent: the
            espeak-ng voice's (british, american, scottish, received_pronunciation, lancastrian,
            west_midlands, caribbean), hedgewars pack styles, or null.
    music   instrument / family: INSTRUMENTS (General MIDI names; families keyboard, mallet, organ, guitar,
            bass, string, vocal, brass, reed, flute, synth_lead); soundfont: SOUNDFONTS; every
            PITCH_STEP-th MIDI pitch in the instrument's range, each soundfont offset by one semitone.
    drum    stroke: STROKE_RULES targets (kick, snare, rimshot, side_stick, closed_hihat, open_hihat,
            pedal_hihat, tom, crash, ride, ride_bell, splash, china, cymbal, clap, cowbell, tambourine,
            shaker, woodblock, clave, conga, bongo, djembe, cajon, agogo, finger_snap); kit: the kit folder.
    env     class: ENV_RULES targets with >= ENV_MIN_FILES source files (with the packages of 2026-11:
            bell, bird, camera, chicken, cow, digging, door, duck, engine, explosion, fire, footsteps,
            glass, gunshot, hammer, horse, insect, mammal, pig, sheep, telephone, water, wolf), at most
            ENV_MAX_S s from the start of each file; detail: footstep material or null; group: the file.
    noise   class: NOISE_RULES targets (birdsong_ambience, night, campfire, ship, stream, lava, fire):
            NOISE_SEGMENT_S pieces of ambience loops; group: the source file.

Same seed, same packages -> byte-identical index.jsonl and audio. A source that cannot be read or
synthesized is skipped and listed in bank.json; the bank is written to a temporary folder and renamed
into place at the end, so an interrupted build leaves the previous bank (or none) and a rerun starts clean.
"""
from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from training.kit import bank_sources
from training.kit.debian import DATA_PACKAGES, SETUP_HINT, SetupError, package_info, tool_versions

log = logging.getLogger(__name__)

BANK_VERSION = 1
SR = 16000
PEAK = 0.8  # every clip is scaled to this peak: the expansion sets levels
TRIM_DB, MARGIN_S, FADE_S = -45.0, 0.03, 0.03
MIN_S = 0.05  # a closed hi-hat or a stick click is this short
KINDS = ("speech", "music", "drum", "env", "noise")
LABEL_KEYS = {
    "speech": ("text", "word", "language", "speaker", "gender", "voice_type", "accent"),
    "music": ("instrument", "family", "midi_pitch", "velocity", "soundfont"),
    "drum": ("stroke", "kit"),
    "env": ("class", "detail"),
    "noise": ("class", "detail"),
}
SOURCE_KEYS = ("package", "version", "license", "file", "synth")


class RenderError(Exception):
    """A source that cannot become a clip (unreadable, empty, silent, synthesis failed)."""


# ---- audio ----

def to_16k_mono(x: np.ndarray, sr: int) -> np.ndarray:
    """(n,) or (n, channels) at sr -> (m,) float32 at 16 kHz."""
    if x.ndim == 2:
        x = x.mean(axis=1)
    if sr != SR:
        g = gcd(int(sr), SR)
        x = resample_poly(x.astype(np.float64), SR // g, int(sr) // g)
    return np.asarray(x, dtype=np.float32)


def finish(x: np.ndarray, cut: bool = False) -> np.ndarray:
    """Trim edge silence (frames under TRIM_DB of the loudest) to a MARGIN_S margin, fade a cut end,
    scale to PEAK; RenderError for empty, non-finite or silent audio."""
    if x.size == 0:
        raise RenderError("empty audio")
    if not np.all(np.isfinite(x)):
        raise RenderError("non-finite samples")
    hop = SR // 100
    n = len(x) // hop
    if n == 0 or np.abs(x).max() < 1e-4:
        raise RenderError("silent")
    rms = np.sqrt((x[: n * hop].reshape(n, hop).astype(np.float64) ** 2).mean(axis=1))  # (frames,)
    loud = np.flatnonzero(rms > rms.max() * 10 ** (TRIM_DB / 20))
    margin = int(MARGIN_S * SR)
    start = max(0, loud[0] * hop - margin)
    end = min(len(x), (loud[-1] + 1) * hop + margin)
    x = x[start:end].astype(np.float64)
    if cut:
        f = min(len(x), int(FADE_S * SR))
        x[-f:] *= np.linspace(1.0, 0.0, f)
    if len(x) < MIN_S * SR:
        raise RenderError(f"shorter than {MIN_S} s after trimming")
    return (x * (PEAK / np.abs(x).max())).astype(np.float32)


def _read_file(path: str, start: float, max_s: float | None) -> tuple[np.ndarray, bool]:
    try:
        with sf.SoundFile(path) as f:
            sr = f.samplerate
            if start:
                f.seek(int(start * sr))
            frames = -1 if max_s is None else int(max_s * sr)
            x = f.read(frames, dtype="float32", always_2d=True)
            cut = max_s is not None and f.tell() < f.frames
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types for bad files
        raise RenderError(f"unreadable: {type(e).__name__}: {e}") from None
    return to_16k_mono(x, sr), cut


def _run_synth(cmd: list[str], wav: Path) -> np.ndarray:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0 or not wav.is_file():
        raise RenderError(f"{cmd[0]} failed ({r.returncode}): {r.stderr.strip()[-300:]}")
    x, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    return to_16k_mono(x, sr)


def _synth(soundfont: str, synths: dict):
    """(synth, soundfont id) for a batch, made once per batch (see _note)."""
    import fluidsynth
    if soundfont not in synths:
        fs = fluidsynth.Synth(gain=0.5, samplerate=float(SR),
                              **{"synth.reverb.active": 0, "synth.chorus.active": 0})  # dry notes
        sfid = fs.sfload(soundfont)
        if sfid < 0:
            raise RenderError(f"fluidsynth cannot load {soundfont}")
        synths[soundfont] = (fs, sfid)
    return synths[soundfont]


def _note(r: dict, synths: dict) -> tuple[np.ndarray, bool]:
    """One soundfont note, (samples, True: the release tail is cut).

    FluidSynth keeps state across notes that system_reset() and all_sounds_off() do not clear (a note
    rendered twice in one synth differs by about -53 dB), so the same note would differ with the order of
    the notes before it. A batch (one soundfont and instrument, fixed order) therefore gets a fresh synth.
    """
    fs, sfid = _synth(r["soundfont"], synths)
    if fs.program_select(0, sfid, 0, r["program"]) != 0:
        raise RenderError(f"no program {r['program']} in {r['soundfont']}")
    fs.noteon(0, r["pitch"], r["velocity"])
    held = fs.get_samples(int(bank_sources.NOTE_HOLD_S * SR))
    fs.noteoff(0, r["pitch"])
    tail = fs.get_samples(int(bank_sources.NOTE_RELEASE_S * SR))
    fs.all_sounds_off(0)
    x = np.concatenate([held, tail]).reshape(-1, 2).astype(np.float32) / 32768.0  # interleaved stereo
    return x.mean(axis=1), True


def _phrase(r: dict, synths: dict) -> tuple[np.ndarray, bool]:
    """A played phrase: r["notes"] = [[onset s, length s, MIDI pitch, velocity], ...] on one program, then a
    release tail. The same fresh-synth-per-batch rule as _note (_batches groups phrases by program)."""
    fs, sfid = _synth(r["soundfont"], synths)
    if fs.program_select(0, sfid, 0, r["program"]) != 0:
        raise RenderError(f"no program {r['program']} in {r['soundfont']}")
    events = sorted([(on, 1, p, v) for on, _, p, v in r["notes"]] + [(on + d, 0, p, 0) for on, d, p, _ in r["notes"]])
    chunks, t = [], 0
    for when, is_on, pitch, velocity in events:  # offs (0) sort before ons (1) at the same instant
        n = int(round(when * SR)) - t
        if n > 0:
            chunks.append(fs.get_samples(n))
            t += n
        fs.noteon(0, pitch, velocity) if is_on else fs.noteoff(0, pitch)
    chunks.append(fs.get_samples(int(bank_sources.NOTE_RELEASE_S * SR)))
    fs.all_sounds_off(0)
    x = np.concatenate(chunks).reshape(-1, 2).astype(np.float32) / 32768.0
    return x.mean(axis=1), True


def render(job: dict, synths: dict | None = None) -> np.ndarray:
    """The finished 16 kHz clip of a job (RenderError when it cannot be made); synths: the batch's
    soundfont synthesizers."""
    r = job["render"]
    if r["op"] == "file":
        x, cut = _read_file(r["path"], r["start"], r["max_s"])
    elif r["op"] in ("espeak", "flite"):
        with tempfile.TemporaryDirectory(prefix="mamclap-synth-") as tmp:
            wav = Path(tmp) / "out.wav"
            if r["op"] == "espeak":
                cmd = ["espeak-ng", "-v", r["voice"], "-p", str(r["pitch"]), "-s", str(r["speed"]),
                       "-w", str(wav), r["text"]]
            else:
                cmd = ["flite", "-voice", r["voice"], "-t", r["text"], "-o", str(wav)]
            try:
                x = _run_synth(cmd, wav)
            except FileNotFoundError:
                raise SetupError(f"{cmd[0]} is not installed: {SETUP_HINT}") from None
        cut = False
    elif r["op"] == "note":
        x, cut = _note(r, {} if synths is None else synths)
    elif r["op"] == "phrase":
        x, cut = _phrase(r, {} if synths is None else synths)
    else:
        raise ValueError(f"unknown render op {r['op']!r}")
    return finish(x, cut)


def _worker_init() -> None:
    """Ctrl-C reaches the whole process group: the workers leave it to the parent, which stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# How a bank stores its clips: the evaluation bank in lossless FLAC; the corpus bank (pretraining only) in Ogg
# Opus at about 30 kbit/s with container overhead (measured on bank clips: FLAC is ~160 kbit/s), so five times
# the audio fits the GPU node's 64 MiB carry. AudioSet itself is lossy.
CODECS = {"flac": {"format": "FLAC", "subtype": "PCM_16"},
          "opus": {"format": "OGG", "subtype": "OPUS", "compression_level": 0.95}}


def _render_batch(jobs: list[dict], tmp_dir: str, codec: str = "flac") -> list[tuple[str, dict | None, str | None]]:
    """Render and write a batch; (id, record, None) or (id, None, reason) per job."""
    out, synths = [], {}
    for job in jobs:
        try:
            x = render(job, synths)
        except RenderError as e:
            out.append((job["id"], None, str(e)))
            continue
        rec = {k: job[k] for k in ("id", "kind", "group", "source", "labels")}
        rec["path"] = f"audio/{job['id']}.{codec}"
        rec["duration"] = round(len(x) / SR, 4)
        pcm = np.round(x * 32767).astype(np.int16)
        sf.write(str(Path(tmp_dir) / rec["path"]), pcm, SR, **CODECS[codec])
        out.append((job["id"], rec, None))
    for fs, _ in synths.values():
        fs.delete()
    return out


# ---- planning and building ----

def plan(cache_dir: Path, seed: int, limit: int | None = None,
         sources: tuple[str, ...] | None = None) -> tuple[list[dict], list[dict]]:
    """(jobs sorted by id, skipped sources). limit: at most this many jobs per planner, evenly spread
    over its plan (a small but still varied bank, for tests); sources: planner names to run."""
    jobs, skipped = [], []
    for k, (name, planner) in enumerate(bank_sources.PLANNERS.items()):
        if sources is not None and name not in sources:
            continue
        got = planner(Path(cache_dir), np.random.default_rng([seed, k]), skipped)
        if limit is not None and len(got) > limit:
            got = [got[i] for i in np.unique(np.linspace(0, len(got) - 1, limit).round().astype(int))]
        jobs += got
    ids = Counter(j["id"] for j in jobs)
    dup = [i for i, c in ids.items() if c > 1]
    if dup:
        raise RuntimeError(f"planners gave duplicate bank ids, e.g. {dup[:5]}")
    return sorted(jobs, key=lambda j: j["id"]), skipped


def _batches(jobs: list[dict], size: int = 32) -> list[list[dict]]:
    """Jobs in batches of `size`; the notes of one soundfont and instrument form one batch whatever their
    number (each batch renders them in a fresh synth, see _note)."""
    groups = defaultdict(list)
    for j in jobs:
        r = j["render"]
        groups[(r["op"], r.get("soundfont", ""), r.get("program", -1))].append(j)
    batches = []
    for (op, _, _), group in sorted(groups.items()):
        if op in ("note", "phrase"):
            batches.append(group)
        else:
            batches += [group[i: i + size] for i in range(0, len(group), size)]
    return batches


def summarize(records: list[dict]) -> dict:
    """Counts per kind and per label, for bank.json and the report."""
    by = defaultdict(list)
    for r in records:
        by[r["kind"]].append(r)
    sp = by["speech"]
    kws = [r for r in sp if r["labels"]["word"] in bank_sources.KWS_WORDS]
    unknown = [r for r in sp if r["labels"]["word"] in bank_sources.UNKNOWN_WORDS]
    return {
        "clips": {k: len(by[k]) for k in KINDS},
        "seconds": {k: round(sum(r["duration"] for r in by[k]), 1) for k in KINDS},
        "speech": {
            "speakers": len({r["labels"]["speaker"] for r in sp}),
            "utterances_per_speaker_min": min(Counter(r["labels"]["speaker"] for r in sp).values(), default=0),
            "languages": dict(sorted(Counter(r["labels"]["language"] for r in sp).items())),
            "recorded_languages": dict(sorted(Counter(r["labels"]["language"] for r in sp
                                                      if r["labels"]["voice_type"] == "recorded").items())),
            "keyword_clips": len(kws), "keyword_voices": len({r["labels"]["speaker"] for r in kws}),
            "unknown_words": len({r["labels"]["word"] for r in unknown}), "unknown_clips": len(unknown),
            "voice_types": dict(Counter(r["labels"]["voice_type"] for r in sp)),
        },
        "music": {"instruments": dict(sorted(Counter(r["labels"]["instrument"] for r in by["music"]).items())),
                  "families": dict(sorted(Counter(r["labels"]["family"] for r in by["music"]).items())),
                  "soundfonts": dict(sorted(Counter(r["labels"]["soundfont"] for r in by["music"]).items())),
                  "pitches": len({r["labels"]["midi_pitch"] for r in by["music"]})},
        "drum": {"strokes": dict(sorted(Counter(r["labels"]["stroke"] for r in by["drum"]).items())),
                 "kits": len({r["labels"]["kit"] for r in by["drum"]})},
        "env": {c: len({r["group"] for r in by["env"] if r["labels"]["class"] == c})
                for c in sorted({r["labels"]["class"] for r in by["env"]})},
        "noise": dict(sorted(Counter(r["labels"]["class"] for r in by["noise"]).items())),
    }


def _check_tools(ops: set[str]) -> None:
    """SetupError before any work when a synthesizer the plan needs is missing."""
    for op, exe in (("espeak", "espeak-ng"), ("flite", "flite")):
        if op in ops and shutil.which(exe) is None:
            raise SetupError(f"{exe} is not installed: {SETUP_HINT}")
    if ops & {"note", "phrase"}:
        try:
            import fluidsynth  # noqa: F401 - pyfluidsynth loads libfluidsynth at import
        except ImportError as e:
            raise SetupError(f"pyfluidsynth cannot load libfluidsynth ({e}): {SETUP_HINT}") from None


def build_bank(out_dir: Path, cache_dir: Path, seed: int = 0, workers: int = 2, limit: int | None = None,
               sources: tuple[str, ...] | None = None, progress: bool = True) -> dict:
    """Build the bank in out_dir from the unpacked packages in cache_dir; returns bank.json's content.

    limit / sources restrict the plan (see plan()); the default is the whole bank.
    """
    t0 = time.time()
    jobs, skipped = plan(cache_dir, seed, limit, sources)
    return write_bank(out_dir, jobs, skipped, cache_dir, workers=workers, progress=progress, t0=t0,
                      meta={"version": BANK_VERSION, "seed": seed, "limit": limit,
                            "sources": list(sources) if sources else None})


def write_bank(out_dir: Path, jobs: list[dict], skipped: list[dict], cache_dir: Path, workers: int = 2,
               progress: bool = True, codec: str = "flac", meta: dict | None = None, t0: float | None = None) -> dict:
    """Render `jobs` into a bank at out_dir (index.jsonl, audio/, bank.json with `meta` first), atomically:
    built in a hidden temporary folder and renamed into place; returns bank.json's content."""
    t0 = time.time() if t0 is None else t0
    out_dir = Path(out_dir)
    _check_tools({j["render"]["op"] for j in jobs})
    tmp = out_dir.parent / f".{out_dir.name}.partial"
    if tmp.exists():  # left by an interrupted build: start again
        shutil.rmtree(tmp)
    for kind in KINDS:
        (tmp / "audio" / kind).mkdir(parents=True)
    batches = _batches(jobs)
    log.info("bank: %d clips in %d batches, %d workers", len(jobs), len(batches), workers)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), desc="bank", unit="clip")
    results = []
    if workers <= 1:
        for b in batches:
            results += _render_batch(b, str(tmp), codec)
            bar and bar.update(len(b))
    else:
        # spawn, not fork: a forked worker can inherit a lock held by torch's or OpenMP's threads in the
        # parent (pytest, a kit build) and wait on it forever. A Pool, not a ProcessPoolExecutor: leaving the
        # `with` block on an exception (Ctrl-C; SIGTERM, which `mamclap` turns into one) terminates the
        # workers, where an executor would wait for every queued batch.
        with multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
            for b, res in zip(batches, pool.imap(functools.partial(_render_batch, tmp_dir=str(tmp), codec=codec),
                                                 batches)):
                results += res
                bar and bar.update(len(b))
    bar and bar.close()
    by_id = {j["id"]: j for j in jobs}
    records = sorted((rec for _, rec, _ in results if rec is not None), key=lambda r: r["id"])
    for jid, _, reason in results:
        if reason is not None:
            src = by_id[jid]["source"]
            skipped.append({"file": f"{src['package']}:{src['file'] or by_id[jid]['render']}", "id": jid,
                            "reason": reason})
    with open(tmp / "index.jsonl", "w") as f:
        for rec in records:
            f.write(json.dumps(rec, sort_keys=True, ensure_ascii=False) + "\n")
    used = sorted({r["source"]["package"] for r in records if r["source"]["package"] in DATA_PACKAGES})
    summary = {
        **(meta or {}), "codec": codec,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(time.time() - t0, 1), "planned": len(jobs), **summarize(records),
        "skipped_count": dict(Counter(s["reason"].split(":")[0] for s in skipped)), "skipped": skipped,
        "packages": {p: {k: v for k, v in package_info(p, cache_dir).items() if k != "package"} for p in used},
        "tools": {k: v for k, v in tool_versions().items() if v is not None},
        "total_bytes": sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()),
    }
    (tmp / "bank.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    old = out_dir.parent / f".{out_dir.name}.old"
    if out_dir.exists():
        if old.exists():
            shutil.rmtree(old)
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old.exists():
        shutil.rmtree(old)
    log.info("bank: %d clips, %.1f MiB, %d skipped, %.0f s", len(records), summary["total_bytes"] / 2**20,
             len(skipped), summary["build_seconds"])
    return summary


# ---- reading ----

def validate_record(rec: dict) -> None:
    """ValueError naming what is wrong with one index record."""
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise ValueError(f"bank record {rec.get('id')!r}: {what}")
    need(isinstance(rec, dict), "not a JSON object")
    for k in ("id", "path", "kind", "duration", "group", "source", "labels"):
        need(k in rec, f"missing key {k!r}")
    need(rec["kind"] in KINDS, f"kind {rec['kind']!r} is not one of {KINDS}")
    need(rec["id"].startswith(rec["kind"] + "/") and rec["path"] in (f"audio/{rec['id']}.{c}" for c in CODECS),
         f"id/path mismatch: id {rec['id']!r}, path {rec['path']!r} (expected audio/<kind>/<name>.flac or .opus)")
    need(isinstance(rec["duration"], (int, float)) and rec["duration"] > 0, "duration must be > 0 seconds")
    need(isinstance(rec["group"], str) and rec["group"], "group must be a non-empty string")
    need(isinstance(rec["source"], dict) and all(k in rec["source"] for k in SOURCE_KEYS),
         f"source needs keys {SOURCE_KEYS}")
    need(isinstance(rec["labels"], dict) and all(k in rec["labels"] for k in LABEL_KEYS[rec["kind"]]),
         f"{rec['kind']} labels need keys {LABEL_KEYS[rec['kind']]}")


def load_bank(bank_dir: Path) -> list[dict]:
    """The records of index.jsonl, validated, with every audio file present."""
    bank_dir = Path(bank_dir)
    index = bank_dir / "index.jsonl"
    if not index.is_file():
        raise FileNotFoundError(f"no source bank at {bank_dir} (index.jsonl missing): run `mamclap data bank`")
    records = []
    with open(index) as f:
        for n, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
                validate_record(rec)
            except (json.JSONDecodeError, ValueError) as e:
                raise ValueError(f"{index}:{n}: {e}") from None
            if not (bank_dir / rec["path"]).is_file():
                raise ValueError(f"{index}:{n}: audio file {rec['path']} is missing")
            records.append(rec)
    return records
