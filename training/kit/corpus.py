"""The pretraining corpus: fixed-length clips of speech, music and environmental sound with tags and captions.

Each clip mixes 1-3 *parts* over an optional background bed. A part is a short sequence of events from one
source: words of one speaker, notes of one instrument and soundfont, strokes of one drum kit on a tempo
grid, or sounds of one environmental class. Each part is varied (augment.vary: gain, speed, pitch, tempo,
reverb, noise), placed at a random offset and mixed; the bed is a looped ambience from the bank (or
coloured noise) at a random SNR; the clip is peak-normalised. Tags are the ontology classes of every event
and the bed (leaves and ancestors); the caption comes from ontology.caption (caption_text): the records' facts
(words, speaker, language, instrument and family, pitch register) and what the mixer knows (a drum pattern's
tempo, each part's level, the bed's SNR, the clip's level measured on the samples as written). The caption
draws only from its own generator (cap_rng, one draw of the clip's stream, as before): the audio does not
depend on the caption code.

Layout (WebDataset): ``<out>/shard-000000.tar`` ... each holding ``<key>.flac`` (16 kHz mono 16-bit) and
``<key>.json``::

    {"key", "duration", "sample_rate", "labels": [{"mid", "name"}], "caption",
     "parts": [{"kind", "bank_ids", "offsets" (s, clip time), "gain_db", "augment"}],
     "bed": null | {"bank_id" | "noise", "snr_db"}}

plus ``class_labels_indices.csv`` (every ontology class; index,mid,display_name as AudioSet writes it)
and ``corpus.json`` (counts, hours, bank ids used, skipped clips), written last: its presence marks the
corpus complete. A shard is written to a temporary name (hear_mamclap.atomic) and renamed, after its stats
file, so an interrupted build leaves no half shard and a rerun skips the shards already there. Each shard
draws from its own generator seeded by (seed, shard index): the output does not depend on the number of
workers.

write_audioset_layout converts the shards to AudioSet's layout: class_labels_indices.csv,
unbalanced_train_segments.csv (YTID, start_seconds, end_seconds, "mid1,mid2"), audio/<YTID>.flac and
captions.csv.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import multiprocessing as mp
import tarfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from hear_mamclap import atomic
from training.kit import augment, ontology

log = logging.getLogger(__name__)

SAMPLE_RATE = augment.SAMPLE_RATE
FOREGROUND_KINDS = ("speech", "music", "drum", "env")


@dataclass(frozen=True)
class CorpusConfig:
    clips: int  # clips in the corpus
    clip_seconds: float  # every clip is exactly this long
    shard_clips: int  # clips per tar shard
    parts_weights: tuple[float, ...] = (0.45, 0.35, 0.2)  # P(1, 2, 3 parts)
    kind_weights: tuple[tuple[str, float], ...] = (("speech", 0.35), ("music", 0.25), ("drum", 0.1), ("env", 0.3))
    max_events: int = 6  # events per part, at most
    bed_p: float = 0.6  # probability of a background bed
    bank_bed_p: float = 0.8  # given a bed: a bank noise clip (else coloured noise)
    bed_snr_db: tuple[float, float] = (3.0, 25.0)  # foreground over bed
    part_gain_db: tuple[float, float] = (-8.0, 0.0)  # relative level of each part
    peak_db: tuple[float, float] = (-12.0, -1.0)  # final peak level
    augment: augment.AugmentConfig = field(default_factory=lambda: augment.AugmentConfig(gain_db=(0.0, 0.0)))

    @property
    def shards(self) -> int:
        return -(-self.clips // self.shard_clips)


def part_pool_key(rec: dict) -> tuple:
    """Records sharing this key can form one part (one speaker, instrument, kit or class)."""
    lab = rec.get("labels") or {}
    if rec["kind"] == "speech":
        return ("speech", lab.get("speaker") or rec["group"])
    if rec["kind"] == "music":
        return ("music", lab.get("soundfont"), lab.get("instrument"))
    if rec["kind"] == "drum":
        return ("drum", lab.get("kit") or rec["group"])
    return (rec["kind"], lab.get("class"))


def pools(records: list[dict]) -> dict[str, list[list[dict]]]:
    """Per kind, the list of part pools (sorted, so the plan is deterministic)."""
    by_key: dict[tuple, list[dict]] = {}
    for r in sorted(records, key=lambda r: r["id"]):
        by_key.setdefault(part_pool_key(r), []).append(r)
    out: dict[str, list[list[dict]]] = {}
    for key in sorted(by_key, key=str):
        out.setdefault(key[0], []).append(by_key[key])
    return out


class ShardWriter:
    """Renders clips of one shard; bank clips are read once per worker and bad ones skipped and counted."""

    def __init__(self, records: list[dict], bank_dir: Path, cfg: CorpusConfig, seed: int) -> None:
        self.bank_dir, self.cfg, self.seed = Path(bank_dir), cfg, seed
        self.pools = pools(records)
        self.records_by_id = {r["id"]: r for r in records}
        self.kinds = [(k, w) for k, w in cfg.kind_weights if self.pools.get(k)]
        if not self.kinds:
            raise ValueError(f"no bank clips of kinds {FOREGROUND_KINDS} left for the corpus")
        self.cache: dict[str, np.ndarray | None] = {}
        self.skipped: dict[str, str] = {}

    def load(self, rec: dict) -> np.ndarray | None:
        if rec["id"] not in self.cache:
            try:
                x = augment.load_clip(self.bank_dir / rec["path"])
                if len(x) < 160 or not np.any(x):
                    raise ValueError("shorter than 10 ms or silent")
                self.cache[rec["id"]] = x
            except Exception as err:  # one bad bank file must not stop the corpus: skip it and say why
                self.skipped[rec["id"]] = f"{type(err).__name__}: {err}"
                self.cache[rec["id"]] = None
        return self.cache[rec["id"]]

    def events(self, kind: str, pool: list[dict], rng: np.random.Generator, n: int
               ) -> tuple[np.ndarray, list, list, float | None]:
        """(part audio, bank ids, event offsets in s, grid tempo in BPM or None) for up to max_events events that
        fit in n samples."""
        count = int(rng.integers(1, self.cfg.max_events + 1))
        picks = [pool[int(i)] for i in rng.choice(len(pool), size=count, replace=count > len(pool))]
        bpm = None
        if kind == "drum":  # strokes on an eighth-note grid at a random tempo
            bpm = float(rng.uniform(80, 160))
            step = 60.0 / bpm / 2.0
            slots = np.sort(rng.choice(16, size=min(count, 16), replace=False))
            starts = [float(s) * step for s in slots]
        else:
            gaps = rng.uniform(0.05, 0.4 if kind == "speech" else 1.0, size=count)
            starts = None
        note_len = rng.uniform(0.3, 1.5, size=count)  # notes of a phrase are cut short, with a fade
        placed: list[tuple[np.ndarray, int]] = []
        ids, offsets, t = [], [], 0.0
        for i, rec in enumerate(picks):
            x = self.load(rec)
            if x is None:
                continue
            if kind == "music" and count > 1:
                x = x[: int(note_len[i] * SAMPLE_RATE)].copy()
                fade = min(len(x), 800)
                x[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
            start = starts[i] if starts is not None else t
            begin = int(start * SAMPLE_RATE)
            if placed and begin + len(x) > n:
                break
            placed.append((x, begin))
            ids.append(rec["id"])
            offsets.append(start)
            t = start + len(x) / SAMPLE_RATE + (gaps[i] if starts is None else 0.0)
        if not placed:
            return np.zeros(0, np.float32), [], [], bpm
        audio = np.zeros(min(n, max(b + len(x) for x, b in placed)), np.float32)
        for x, b in placed:
            augment.place(audio, x, b)
        return audio, ids, offsets, bpm

    def clip(self, key: str, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """One clip: (audio (n,), metadata)."""
        cfg, n = self.cfg, int(round(self.cfg.clip_seconds * SAMPLE_RATE))
        w = np.array([w for _, w in self.kinds], dtype=np.float64)
        n_parts = 1 + int(rng.choice(len(cfg.parts_weights), p=np.array(cfg.parts_weights) / sum(cfg.parts_weights)))
        canvas = np.zeros(n, np.float32)
        parts, caption_parts, label_keys, reverberant = [], [], set(), False
        for _ in range(n_parts):
            kind = self.kinds[int(rng.choice(len(self.kinds), p=w / w.sum()))][0]
            pool = self.pools[kind][int(rng.integers(len(self.pools[kind])))]
            audio, ids, offsets, bpm = self.events(kind, pool, rng, n)
            if not ids:
                continue
            audio, ops = augment.vary(audio, rng, cfg.augment)
            audio = augment.fit_length(audio, n) if len(audio) > n else audio
            gain_db = float(rng.uniform(*cfg.part_gain_db))
            audio = audio * np.float32(0.1 / max(augment.rms(audio), 1e-9))  # same loudness before the gain
            onset = int(rng.integers(0, n - len(audio) + 1))
            placed = augment.gain(audio, gain_db)
            augment.place(canvas, placed, onset)
            reverberant |= "reverb" in ops and ops["reverb"]["wet"] > 0.3
            recs = [self.records_by_id[i] for i in ids]
            for r in recs:
                label_keys.update(ontology.label_keys(r))
            parts.append({"kind": kind, "bank_ids": ids, "gain_db": round(gain_db, 2), "augment": ops,
                          "offsets": [round(onset / SAMPLE_RATE + o, 3) for o in offsets]})
            caption_parts.append({"kind": kind, "records": recs, "onset": onset / SAMPLE_RATE,
                                  "end": (onset + len(audio)) / SAMPLE_RATE, **_heard(ops, bpm),
                                  "rms": augment.rms(placed)})
        bed_meta, bed_rec = None, None
        u_bed, u_bank = rng.random(2)
        snr = float(rng.uniform(*cfg.bed_snr_db))
        if u_bed < cfg.bed_p or not parts:
            noise_pools = self.pools.get("noise")
            bed_sub = np.random.default_rng(rng.integers(2 ** 63))
            if noise_pools and u_bank < cfg.bank_bed_p:
                pool = noise_pools[int(bed_sub.integers(len(noise_pools)))]
                bed_rec = pool[int(bed_sub.integers(len(pool)))]
                bed = self.load(bed_rec)
                if bed is None:
                    bed_rec = None
            if bed_rec is None:
                exponent = float(bed_sub.choice([0.0, 1.0]))
                bed = augment.colored_noise(n, bed_sub, exponent)
                bed_rec = {"id": None, "kind": "noise", "labels": {"class": "white_noise" if exponent == 0 else "pink_noise"}}
            fg = augment.rms(canvas)
            looped = augment.loop_to(bed, n, bed_sub)
            level = fg / 10 ** (snr / 20) if fg > 0 else 0.05
            canvas += looped * np.float32(level / max(augment.rms(looped), 1e-12))
            label_keys.update(ontology.label_keys(bed_rec))
            bed_meta = ({"bank_id": bed_rec["id"]} if bed_rec["id"] else {"noise": bed_rec["labels"]["class"]})
            bed_meta["snr_db"] = round(snr, 1) if fg > 0 else None
        peak = float(rng.uniform(*cfg.peak_db))
        audio = augment.normalize_peak(canvas, peak)
        cap_rng = np.random.default_rng(rng.integers(2 ** 63))
        text = caption_text(caption_parts, bed_rec, bed_meta, reverberant, canvas, audio, cap_rng)
        keys = sorted(label_keys, key=lambda k: ontology.BY_KEY[k].name)
        meta = {"key": key, "duration": n / SAMPLE_RATE, "sample_rate": SAMPLE_RATE,
                "labels": [{"mid": ontology.BY_KEY[k].mid, "name": ontology.BY_KEY[k].name} for k in keys],
                "caption": text, "parts": parts, "bed": bed_meta}
        return audio, meta


def _heard(ops: dict, bpm: float | None) -> dict:
    """A part's pitch shift in semitones and tempo as heard, after augment.vary's speed, pitch and stretch."""
    speed = float(ops.get("speed", 1.0))
    out = {"semitones": 12.0 * float(np.log2(speed)) + float(ops.get("pitch_semitones", 0.0))}
    if bpm is not None:
        out["bpm"] = bpm * speed * float(ops.get("stretch", 1.0))
    return out


def pcm16(x: np.ndarray) -> np.ndarray:
    """The int16 samples that _flac_bytes writes for x (libsndfile 1.2: round(x * 32768), clipped)."""
    return np.clip(np.rint(x.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def active_level_dbfs(samples: np.ndarray, frame: int = 800, floor_db: float = 30.0) -> float | None:
    """Level of a clip in dBFS: the RMS over its 50 ms frames within floor_db of the loudest (silence between
    events does not make a clip quiet); None for silence. samples: int16 PCM (as written) or float."""
    x = samples.astype(np.float64) / (32768.0 if samples.dtype == np.int16 else 1.0)
    x = x[: max(frame, len(x) // frame * frame)]
    e = np.mean(np.square(np.pad(x, (0, (-len(x)) % frame)).reshape(-1, frame)), axis=1)
    if not np.any(e > 0):
        return None
    active = e[e >= e.max() * 10 ** (-floor_db / 10)]
    return float(10 * np.log10(np.mean(active)))


def caption_text(caption_parts: list[dict], bed_rec: dict | None, bed_meta: dict | None, reverberant: bool,
                 canvas: np.ndarray, audio: np.ndarray, cap_rng: np.random.Generator) -> str:
    """The clip's caption from its parts, bed and levels. Reads the mix, never changes it, and draws only from
    cap_rng: the audio does not depend on anything here. Levels come from the samples as written (pcm16): the
    clip's active level, and each part's RMS times the peak normalisation the clip got (final / canvas peak)."""
    written = pcm16(audio)
    level = active_level_dbfs(written)
    canvas_peak = float(np.max(np.abs(canvas))) if len(canvas) else 0.0
    scale = float(np.max(np.abs(written))) / 32768.0 / canvas_peak if canvas_peak > 0 else 0.0
    parts = []
    for cp in caption_parts:
        part = {k: v for k, v in cp.items() if k != "rms"}
        if scale > 0 and cp.get("rms", 0.0) > 0:
            part["level_dbfs"] = 20 * float(np.log10(cp["rms"] * scale))
        parts.append(part)
    snr = bed_meta.get("snr_db") if bed_meta else None
    if not parts:
        return ontology.bed_caption(bed_rec, cap_rng, level)
    return ontology.caption(parts, bed_rec, cap_rng, reverberant, level_dbfs=level, bed_snr_db=snr)


def _flac_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed mtime: same seed, same bytes
    tar.addfile(info, io.BytesIO(data))


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


_WORKER: ShardWriter | None = None


def _init_worker(records: list[dict], bank_dir: Path, cfg: CorpusConfig, seed: int) -> None:
    global _WORKER
    _WORKER = ShardWriter(records, bank_dir, cfg, seed)


def _init_pool_worker(*args) -> None:
    torch.set_num_threads(1)  # one process per core already
    _init_worker(*args)


def write_shard(out_dir: Path, index: int) -> dict:
    """Render shard `index` into out_dir atomically; returns its stats (also written beside it)."""
    w = _WORKER
    assert w is not None, "call _init_worker first"
    cfg = w.cfg
    rng = np.random.default_rng([w.seed, index])
    first, last = index * cfg.shard_clips, min(cfg.clips, (index + 1) * cfg.shard_clips)
    stats = {"shard": shard_name(index), "clips": 0, "seconds": 0.0, "bank_ids": set(), "labels": Counter(),
             "parts": Counter()}
    # The shard is renamed into place only once complete, and after its stats file: no half shard is left
    # behind, and a shard without stats is written again.
    with atomic.file(out_dir / shard_name(index)) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(first, last):
                key = f"c{i:08d}"
                audio, meta = w.clip(key, rng)
                _add_member(tar, f"{key}.flac", _flac_bytes(audio))
                _add_member(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
                stats["clips"] += 1
                stats["seconds"] += meta["duration"]
                stats["bank_ids"].update(b for p in meta["parts"] for b in p["bank_ids"])
                if meta["bed"] and meta["bed"].get("bank_id"):
                    stats["bank_ids"].add(meta["bed"]["bank_id"])
                stats["labels"].update(lab["name"] for lab in meta["labels"])
                stats["parts"][len(meta["parts"])] += 1
        stats.update(bank_ids=sorted(stats["bank_ids"]), labels=dict(stats["labels"]),
                     parts={str(k): v for k, v in sorted(stats["parts"].items())}, skipped=dict(w.skipped))
        _write_json(out_dir / f"{shard_name(index)}.stats.json", stats)
    return stats


def _write_json(path: Path, obj: object) -> None:
    atomic.write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def write_class_csv(path: Path) -> None:
    """class_labels_indices.csv over every ontology class, in ontology order (stable across kits)."""
    with atomic.open_write(path, newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_MINIMAL)
        w.writerow(["index", "mid", "display_name"])
        for i, c in enumerate(ontology.CLASSES):
            w.writerow([i, c.mid, c.name])


def build_corpus(records: list[dict], bank_dir: Path, out_dir: Path, cfg: CorpusConfig, seed: int,
                 exclude: set[str], workers: int = 2, progress: bool = True) -> dict:
    """Write the corpus shards into out_dir (resuming), leaving out every bank id in `exclude`.

    Returns the summary also written to out_dir/corpus.json: clips, hours, shards, label counts, the bank
    ids used, the excluded count, skipped bank clips with reasons.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    usable = [r for r in records if r["id"] not in exclude]
    if not any(r["kind"] in FOREGROUND_KINDS for r in usable):
        raise ValueError(f"every foreground bank clip is excluded ({len(exclude)} ids held out for evaluation);"
                         " the corpus needs some speech, music, drum or env clips")
    atomic.remove_stale(out_dir / "shard-*.tar")  # half-written by an interrupted run
    todo = [i for i in range(cfg.shards) if not (out_dir / shard_name(i)).exists()
            or not (out_dir / f"{shard_name(i)}.stats.json").exists()]
    if todo:
        log.info("corpus: %d of %d shards to write", len(todo), cfg.shards)
        bar = _progress(len(todo), "corpus shards", progress)
        if workers > 1 and len(todo) > 1:
            # spawn, not fork: a forked child can inherit a held lock of torch's or OpenMP's thread pools
            ctx = mp.get_context("spawn")
            with ctx.Pool(min(workers, len(todo)), _init_pool_worker, (usable, bank_dir, cfg, seed)) as pool:
                for _ in pool.imap_unordered(_write_shard_star, [(out_dir, i) for i in todo]):
                    bar.update(1)
        else:
            _init_worker(usable, bank_dir, cfg, seed)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # clip-sized FFTs: extra threads only contend (results/perf.md)
            try:
                for i in todo:
                    write_shard(out_dir, i)
                    bar.update(1)
            finally:
                torch.set_num_threads(threads)
        bar.close()
    summary = summarize(out_dir, cfg)
    summary.update(seed=seed, excluded_bank_ids=len(exclude), config=_config_dict(cfg))
    write_class_csv(out_dir / "class_labels_indices.csv")
    _write_json(out_dir / "corpus.json", summary)
    return summary


