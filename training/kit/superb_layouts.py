"""SUPERB data layouts that s3prl 0.4.18's own dataset code reads, built from the source bank.

Speech Commands v0.01 (s3prl downstream ``speech_commands``)::

    speech_commands/train/<word>/<speakerhash>_nohash_<n>.wav     the 10 keywords and other words
    speech_commands/train/_background_noise_/<bed>.wav            long background beds (_silence_)
    speech_commands/test/<class>/<name>.wav                       the 12 classes, _unknown_ and _silence_ too

  s3prl splits train/dev by a SHA-1 of the ``<speakerhash>`` prefix (valid below 10%, 10-20% dropped,
  the rest train); each voice gets a prefix whose hash lands it where we want it: held-out voices in dev,
  other held-out voices in the separate test root.

VoxCeleb1 identification (s3prl downstream ``voxceleb1``)::

    voxceleb1/iden_split.txt                                       "<1|2|3> idXXXXX/<video>/<utt>.wav"
    voxceleb1/dev/wav/idXXXXX/<video>/<utt>.wav                    s3prl globs <root>/*/wav/<path>

  s3prl derives the label as int(idXXXXX[2:]) - 10001, so speakers are numbered from id10001. A "video" is
  one text of the speaker; test and dev hold out whole texts. All audio is 16 kHz mono 16-bit PCM.
"""
from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import defaultdict
from concurrent.futures import Executor
from pathlib import Path

import numpy as np
import soundfile as sf

from hear_mamclap import atomic
from training.kit import augment as aug
from training.kit import pool
from training.kit.hear_suite import (KWS_WORDS, SAMPLE_RATE, SILENCE, UNKNOWN, BankAudio, Cycler, finish,
                                     one_torch_thread, pick_speech_classes, pools_by_unit, split_units, vary,
                                     with_background)

log = logging.getLogger(__name__)

# Per size. Speech Commands: (renderings per voice and word in train/dev, clips per class in test, most
# train voices, most non-keyword words per voice), and the seconds of each background bed. VoxCeleb1:
# (renderings per text, most speakers, most texts per speaker).
COUNTS: dict[str, dict[str, tuple[int, ...]]] = {
    "tiny": {"speech_commands": (1, 3, 8, 3), "bed_seconds": (4,), "voxceleb1": (1, 8, 8)},
    "small": {"speech_commands": (3, 15, 30, 10), "bed_seconds": (20,), "voxceleb1": (3, 20, 30)},
    "medium": {"speech_commands": (10, 100, 1000, 1000), "bed_seconds": (60,), "voxceleb1": (8, 50, 1000)},
}
VOX_FIRST_ID = 10001


def s3prl_dev_percentage(speaker_hash: str, max_uttr_per_class: int = 2 ** 27 - 1) -> float:
    """The percentage s3prl's speech_commands split_dataset computes for a ``<hash>_nohash_`` prefix."""
    hashed_again = hashlib.sha1(speaker_hash.encode("utf-8")).hexdigest()
    return (int(hashed_again, 16) % (max_uttr_per_class + 1)) * (100.0 / max_uttr_per_class)


def speaker_hash(voice: str, seed: int, split: str) -> str:
    """An 8-hex-digit speaker prefix, like Speech Commands', whose s3prl hash puts the voice in split."""
    for k in range(10000):
        h = hashlib.sha1(f"{voice}/{seed}/{k}".encode()).hexdigest()[:8]
        pct = s3prl_dev_percentage(h)
        if (split == "valid" and pct < 10) or (split == "train" and pct >= 20):
            return h
    raise RuntimeError(f"no speaker hash found for {voice} in {split}")  # p(fail) ~ 0.9 ** 10000


