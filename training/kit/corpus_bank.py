"""The corpus bank: source audio for pretraining only, many times the distinct sound of the evaluation bank.

The evaluation bank (training/kit/bank.py) takes a few files of each source: enough for the HEAR suite and the
SUPERB layouts, which then hold most of it out, so a kit's corpus mixes about 0.25 hours of distinct audio
(1,038 clips, 16 of them environmental, in the medium kit). The corpus bank adds what the same Debian packages
hold beyond that, and synthesis:

    speech   every further stamp description of tuxpaint (up to TUXPAINT_PER_LANGUAGE per language, any
             language the package has), every further ktuberling word and hedgewars voice line: recorded
             voices, the speaker labels of the evaluation bank's scheme
    env      every further effect file of the environmental packages (wesnoth, minetest, hedgewars, tuxpaint,
             freedesktop), up to ENV_MAX_S s; class: bank_sources.ENV_RULES' where a rule matches, else the
             file's name (the ontology maps what it knows, the rest is "Sounds of things")
    drum     every further hydrogen drum sample
    music    PHRASES_PER_PROGRAM seeded phrases (notes and chords on a scale, a tempo) for each of the 128
             General MIDI programs, rendered with the corpus's soundfont (FluidR3Mono_GM; the evaluation
             tasks hold out the other two)
    base     the evaluation bank's clips that the kit's evaluation does not hold out, transcoded

Hygiene: a file the evaluation bank uses is never planned again; records of a unit the kit holds out (voice,
soundfont, drum kit, source file) are dropped; the evaluation bank's test and held-out clips are not
transcoded. `mamclap data build --corpus-bank` then checks the corpus against the kit's holdout again.
Clips are stored in Ogg Opus (bank.CODECS), so ~3 hours travel in ~45 MB.

    mamclap data corpus-bank --size medium      (needs the kit's HEAR and SUPERB stages and the bank)
"""
from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import numpy as np

from training.kit import bank as bank_mod
from training.kit import bank_sources as bs
from training.kit.debian import package_root

log = logging.getLogger(__name__)

VERSION = 1
TUXPAINT_PER_LANGUAGE, TUXPAINT_MAX_S = 300, 8.0
ENV_MAX_S = 6.0
PHRASES_PER_PROGRAM, PHRASE_NOTES = 4, (6, 14)
CORPUS_SOUNDFONT = "FluidR3Mono_GM"
# Files of the environmental packages that are not environmental sound: tuxpaint's spoken numbers, symbols and
# letters (unlabelled speech).
NOT_ENV = re.compile(r"tuxpaint/stamps/symbols/|/(outlined|filled)/(lower|upper)case/")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10), "pentatonic": (0, 2, 4, 7, 9),
          "blues": (0, 3, 5, 6, 7, 10), "chromatic": tuple(range(12))}
# General MIDI level 1 program names (0-127) and its 16 families of 8 programs.
GM_PROGRAMS = (
    "acoustic_grand_piano bright_acoustic_piano electric_grand_piano honky_tonk_piano electric_piano_1 "
    "electric_piano_2 harpsichord clavinet celesta glockenspiel music_box vibraphone marimba xylophone "
    "tubular_bells dulcimer drawbar_organ percussive_organ rock_organ church_organ reed_organ accordion "
    "harmonica tango_accordion acoustic_guitar_nylon acoustic_guitar_steel electric_guitar_jazz "
    "electric_guitar_clean electric_guitar_muted overdriven_guitar distortion_guitar guitar_harmonics "
    "acoustic_bass electric_bass_finger electric_bass_pick fretless_bass slap_bass_1 slap_bass_2 synth_bass_1 "
    "synth_bass_2 violin viola cello contrabass tremolo_strings pizzicato_strings orchestral_harp timpani "
    "string_ensemble_1 string_ensemble_2 synth_strings_1 synth_strings_2 choir_aahs voice_oohs synth_voice "
    "orchestra_hit trumpet trombone tuba muted_trumpet french_horn brass_section synth_brass_1 synth_brass_2 "
    "soprano_sax alto_sax tenor_sax baritone_sax oboe english_horn bassoon clarinet piccolo flute recorder "
    "pan_flute blown_bottle shakuhachi whistle ocarina lead_square lead_sawtooth lead_calliope lead_chiff "
    "lead_charang lead_voice lead_fifths lead_bass_lead pad_new_age pad_warm pad_polysynth pad_choir "
    "pad_bowed pad_metallic pad_halo pad_sweep fx_rain fx_soundtrack fx_crystal fx_atmosphere fx_brightness "
    "fx_goblins fx_echoes fx_sci_fi sitar banjo shamisen koto kalimba bagpipe fiddle shanai tinkle_bell agogo "
    "steel_drums woodblock taiko_drum melodic_tom synth_drum reverse_cymbal guitar_fret_noise breath_noise "
    "seashore bird_tweet telephone_ring helicopter applause gunshot").split()