def _write_shard_star(args: tuple[Path, int]) -> dict:
    return write_shard(*args)


def _config_dict(cfg: CorpusConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg)))


def _progress(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, disable=not enabled, unit="shard")


def summarize(out_dir: Path, cfg: CorpusConfig) -> dict:
    """Merge the per-shard stats of a complete corpus folder."""
    labels: Counter = Counter()
    parts: Counter = Counter()
    bank_ids: set[str] = set()
    skipped: dict[str, str] = {}
    clips, seconds = 0, 0.0
    for i in range(cfg.shards):
        st = json.loads((Path(out_dir) / f"{shard_name(i)}.stats.json").read_text())
        clips, seconds = clips + st["clips"], seconds + st["seconds"]
        labels.update(st["labels"])
        parts.update(st["parts"])
        bank_ids.update(st["bank_ids"])
        skipped.update(st["skipped"])
    return {"clips": clips, "hours": round(seconds / 3600, 4), "shards": cfg.shards,
            "clip_seconds": cfg.clip_seconds, "labels": dict(sorted(labels.items())),
            "parts_per_clip": dict(sorted(parts.items())), "bank_ids": sorted(bank_ids),
            "skipped_bank_clips": skipped}


def iter_shard(path: Path):
    """(key, flac bytes, metadata) for each clip of a shard, in order."""
    with tarfile.open(path) as tar:
        pending: dict[str, dict] = {}
        for m in tar:
            key, ext = m.name.rsplit(".", 1)
            pending.setdefault(key, {})[ext] = tar.extractfile(m).read()
            if {"flac", "json"} <= set(pending[key]):
                item = pending.pop(key)
                yield key, item["flac"], json.loads(item["json"])