def _write(path: Path, audio: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")


def _fit(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n, np.float32)
    if len(x) >= n:
        start = int(rng.integers(0, len(x) - n + 1))
        return x[start:start + n].copy()
    at = int(rng.integers(0, n - len(x) + 1))
    out[at:at + len(x)] = x
    return out


def _folder_safe(word: str) -> str:
    return re.sub(r"[^0-9a-z_]+", "_", word.lower()).strip("_") or "word"


def build_speech_commands(audio: BankAudio, records: list[dict], root: Path, size: str, seed: int) -> dict:
    """Write root/train and root/test in Speech Commands v0.01's layout; returns the manifest."""
    rng = np.random.default_rng([seed, 1])
    reps, test_per_class, max_voices, unknown_per_voice = COUNTS[size]["speech_commands"]
    words = [r for r in audio.usable([r for r in records if r.get("kind") == "speech"]) if r["labels"].get("word")]
    kws = [r for r in words if r["labels"]["word"].lower() in KWS_WORDS]
    if not kws or len(words) == len(kws):
        raise ValueError(f"speech_commands: the bank needs speech records with labels.word in {KWS_WORDS} "
                         "and other words for _unknown_")
    train_v, valid_v, test_v = split_units([r["group"] for r in kws], rng, "speech_commands voices")
    train_v, valid_v = train_v[:max_voices], valid_v[:max(1, max_voices // 4)]
    if not valid_v:  # two voices: dev shares the train voice (s3prl needs a dev set)
        valid_v = train_v
    beds = audio.usable([r for r in records if r.get("kind") == "noise"])
    bed_pools = (pools_by_unit(beds, lambda r: r["group"], rng, "speech_commands beds")
                 if len({r["group"] for r in beds}) >= 2 else {"train": beds, "valid": beds, "test": beds})
    bed_audio = {s: [audio.load(r) for r in rs] for s, rs in bed_pools.items()}

    def render(rec: dict, split: str) -> np.ndarray:
        x = _fit(vary(audio.load(rec), rng, "word"), SAMPLE_RATE, rng)
        return finish(with_background(x, bed_audio[split], rng, (5.0, 30.0), p=0.8), rng)

    train_root, test_root = root / "train", root / "test"
    manifest: dict = {"train": set(), "valid": set(), "test": set()}
    # Train root: one folder per word (keywords and the others, which s3prl maps to _unknown_).
    takes: dict[tuple[str, str], int] = defaultdict(int)  # (folder, prefix) -> files so far
    for split, voices in (("train", train_v), ("valid", valid_v)):
        for voice in sorted(set(voices)):
            prefix = speaker_hash(voice, seed, split)
            said = [r for r in words if r["group"] == voice]
            others = [r for r in said if r["labels"]["word"].lower() not in KWS_WORDS]
            keep = {r["id"] for r in said if r["labels"]["word"].lower() in KWS_WORDS}
            keep |= {others[i]["id"] for i in rng.permutation(len(others))[:unknown_per_voice]}
            for rec in (r for r in said if r["id"] in keep):
                folder = _folder_safe(rec["labels"]["word"])
                for _ in range(reps):
                    n = takes[folder, prefix]
                    takes[folder, prefix] += 1
                    _write(train_root / folder / f"{prefix}_nohash_{n}.wav", render(rec, split))
                    manifest[split].add(rec["id"])
    bed_seconds = COUNTS[size]["bed_seconds"][0]
    for i, rec in enumerate(bed_pools["train"]):
        x = aug.loop_to(audio.load(rec), bed_seconds * SAMPLE_RATE, rng)
        _write(train_root / "_background_noise_" / f"{_folder_safe(rec['group'])}_{i}.wav", finish(x, rng, (-6, -1)))
        manifest["train"].add(rec["id"])
    # Test root: the 12 classes from held-out voices (and held-out beds for _silence_).
    by_class: dict[str, list[dict]] = defaultdict(list)
    for r in words:
        if r["group"] in test_v:
            word = r["labels"]["word"].lower()
            by_class[word if word in KWS_WORDS else UNKNOWN].append(r)
    for label, recs in sorted(by_class.items()):
        cyc = Cycler(recs, rng)
        for k in range(test_per_class):
            rec = cyc.next()
            prefix = hashlib.sha1(f"{rec['group']}/{seed}".encode()).hexdigest()[:8]
            _write(test_root / label / f"{prefix}_nohash_{k}.wav", render(rec, "test"))
            manifest["test"].add(rec["id"])
    test_beds = bed_pools["test"] or beds
    for k in range(test_per_class if test_beds else 0):
        rec = test_beds[int(rng.integers(len(test_beds)))]
        x = aug.loop_to(audio.load(rec), SAMPLE_RATE, rng)
        _write(test_root / SILENCE / f"silence_{k}.wav", finish(x, rng, (-30.0, -6.0)))
        manifest["test"].add(rec["id"])
    out = {s: sorted(ids) for s, ids in manifest.items()}
    out.update({"voices": {"train": sorted(train_v), "valid": sorted(set(valid_v)), "test": sorted(test_v)},
                "heldout_groups": sorted(test_v)})
    return out


def build_voxceleb1(audio: BankAudio, records: list[dict], root: Path, size: str, seed: int) -> dict:
    """Write root/iden_split.txt and root/dev/wav/idXXXXX/<video>/<utt>.wav; returns the manifest."""
    rng = np.random.default_rng([seed, 2])
    reps, max_speakers, max_texts = COUNTS[size]["voxceleb1"]
    speech = [r for r in audio.usable([r for r in records if r.get("kind") == "speech"])
              if r["labels"].get("speaker") and r["labels"].get("text")]
    by_speaker: dict[str, list[dict]] = defaultdict(list)
    for r in speech:
        by_speaker[r["labels"]["speaker"]].append(r)
    texts = {s: {r["labels"]["text"] for r in rs} for s, rs in by_speaker.items()}
    speakers = pick_speech_classes(by_speaker, max_speakers, min_texts=3, same_language=True)
    if len(speakers) < 2:
        raise ValueError(f"voxceleb1: needs at least 2 speakers with >= 3 distinct texts, found {speakers}")
    beds = [audio.load(r) for r in audio.usable([r for r in records if r.get("kind") == "noise"])]
    lines, manifest = [], {"train": set(), "valid": set(), "test": set()}
    split_code = {"train": 1, "valid": 2, "test": 3}
    speaker_ids = {}
    takes: dict[tuple[str, str], int] = defaultdict(int)  # (speaker id, video) -> utterances so far
    for i, spk in enumerate(speakers):
        sid = f"id{VOX_FIRST_ID + i}"
        speaker_ids[spk] = sid
        chosen = sorted(texts[spk])
        chosen = {chosen[j] for j in rng.permutation(len(chosen))[:max_texts]}
        recs = [r for r in by_speaker[spk] if r["labels"]["text"] in chosen]
        pools = pools_by_unit(recs, lambda r: r["labels"]["text"], rng, f"voxceleb1/{spk}")
        for split, recs in pools.items():
            for rec in recs:
                # A YouTube-like 11-character video id per text.
                video = hashlib.sha1(f"{spk}/{rec['labels']['text']}".encode()).hexdigest()[:11]
                for _ in range(reps):
                    takes[sid, video] += 1
                    rel = f"{sid}/{video}/{takes[sid, video]:05d}.wav"
                    x = vary(audio.load(rec), rng, "voice")
                    pad = np.zeros(int(rng.uniform(0.1, 0.5) * SAMPLE_RATE), np.float32)
                    x = with_background(np.concatenate([pad, x, pad]), beds, rng, (15.0, 40.0), p=0.3)
                    _write(root / "dev" / "wav" / rel, finish(x, rng))
                    lines.append(f"{split_code[split]} {rel}")
                    manifest[split].add(rec["id"])
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    out = {s: sorted(ids) for s, ids in manifest.items()}
    out.update({"speaker_ids": speaker_ids, "held_out_by": "text"})
    return out


LAYOUTS = {"speech_commands": build_speech_commands, "voxceleb1": build_voxceleb1}


def _write_layout(audio: BankAudio, records: list[dict], out_dir: Path, name: str, size: str, seed: int) -> dict:
    """One layout, written under a temporary name beside its final folder and renamed when complete."""
    start = time.perf_counter()
    atomic.remove_stale(out_dir / name)
    with atomic.directory(out_dir / name) as tmp, one_torch_thread():
        manifest = LAYOUTS[name](audio, records, tmp, size, seed)
    manifest["build_seconds"] = round(time.perf_counter() - start, 2)
    return manifest


def _log_layout(name: str, manifest: dict) -> None:
    ids = {i for split in ("train", "valid", "test") for i in manifest[split]}
    log.info("superb %s: %d bank clips (%.1f s)", name, len(ids), manifest["build_seconds"])


def _layout_job(records: list[dict], bank_dir: Path | None, out_dir: Path, name: str, size: str,
                seed: int) -> tuple[dict, dict]:
    """One layout in a worker process; each layout draws from its own generator, so the files are those of
    the serial build. Returns (manifest, skipped bank clips)."""
    audio = BankAudio(bank_dir)
    return _write_layout(audio, records, out_dir, name, size, seed), dict(audio.skipped)


def build_superb(records: list[dict], out_dir: Path, size: str, seed: int, bank_dir: Path | None = None,
                 workers: int = 1, executor: Executor | None = None) -> dict:
    """Write out_dir/speech_commands/ and out_dir/voxceleb1/; returns {"speech_commands": ..., "voxceleb1": ...}.

    workers: processes writing the two layouts side by side (1: one after the other, in this process); the
    files are the same for any number. executor: a pool (training.kit.pool) to write them on instead.
    """
    if size not in COUNTS:
        raise ValueError(f"size must be one of {list(COUNTS)}, got {size!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if executor is None and workers > 1:
        with pool.process_pool(min(workers, len(LAYOUTS))) as ex:
            return build_superb(records, out_dir, size, seed, bank_dir, executor=ex)
    manifest: dict = {}
    if executor is None:
        audio = BankAudio(bank_dir)
        for name in LAYOUTS:
            manifest[name] = _write_layout(audio, records, out_dir, name, size, seed)
            _log_layout(name, manifest[name])
        skipped = dict(audio.skipped)
    else:
        order = ["speech_commands", "voxceleb1"]  # the longer of the two first (as in the small kit's build)
        jobs = [(records, bank_dir, out_dir, n, size, seed) for n in order]
        results = dict(zip(order, pool.run_all(executor, _layout_job, jobs,
                                               lambda i, result: _log_layout(order[i], result[0]))))
        skipped = {}
        for name in LAYOUTS:
            manifest[name] = results[name][0]
            skipped.update(results[name][1])
    manifest["skipped_bank_clips"] = dict(sorted(skipped.items()))
    return manifest
