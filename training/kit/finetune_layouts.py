"""The fine-tuning data sets in their real layouts, built from the kit (`mamclap data build --finetune`).

    finetune/audioset/            AudioSet's layout, read by `mamclap finetune --task as20k | as2m`:
        class_labels_indices.csv, audio/<key>.flac
        unbalanced_train_segments.csv   the whole pretraining corpus ("AS-2M")
        balanced_train_segments.csv     a subset holding at least BALANCED_PER_CLASS clips of every class the
                                        corpus has, rarest classes first, as AudioSet's balanced set ("AS-20K")
        eval_segments.csv               clips mixed like the corpus's, from the bank clips the corpus leaves out
                                        (the evaluation tasks' test material and held-out groups): held-out sources
    finetune/esc50/               ESC-50's layout (meta/esc50.csv + audio/): the mini_esc recipe's clips (5 s,
                                  environmental classes with >= 5 source files, each source file in one fold)
    finetune/speech_commands_v2/  Speech Commands V2's layout: <word>/<speaker>_nohash_<n>.wav for the V2 words
                                  the bank has, validation_list.txt, testing_list.txt, _background_noise_/; the
                                  train, validation and test voices of the V1 layout (superb/speech_commands)

Speech Commands V1 needs nothing new: superb/speech_commands is s3prl's V1 layout (`--task spcv1_12`).
Every test split uses only bank clips that the corpus leaves out, and the builder checks it.
"""
from __future__ import annotations

import csv
import hashlib
import logging
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf

from training.kit import augment as aug
from training.kit import corpus as corpus_mod
from training.kit.hear_suite import (SAMPLE_RATE, BankAudio, Builder, finish, one_torch_thread, pools_by_unit,
                                     specs, vary, with_background)
from training.kit.superb_layouts import COUNTS as SUPERB_COUNTS
from training.kit.superb_layouts import _fit, _folder_safe, _write
from training.pretrain.data import index_audioset, read_vocabulary

log = logging.getLogger(__name__)

BALANCED_PER_CLASS = {"tiny": 2, "small": 5, "medium": 20}
EVAL_CLIPS = {"tiny": 16, "small": 120, "medium": 1000}
V2_RENDERINGS = {"tiny": 1, "small": 2, "medium": 6}  # renderings of each (voice, word)
EVAL_STREAM = 1_000_003  # the eval clips' generator: (seed, EVAL_STREAM), apart from the corpus shards' (seed, i)

# Speech Commands V2's 35 words.
SPC_V2_WORDS = ("backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go",
                "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven",
                "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero")


def balanced_subset(rows: list[tuple[str, tuple[int, ...]]], per_class: int, seed: int) -> list[str]:
    """Keys of a subset with at least per_class clips of every class (all of a rarer one's): classes are
    filled rarest first, from the clips in a seeded order, so common classes come along with rare ones."""
    order = np.random.default_rng([seed, 7]).permutation(len(rows))
    counts = Counter(c for _, labels in rows for c in labels)
    chosen: list[str] = []
    have: Counter = Counter()
    taken: set[int] = set()
    for cls in sorted(counts, key=lambda c: (counts[c], c)):
        for i in order:
            if have[cls] >= per_class:
                break
            key, labels = rows[i]
            if cls in labels and i not in taken:
                taken.add(i)
                chosen.append(key)
                have.update(labels)
    return sorted(chosen)