GM_FAMILIES = ("piano", "chromatic_percussion", "organ", "guitar", "bass", "strings", "ensemble", "brass", "reed",
               "pipe", "synth_lead", "synth_pad", "synth_effects", "ethnic", "percussive", "sound_effects")
assert len(GM_PROGRAMS) == 128


def _used_files(records: list[dict]) -> set[tuple[str, str]]:
    """(package, file inside it) of every evaluation-bank clip cut from a package file."""
    return {(r["source"]["package"], r["source"]["file"]) for r in records
            if r["source"].get("file") and not r["source"].get("synth")}


def _env_class(pkg: str, rel: str) -> tuple[str, str | None]:
    for rpkg, pattern, cls, detail_group in bs.ENV_RULES:
        m = pattern.search(rel) if rpkg == pkg else None
        if m:
            return cls, (m.group(detail_group) if detail_group else None)
    return re.sub(r"_?\d+$", "", bs._slug(Path(rel).stem)) or "sound", None


def plan_speech(cache: Path, rng, used: set, skipped: list) -> list[dict]:
    import soundfile as sf
    jobs = []
    pkg = "tuxpaint-stamps-default"
    root = package_root(pkg, cache)
    by_lang: dict[str, list[str]] = {}
    for rel in bs._files(root, "usr/share/tuxpaint/stamps"):
        m = re.search(r"_desc(?:_([a-z]{2,3}))?\.ogg$", rel)
        if m and (pkg, rel) not in used:
            by_lang.setdefault(m.group(1) or "en", []).append(rel)
    for lang, cands in sorted(by_lang.items()):
        speaker, suffix, taken = f"tuxpaint-{lang}", "_desc.ogg" if lang == "en" else f"_desc_{lang}.ogg", 0
        for i in rng.permutation(len(cands)):
            if taken >= TUXPAINT_PER_LANGUAGE:
                break
            rel = cands[int(i)]
            try:
                dur = sf.info(str(root / rel)).duration
            except Exception as e:  # noqa: BLE001 - an unreadable header: skip this file, say why
                skipped.append({"file": f"{pkg}:{rel}", "reason": f"unreadable: {e}"})
                continue
            if not 0.3 <= dur <= TUXPAINT_MAX_S:
                continue
            text = bs._tuxpaint_text(root / (rel[: -len(suffix)] + ".txt"), lang)
            stem = Path(rel).name[: -len(suffix)]
            jobs.append(bs._file_job("speech", f"{speaker}-{bs._slug(stem)}", speaker, bs._source(pkg, cache, rel),
                                     bs._speech(text, None, lang, speaker, "unknown", "recorded"), root, rel))
            taken += 1
    pkg = "ktuberling-data"
    root = package_root(pkg, cache)
    for lang_dir in sorted(p for p in (root / "usr/share/ktuberling/sounds").iterdir() if p.is_dir() and "@" not in p.name):
        speaker = f"ktuberling-{lang_dir.name}"
        for rel in bs._files(root, str(lang_dir.relative_to(root))):
            if (pkg, rel) in used:
                continue
            stem = Path(rel).stem
            word = re.sub(r"^(egypt|moon|pizzeria|tv)_", "", stem).replace("_", " ")
            jobs.append(bs._file_job("speech", f"{speaker}-{bs._slug(stem)}", speaker, bs._source(pkg, cache, rel),
                                     bs._speech(word, word, lang_dir.name, speaker, "unknown", "recorded"), root, rel))
    pkg = "hedgewars-data"
    root = package_root(pkg, cache)
    voices = root / "usr/share/games/hedgewars/Data/Sounds/voices"
    for pack in sorted(p.name for p in voices.iterdir() if p.is_dir()):
        lang = pack.split("_")[1] if pack.startswith("Default_") or pack == "Russian_pl" else "en"
        speaker = f"hedgewars-{bs._slug(pack)}"
        for rel in bs._files(root, str((voices / pack).relative_to(root))):
            if (pkg, rel) in used:
                continue
            stem = Path(rel).stem.lower()
            text = bs.HEDGEWARS_TEXT.get(stem, stem)
            jobs.append(bs._file_job("speech", f"{speaker}-{bs._slug(stem)}", speaker, bs._source(pkg, cache, rel),
                                     bs._speech(text, None if " " in text else text, lang, speaker, "unknown",
                                                "recorded", bs.HEDGEWARS_ACCENTS.get(pack)), root, rel))
    return jobs