def write_segments_csv(path: Path, rows: list[tuple[str, float, list[str]]], source: str) -> None:
    """An AudioSet segments CSV: three '#' header lines, then `YTID, start, end, "mid1,mid2"` per
    (key, duration, label mids) row."""
    with open(path, "w", newline="") as f:
        f.write(f"# Segments csv created by mamclap from {source}\n")
        f.write(f"# num_ytids={len(rows)}, num_segs={len(rows)}, "
                f"num_unique_labels={len({m for r in rows for m in r[2]})}, "
                f"num_positive_labels={sum(len(r[2]) for r in rows)}\n")
        f.write("# YTID, start_seconds, end_seconds, positive_labels\n")
        for key, duration, labels in rows:
            f.write(f'{key}, 0.000, {duration:.3f}, "{",".join(labels)}"\n')


def write_audioset_layout(corpus_dir: Path, out_dir: Path, progress: bool = True) -> dict:
    """Convert complete corpus shards into AudioSet's layout in out_dir (written to a temp dir, renamed)."""
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    shards = sorted(corpus_dir.glob("shard-*.tar"))
    if not shards:
        raise FileNotFoundError(f"no corpus shards in {corpus_dir}")
    atomic.remove_stale(out_dir)
    with atomic.directory(out_dir) as tmp:
        (tmp / "audio").mkdir()
        write_class_csv(tmp / "class_labels_indices.csv")
        rows, captions, mids = [], [], set()
        for shard in tqdm(shards, desc="audioset layout", disable=not progress, unit="shard"):
            for key, flac, meta in iter_shard(shard):
                (tmp / "audio" / f"{key}.flac").write_bytes(flac)
                labels = [lab["mid"] for lab in meta["labels"]]
                mids.update(labels)
                rows.append((key, meta["duration"], labels))
                captions.append((key, meta["caption"]))
        write_segments_csv(tmp / "unbalanced_train_segments.csv", rows, corpus_dir.name)
        with open(tmp / "captions.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["YTID", "caption"])
            w.writerows(captions)
    return {"clips": len(rows), "labels": len(mids)}