def build_audioset(records: list[dict], bank_dir: Path, out: Path, size: str, seed: int, corpus_dir: Path,
                   corpus_cfg: corpus_mod.CorpusConfig, heldout_ids: set[str]) -> dict:
    corpus_mod.write_audioset_layout(corpus_dir, out, progress=False)
    vocabulary = read_vocabulary(out / "class_labels_indices.csv")
    mids = [mid for mid, _ in vocabulary]
    items = index_audioset(out / "unbalanced_train_segments.csv", out / "audio", {m: i for i, m in enumerate(mids)})
    keep = set(balanced_subset([(it.key, it.labels) for it in items], BALANCED_PER_CLASS[size], seed))
    duration = corpus_cfg.clip_seconds
    corpus_mod.write_segments_csv(out / "balanced_train_segments.csv",
                                  [(it.key, duration, [mids[c] for c in it.labels]) for it in items if it.key in keep],
                                  f"{corpus_dir.name} (balanced subset)")
    # Evaluation clips: the corpus recipe over the held-out bank clips only.
    held = [r for r in records if r["id"] in heldout_ids]
    writer = corpus_mod.ShardWriter(held, bank_dir, replace(corpus_cfg, clips=EVAL_CLIPS[size]), seed)
    rng = np.random.default_rng([seed, EVAL_STREAM])
    rows, bank_ids = [], set()
    with one_torch_thread():
        for i in range(EVAL_CLIPS[size]):
            key = f"e{i:08d}"
            audio, meta = writer.clip(key, rng)
            (out / "audio" / f"{key}.flac").write_bytes(corpus_mod._flac_bytes(audio))
            rows.append((key, meta["duration"], [lab["mid"] for lab in meta["labels"]]))
            bank_ids.update(b for part in meta["parts"] for b in part["bank_ids"])
            if meta["bed"] and meta["bed"].get("bank_id"):
                bank_ids.add(meta["bed"]["bank_id"])
    corpus_mod.write_segments_csv(out / "eval_segments.csv", rows, "held-out bank clips")
    train_classes = {c for it in items for c in it.labels}
    eval_classes = {m for _, _, labels in rows for m in labels}
    return {"train_clips": len(items), "balanced_clips": len(keep), "eval_clips": len(rows),
            "eval_classes": len(eval_classes), "eval_classes_unseen_in_training":
                sorted(eval_classes - {mids[c] for c in train_classes}),
            "test": sorted(bank_ids), "skipped_bank_clips": dict(writer.skipped)}


def _take(n: int) -> str:
    """ESC-50's take letter: A, B, ..., Z, AA, AB, ..."""
    text = ""
    n += 1
    while n:
        n, r = divmod(n - 1, 26)
        text = chr(ord("A") + r) + text
    return text