def plan_env(cache: Path, rng, used: set, skipped: list) -> list[dict]:
    jobs = []
    noise_files = {(pkg, rel) for pkg in {r[0] for r in bs.NOISE_RULES}
                   for rel in bs._files(package_root(pkg, cache)) if any(p == pkg and pat.search(rel)
                                                                         for p, pat, _ in bs.NOISE_RULES)}
    for pkg in sorted({r[0] for r in bs.ENV_RULES}):
        root = package_root(pkg, cache)
        for rel in bs._files(root):
            if ("/voices/" in rel or "_desc" in rel or "/music/" in rel or (pkg, rel) in used
                    or (pkg, rel) in noise_files or NOT_ENV.search(rel)):
                continue
            cls, detail = _env_class(pkg, rel)
            name = f"x-{bs._slug(pkg.split('-')[0])}-{bs._slug(str(Path(rel).with_suffix('')))[-60:]}"
            jobs.append(bs._file_job("env", name, f"{pkg}:{rel}", bs._source(pkg, cache, rel),
                                     {"class": cls, "detail": detail}, root, rel, max_s=ENV_MAX_S))
    return jobs


def plan_drums(cache: Path, rng, used: set, skipped: list) -> list[dict]:
    jobs = []
    for pkg in ("hydrogen-data", "hydrogen-drumkits"):
        root = package_root(pkg, cache)
        for rel in bs._files(root, "usr/share/hydrogen/data/drumkits"):
            if (pkg, rel) in used:
                continue
            kit = bs._slug(Path(rel).parts[-2])
            stroke = bs.stroke_of(Path(rel).stem)
            if stroke is None:
                continue
            jobs.append(bs._file_job("drum", f"x-{kit}-{bs._slug(Path(rel).stem)[-60:]}", kit, bs._source(pkg, cache, rel),
                                     {"stroke": stroke, "kit": kit}, root, rel, max_s=bs.DRUM_MAX_S))
    return jobs


def phrase_notes(rng: np.random.Generator) -> tuple[list[list], dict]:
    """Seeded [[onset s, length s, pitch, velocity], ...] of one phrase and what it is."""
    scale_name = list(SCALES)[int(rng.integers(len(SCALES)))]
    scale, root = SCALES[scale_name], int(rng.integers(45, 70))
    beat = 60.0 / float(rng.uniform(70, 170))
    degree, t, notes = int(rng.integers(0, len(scale))), 0.0, []
    for _ in range(int(rng.integers(*PHRASE_NOTES))):
        degree = int(np.clip(degree + rng.integers(-3, 4), -len(scale), 2 * len(scale)))
        octave, step = divmod(degree, len(scale))
        pitch = int(np.clip(root + 12 * octave + scale[step], 24, 100))
        length = beat * float(rng.choice([0.5, 1.0, 1.0, 2.0]))
        velocity = int(rng.integers(50, 121))
        chord = [0, 4, 7] if rng.random() < 0.25 else [0]
        notes += [[round(t, 4), round(length * 0.95, 4), min(127, pitch + c), velocity] for c in chord]
        t += length
        if t > 6.0:
            break
    return notes, {"scale": scale_name, "root": root, "bpm": round(60.0 / beat, 1)}


def plan_music(cache: Path, rng, used: set, skipped: list) -> list[dict]:
    pkg, rel = bs.SOUNDFONTS[CORPUS_SOUNDFONT]
    root = package_root(pkg, cache)
    jobs = []
    for program, inst in enumerate(GM_PROGRAMS):
        for k in range(PHRASES_PER_PROGRAM):
            notes, _ = phrase_notes(rng)
            pitches = sorted(n[2] for n in notes)
            jobs.append({"id": f"music/x-{CORPUS_SOUNDFONT}-{inst}-phrase{k}", "kind": "music", "group": CORPUS_SOUNDFONT,
                         "source": bs._source(pkg, cache, rel, "fluidsynth"),
                         "labels": {"instrument": inst, "family": GM_FAMILIES[program // 8],
                                    "midi_pitch": pitches[len(pitches) // 2],
                                    "velocity": int(np.median([n[3] for n in notes])), "soundfont": CORPUS_SOUNDFONT},
                         "render": {"op": "phrase", "soundfont": str(root / rel), "program": program, "notes": notes}})
    return jobs


PLANNERS = {"speech": plan_speech, "env": plan_env, "drums": plan_drums, "music": plan_music}


def unit_values(rec: dict) -> set[str]:
    """The names a task may hold a record out by (group, voice, soundfont, kit): build._unit_values'."""
    lab = rec.get("labels") or {}
    return {str(v) for v in (rec.get("group"), lab.get("speaker"), lab.get("soundfont"), lab.get("kit")) if v}


def plan(cache: Path, base_records: list[dict], base_dir: Path, holdout: dict, seed: int = 0,
         limit: int | None = None) -> tuple[list[dict], list[dict], dict]:
    """(jobs, skipped, counts): the new sources not held out, then the base clips that the holdout allows.

    limit: at most this many jobs per planner (and base clips), evenly spread (tests)."""
    used, skipped, jobs, counts = _used_files(base_records), [], [], {}
    units, excluded = holdout["heldout_units"], holdout["test_ids"] | holdout["heldout_ids"]
    for k, (name, planner) in enumerate(PLANNERS.items()):
        got = planner(Path(cache), np.random.default_rng([seed, 100 + k]), used, skipped)
        kept = [j for j in got if not unit_values(j) & units]
        counts[name] = {"planned": len(got), "held_out_unit": len(got) - len(kept)}
        if limit is not None and len(kept) > limit:
            kept = [kept[i] for i in np.unique(np.linspace(0, len(kept) - 1, limit).round().astype(int))]
        jobs += kept
    # Every base id is reserved (an excluded one too: a new clip under a held-out clip's id would read as a
    # leak); two files whose names slug alike (theme folders, .ogg beside .wav) get numbered ids.
    seen = {r["id"] for r in base_records}
    for j in jobs:
        jid, n = j["id"], 1
        while jid in seen:
            n += 1
            jid = f"{j['id']}-{n}"
        j["id"] = jid
        seen.add(jid)
    base = [r for r in base_records if r["id"] not in excluded and not unit_values(r) & units]
    counts["base"] = {"eligible": len(base), "held_out": len(base_records) - len(base)}
    if limit is not None and len(base) > limit:
        base = [base[i] for i in np.unique(np.linspace(0, len(base) - 1, limit).round().astype(int))]
    for r in base:
        jobs.append({**{k: r[k] for k in ("id", "kind", "group", "source", "labels")},
                     "render": {"op": "file", "path": str(Path(base_dir) / r["path"]), "start": 0.0, "max_s": None}})
    return sorted(jobs, key=lambda j: j["id"]), skipped, counts


def build_corpus_bank(out_dir: Path, kit: Path, bank_dir: Path, cache_dir: Path, seed: int = 0, workers: int = 2,
                      limit: int | None = None, progress: bool = True) -> dict:
    """Write the corpus bank for `kit` (its hear/ and superb/ stages give the holdout) to out_dir."""
    from training.kit import build
    t0 = time.time()
    kit = Path(kit)
    stages = {}
    for name in ("hear", "superb"):
        path = kit / name / "stage.json"
        if not path.is_file():
            raise FileNotFoundError(f"expected a built kit's {name} stage at {path} (its holdout decides what the "
                                    "corpus bank may hold): run `mamclap data build` for that size first")
        stages[name] = json.loads(path.read_text())
    base = build.load_records(bank_dir)
    holdout = build.evaluation_holdout(stages["hear"], stages["superb"], base)
    jobs, skipped, counts = plan(cache_dir, base, bank_dir, holdout, seed, limit)
    meta = {"version": VERSION, "kind": "corpus bank", "seed": seed, "limit": limit, "kit": kit.name,
            "holdout_digest": holdout_digest(holdout), "plan": counts}
    summary = bank_mod.write_bank(out_dir, jobs, skipped, cache_dir, workers=workers, progress=progress,
                                  codec="opus", meta=meta, t0=t0)
    return summary


def holdout_digest(holdout: dict) -> str:
    """A digest of what a kit holds out, stored in the corpus bank and compared when a kit uses it."""
    import hashlib
    text = json.dumps({k: sorted(holdout[k]) for k in ("test_ids", "heldout_units", "heldout_ids")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()