def build_esc50(records: list[dict], bank_dir: Path, out: Path, size: str, seed: int) -> dict:
    """The mini_esc recipe (same seed, so the same clips as the HEAR task) in ESC-50's layout."""
    spec = specs(size)["mini_esc"]
    builder = Builder(records, bank_dir, size, seed)
    with one_torch_thread():
        data = builder.esc(spec)
    (out / "audio").mkdir(parents=True)
    (out / "meta").mkdir()
    rows, folds = [], {}
    for k, fold in enumerate(spec.splits, start=1):
        takes: Counter = Counter()
        folds[k] = sorted({s for clip in data.splits[fold] for s in clip.sources})
        for clip in data.splits[fold]:
            src = int(hashlib.sha1(clip.units[0].encode()).hexdigest()[:8], 16) % 1_000_000  # a freesound-like id
            take = _take(takes[src])
            takes[src] += 1
            target = data.vocabulary.index(clip.labels[0])
            name = f"{k}-{src}-{take}-{target}.wav"
            sf.write(out / "audio" / name, clip.audio, SAMPLE_RATE, subtype="PCM_16")
            rows.append([name, k, target, clip.labels[0], "False", src, take])
    with open(out / "meta" / "esc50.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writerows(rows)
    return {"clips": len(rows), "classes": data.vocabulary, "dropped_classes": data.dropped_classes,
            "folds": {str(k): ids for k, ids in folds.items()}, "test": sorted({i for ids in folds.values() for i in ids}),
            "skipped_bank_clips": dict(builder.audio.skipped)}


def build_speech_commands_v2(records: list[dict], bank_dir: Path, root: Path, size: str, seed: int,
                             voices: dict[str, list[str]]) -> dict:
    """Speech Commands V2's layout from the V2 words of the V1 layout's train / valid / test voices."""
    audio = BankAudio(bank_dir)
    rng = np.random.default_rng([seed, 3])
    words = [r for r in audio.usable([r for r in records if r.get("kind") == "speech"])
             if (r["labels"].get("word") or "").lower() in SPC_V2_WORDS]
    split_of = {v: "valid" for v in voices.get("valid", [])}
    split_of.update({v: "train" for v in voices.get("train", [])})  # a voice in both (a 2-voice bank) trains
    split_of.update({v: "test" for v in voices.get("test", [])})
    beds = audio.usable([r for r in records if r.get("kind") == "noise"])
    bed_pools = (pools_by_unit(beds, lambda r: r["group"], rng, "speech_commands_v2 beds")
                 if len({r["group"] for r in beds}) >= 2 else {"train": beds, "valid": beds, "test": beds})
    bed_audio = {s: [audio.load(r) for r in rs] for s, rs in bed_pools.items()}
    lists: dict[str, list[str]] = {"valid": [], "test": []}
    manifest: dict[str, set] = {"train": set(), "valid": set(), "test": set()}
    takes: dict[tuple[str, str], int] = defaultdict(int)
    with one_torch_thread():
        for rec in sorted(words, key=lambda r: r["id"]):
            split = split_of.get(rec["group"])
            if split is None:
                continue
            word = _folder_safe(rec["labels"]["word"])
            prefix = hashlib.sha1(f"{rec['group']}/{seed}".encode()).hexdigest()[:8]
            for _ in range(V2_RENDERINGS[size]):
                rel = f"{word}/{prefix}_nohash_{takes[word, prefix]}.wav"
                takes[word, prefix] += 1
                x = _fit(vary(audio.load(rec), rng, "word"), SAMPLE_RATE, rng)
                _write(root / rel, finish(with_background(x, bed_audio[split], rng, (5.0, 30.0), p=0.8), rng))
                manifest[split].add(rec["id"])
                if split in lists:
                    lists[split].append(rel)
        bed_seconds = SUPERB_COUNTS[size]["bed_seconds"][0]
        for i, rec in enumerate(bed_pools["train"]):
            x = aug.loop_to(audio.load(rec), bed_seconds * SAMPLE_RATE, rng)
            _write(root / "_background_noise_" / f"{_folder_safe(rec['group'])}_{i}.wav", finish(x, rng, (-6, -1)))
            manifest["train"].add(rec["id"])
    if not lists["test"] or not manifest["train"]:
        raise ValueError("speech_commands_v2: the V1 layout's voices say no V2 words in training or in test")
    (root / "validation_list.txt").write_text("".join(f"{rel}\n" for rel in sorted(lists["valid"])))
    (root / "testing_list.txt").write_text("".join(f"{rel}\n" for rel in sorted(lists["test"])))
    out = {s: sorted(ids) for s, ids in manifest.items()}
    out.update(words=sorted({_folder_safe(r["labels"]["word"]) for r in words if r["group"] in split_of}),
               skipped_bank_clips=dict(audio.skipped))
    return out


def build_finetune_layouts(records: list[dict], out_dir: Path, size: str, seed: int, bank_dir: Path,
                           corpus_dir: Path, corpus_cfg: corpus_mod.CorpusConfig, heldout_ids: set[str],
                           superb: dict) -> dict:
    """Write out_dir/{audioset, esc50, speech_commands_v2}; returns their manifests and, under "test_ids",
    every bank id a test split uses (which the caller checks against the corpus)."""
    out_dir = Path(out_dir)
    manifest = {
        "audioset": build_audioset(records, bank_dir, out_dir / "audioset", size, seed, corpus_dir, corpus_cfg,
                                   heldout_ids),
        "esc50": build_esc50(records, bank_dir, out_dir / "esc50", size, seed),
        "speech_commands_v2": build_speech_commands_v2(records, bank_dir, out_dir / "speech_commands_v2", size,
                                                       seed, superb["speech_commands"]["voices"]),
    }
    manifest["test_ids"] = sorted(set(manifest["audioset"]["test"]) | set(manifest["esc50"]["test"])
                                  | set(manifest["speech_commands_v2"]["test"]))
    return manifest
