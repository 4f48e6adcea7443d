"""What goes into the source bank: one planner per source, each turning an unpacked Debian package (or a
synthesizer) into jobs. A job is a bank record without its duration plus a "render" recipe that
bank.render_job() executes; planners read file names and small text files only, never audio.

Every random choice (which words, voices, pitches, segments) comes from the generator passed in, so a seed
fixes the plan. Planners append (file, reason) to `skipped` for sources they cannot use.
"""
from __future__ import annotations

import functools
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from training.kit.debian import package_info, package_root, tool_versions

KWS_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# Speech Commands' auxiliary words: the `_unknown_` class.
UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin", "nine",
                 "one", "seven", "sheila", "six", "three", "tree", "two", "wow", "zero", "learn", "follow",
                 "forward", "backward", "visual")

# espeak-ng English voices -> accent label.
ESPEAK_VOICES = {"en-gb": "british", "en-us": "american", "en-gb-scotland": "scottish",
                 "en-gb-x-rp": "received_pronunciation", "en-gb-x-gbclan": "lancastrian",
                 "en-gb-x-gbcwmd": "west_midlands", "en-029": "caribbean"}
# espeak-ng variants -> (gender, voice_type). Each voice gets a seeded draw of them.
ESPEAK_VARIANTS = {
    **{f"m{i}": ("male", "synthetic") for i in range(1, 9)},
    **{f"f{i}": ("female", "synthetic") for i in range(1, 6)},
    "klatt": ("male", "synthetic"), "klatt2": ("male", "synthetic"), "klatt3": ("male", "synthetic"),
    "croak": ("male", "synthetic"), "grandpa": ("male", "synthetic"), "grandma": ("female", "synthetic"),
    "Annie": ("female", "synthetic"), "Alicia": ("female", "synthetic"), "linda": ("female", "synthetic"),
    "steph": ("female", "synthetic"), "belinda": ("female", "synthetic"), "aunty": ("female", "synthetic"),
    "whisper": ("male", "whisper"), "whisperf": ("female", "whisper"),
}
VARIANTS_PER_VOICE = 6
ESPEAK_UNKNOWN_PER_VOICE = 6
# flite voices (kal is the 8 kHz build of kal16's speaker).
FLITE_VOICES = {"kal16": "male", "awb": "male", "rms": "male", "slt": "female"}

KTUBERLING_MIN_WORDS, KTUBERLING_WORDS = 15, 30
TUXPAINT_LANGS = ("en", "fr", "ru", "ro", "ca", "bg", "es", "be", "el", "da")
TUXPAINT_PHRASES, TUXPAINT_MAX_S = 20, 3.5
HEDGEWARS_PHRASES = 12
HEDGEWARS_ACCENTS = {"British": "british", "HillBilly": "southern_us", "Russian": "russian",
                     "Russian_pl": "russian", "Pirate": "pirate", "Surfer": "surfer", "Mobster": "mobster",
                     "Robot": "robot", "Singer": "singer"}
HEDGEWARS_TEXT = {  # run-together file names -> text
    "byebye": "bye bye", "comeonthen": "come on then", "cutitout": "cut it out", "enemydown": "enemy down",
    "firstblood": "first blood", "flyaway": "fly away", "gonnagetyou": "gonna get you",
    "illgetyou": "I'll get you", "justyouwait": "just you wait", "leavemealone": "leave me alone",
    "ohdear": "oh dear", "runaway": "run away", "sameteam": "same team", "solong": "so long",
    "takecover": "take cover", "thisoneismine": "this one is mine", "uh-oh": "uh oh", "watchit": "watch it",
    "watchthis": "watch this", "whatthe": "what the", "yessir": "yes sir",
    "youllregretthat": "you'll regret that",
}
HEDGEWARS_NONVERBAL = re.compile(r"^(ow\d|ooff\d|jump\d|firepunch\d|laugh|poison|hmm|nooo|ouch|oops)")

# General MIDI instruments: name -> (program, family, lowest, highest MIDI pitch playable).
INSTRUMENTS = {
    "acoustic_grand_piano": (0, "keyboard", 21, 108), "vibraphone": (11, "mallet", 53, 89),
    "drawbar_organ": (16, "organ", 36, 96), "acoustic_guitar_nylon": (24, "guitar", 40, 84),
    "electric_bass_finger": (33, "bass", 28, 67), "violin": (40, "string", 55, 100),
    "cello": (42, "string", 36, 76), "choir_aahs": (52, "vocal", 48, 79), "trumpet": (56, "brass", 54, 86),
    "french_horn": (60, "brass", 41, 77), "alto_sax": (65, "reed", 49, 81), "clarinet": (71, "reed", 50, 91),
    "flute": (73, "flute", 60, 96), "lead_square": (80, "synth_lead", 36, 96),
}
SOUNDFONTS = {  # soundfont label -> (package, file inside the package)
    "TimGM6mb": ("timgm6mb-soundfont", "usr/share/sounds/sf2/TimGM6mb.sf2"),
    "MuseScore_General_Lite": ("musescore-general-soundfont-small",
                               "usr/share/sounds/sf3/MuseScore_General_Lite.sf3"),
    "FluidR3Mono_GM": ("fluidr3mono-gm-soundfont", "usr/share/fluidr3mono-gm-soundfont/FluidR3Mono_GM.sf3"),
}
PITCH_STEP = 3  # semitones between rendered notes; soundfont k starts at offset k, so together they cover all
VELOCITIES = (70, 100, 120)
NOTE_HOLD_S, NOTE_RELEASE_S = 0.8, 0.3

# drumkit.xml instrument name -> stroke; first match wins; unmatched instruments are not used.
STROKE_RULES = [(re.compile(p), s) for p, s in (
    (r"rim ?shot|rim click", "rimshot"), (r"side ?stick|\bstick\b", "side_stick"), (r"snare", "snare"),
    (r"kick|bass ?drum|bassdrum", "kick"), (r"(hat|hh).*(pedal|pd)|pedal (hh|hat)|hat pedal", "pedal_hihat"),
    (r"(hat|hh).*(op|semi|swish)|open (hh|hat)|\bohh\b", "open_hihat"),
    (r"(hat|hh).*(closed|cl\b|choke)|closed (hh|hat)|hat closed|^(hat|hh)\b", "closed_hihat"),
    (r"\btom", "tom"), (r"crash", "crash"), (r"ride bell|\bbell\b|ride-cup|ride cup", "ride_bell"),
    (r"ride", "ride"), (r"splash", "splash"), (r"china", "china"), (r"cymbal", "cymbal"),
    (r"clap", "clap"), (r"cowbell", "cowbell"), (r"tambourine", "tambourine"), (r"shaker|maraca", "shaker"),
    (r"woodblock|wood block", "woodblock"), (r"clave", "clave"), (r"conga", "conga"), (r"bongo", "bongo"),
    (r"djembe", "djembe"), (r"cajon", "cajon"), (r"agogo", "agogo"), (r"snap", "finger_snap"),
)]
DRUM_SAMPLES_PER_STROKE, DRUM_MAX_S = 2, 1.5

# Effects: (package, regex on the path inside the package, class, detail group or None); first match wins.
ENV_RULES = [(pkg, re.compile(p), c, d) for pkg, p, c, d in (
    ("minetest-data", r"default_(\w+?)_footstep", "footsteps", 1),
    ("minetest-data", r"doors_(\w+?)_?(door|fencegate)?_(open|close)|xpanes_steel_bar_door", "door", None),
    ("minetest-data", r"break_glass", "glass", None),
    ("minetest-data", r"default_(dig|dug|gravel_dig|gravel_dug|ice_dig|dug_node|dug_metal)", "digging", None),
    ("minetest-data", r"fire_fire\.", "fire", None),
    ("minetest-data", r"tnt_explode", "explosion", None),
    ("wesnoth-1.16-data", r"core/sounds/horse-", "horse", None),
    ("wesnoth-1.16-data", r"core/sounds/wolf-", "wolf", None),
    ("wesnoth-1.16-data", r"core/sounds/(explosion|cave-in)", "explosion", None),
    ("wesnoth-1.16-data", r"core/sounds/(gunshot|thunderstick)", "gunshot", None),
    ("wesnoth-1.16-data", r"core/sounds/(fire\.wav|flame-big|torch)", "fire", None),
    ("wesnoth-1.16-data", r"core/sounds/water-blast", "water", None),
    ("wesnoth-1.16-data", r"core/sounds/lightning", "thunder", None),
    ("wesnoth-1.16-data", r"1\.16/sounds/bell\.wav", "bell", None),
    ("hedgewars-data", r"Sounds/explosion", "explosion", None),
    ("hedgewars-data", r"Sounds/(shotgunfire|gun\.ogg|minigun)", "gunshot", None),
    ("hedgewars-data", r"Sounds/(splash|Droplet\d|planewater|rubberduck_water)", "water", None),
    ("hedgewars-data", r"Sounds/steps", "footsteps", None),
    ("hedgewars-data", r"Sounds/(hammer|pickhammer)", "hammer", None),
    ("hedgewars-data", r"Sounds/bee\.ogg", "insect", None),
    ("hedgewars-data", r"Sounds/(plane|rcplane)\.ogg", "engine", None),
    ("hedgewars-data", r"Sounds/flamethrower", "fire", None),
    ("hedgewars-data", r"Sounds/shutterclick", "camera", None),
    ("sound-theme-freedesktop", r"/(bell|complete)\.oga", "bell", None),
    ("sound-theme-freedesktop", r"/alarm-clock-elapsed", "alarm", None),
    ("sound-theme-freedesktop", r"/phone-(incoming|outgoing)", "telephone", None),
    ("sound-theme-freedesktop", r"/camera-shutter", "camera", None),
    ("tuxpaint-stamps-default", r"/camera_35mm\.ogg", "camera", None),
    ("tuxpaint-stamps-default", r"/birds/(rooster|hen|turkey)\.ogg", "chicken", None),
    ("tuxpaint-stamps-default", r"/birds/(duck|drake|gander)\.ogg", "duck", None),
    ("tuxpaint-stamps-default", r"/birds/[^/]+\.ogg", "bird", None),
    ("tuxpaint-stamps-default", r"/dogs/(dog|dingo|fox)\.ogg", "dog", None),
    ("tuxpaint-stamps-default", r"/bovines/(cow\w*|bull|bison)\.ogg", "cow", None),
    ("tuxpaint-stamps-default", r"/bovines/(sheep\w*|ram|\w*goat)\.ogg", "sheep", None),
    ("tuxpaint-stamps-default", r"/(pig\w*)\.ogg", "pig", None),
    ("tuxpaint-stamps-default", r"/equines/horse\.ogg", "horse", None),
    ("tuxpaint-stamps-default", r"/insects/[^/]+\.ogg", "insect", None),
    ("tuxpaint-stamps-default", r"/mammals/.+\.ogg", "mammal", None),
    ("tuxpaint-stamps-default", r"/tools/(hammer|mallet\w*)\.ogg", "hammer", None),
    ("tuxpaint-stamps-default", r"/vehicles/.+\.ogg", "engine", None),
)]
ENV_MIN_FILES, ENV_MAX_FILES, ENV_MAX_S = 3, 24, 3.0

# Noise beds: (package, regex, class); long loops cut into NOISE_SEGMENT_S pieces.
NOISE_RULES = [(pkg, re.compile(p), c) for pkg, p, c in (
    ("wesnoth-1.16-data", r"ambient/(birds\d|morning)\.ogg", "birdsong_ambience"),
    ("wesnoth-1.16-data", r"ambient/night\.ogg", "night"),
    ("wesnoth-1.16-data", r"ambient/campfire\.ogg", "campfire"),
    ("wesnoth-1.16-data", r"ambient/ship\.ogg", "ship"),
    ("minetest-data", r"env_sounds_water\.\d", "stream"),
    ("minetest-data", r"env_sounds_lava\.\d", "lava"),
    ("minetest-data", r"fire_(small|large)\.ogg", "fire"),
    ("minetest-data", r"default_furnace_active", "fire"),
)]
NOISE_SEGMENT_S, NOISE_SEGMENTS_PER_FILE = 4.0, 2

AUDIO_EXT = (".ogg", ".oga", ".opus", ".wav", ".flac")


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", s.lower()).strip("_")


TOOL_LICENSES = {"espeak-ng": "GPL-3+", "flite": "BSD-style (CMU Flite)"}


@functools.cache
def _tool_version(name: str) -> str | None:
    return tool_versions((name,))[name]


def _source(pkg: str, cache: Path, file: str | None, synth: str | None = None) -> dict:
    if pkg in TOOL_LICENSES:  # synthesized: the synthesizer's own package
        info = {"version": _tool_version(pkg), "license": TOOL_LICENSES[pkg]}
    else:
        info = package_info(pkg, cache)
    return {"package": pkg, "version": info["version"], "license": info["license"], "file": file, "synth": synth}


def _files(root: Path, under: str = "") -> list[str]:
    """Audio files of a package root, as sorted paths relative to it."""
    prefix = under.rstrip("/") + "/" if under else ""
    return [f for f in _all_files(str(root)) if f.startswith(prefix)]


@functools.lru_cache(maxsize=32)
def _all_files(root: str) -> list[str]:
    out = []
    for d, _, names in os.walk(root):  # os.walk: a directory read per folder, no stat per file
        rel = os.path.relpath(d, root)
        out += [os.path.normpath(os.path.join(rel, n)) for n in names if n.lower().endswith(AUDIO_EXT)]
    return sorted(out)


def _pick(rng: np.random.Generator, items: list, n: int) -> list:
    """n items drawn without replacement, kept in their original (sorted) order."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in sorted(rng.choice(len(items), size=n, replace=False))]


def _file_job(kind, name, group, src, labels, root, rel, start=0.0, max_s=None) -> dict:
    return {"id": f"{kind}/{name}", "kind": kind, "group": group, "source": src, "labels": labels,
            "render": {"op": "file", "path": str(root / rel), "start": start, "max_s": max_s}}


def _speech(text, word, lang, speaker, gender, voice_type, accent=None) -> dict:
    return {"text": text, "word": word, "language": lang, "speaker": speaker, "gender": gender,
            "voice_type": voice_type, "accent": accent}


def plan_ktuberling(cache: Path, rng, skipped: list) -> list[dict]:
    pkg = "ktuberling-data"
    root = package_root(pkg, cache)
    jobs = []
    sounds = root / "usr/share/ktuberling/sounds"
    for lang_dir in sorted(p for p in sounds.iterdir() if p.is_dir() and "@" not in p.name):
        files = _files(root, str(lang_dir.relative_to(root)))
        if len(files) < KTUBERLING_MIN_WORDS:
            continue
        lang, speaker = lang_dir.name, f"ktuberling-{lang_dir.name}"
        for rel in _pick(rng, files, KTUBERLING_WORDS):
            stem = Path(rel).stem
            word = re.sub(r"^(egypt|moon|pizzeria|tv)_", "", stem).replace("_", " ")  # theme prefix
            jobs.append(_file_job("speech", f"{speaker}-{_slug(stem)}", speaker, _source(pkg, cache, rel),
                                  _speech(word, word, lang, speaker, "unknown", "recorded"), root, rel))
    return jobs


def _tuxpaint_text(txt: Path, lang: str) -> str | None:
    try:
        lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    if lang == "en":
        return lines[0].strip() if lines else None
    for line in lines:
        if line.startswith(f"{lang}.utf8="):
            return line.split("=", 1)[1].strip()
    return None


def plan_tuxpaint_speech(cache: Path, rng, skipped: list) -> list[dict]:
    """Stamp descriptions read by one speaker per language; phrases (word is null)."""
    import soundfile as sf
    pkg = "tuxpaint-stamps-default"
    root = package_root(pkg, cache)
    all_desc = [r for r in _files(root, "usr/share/tuxpaint/stamps") if "_desc" in r]
    jobs = []
    for lang in TUXPAINT_LANGS:
        suffix = "_desc.ogg" if lang == "en" else f"_desc_{lang}.ogg"
        cands = [r for r in all_desc if r.endswith(suffix)]
        order = rng.permutation(len(cands))
        speaker, taken = f"tuxpaint-{lang}", 0
        for i in order:
            if taken >= TUXPAINT_PHRASES:
                break
            rel = cands[i]
            text = _tuxpaint_text(root / (rel[: -len(suffix)] + ".txt"), lang)
            try:
                dur = sf.info(str(root / rel)).duration
            except Exception as e:  # noqa: BLE001 - any unreadable header means: skip this file
                skipped.append({"file": f"{pkg}:{rel}", "reason": f"unreadable: {e}"})
                continue
            if not text or not 0.3 <= dur <= TUXPAINT_MAX_S:
                continue
            stem = Path(rel).name[: -len(suffix)]
            jobs.append(_file_job("speech", f"{speaker}-{_slug(stem)}", speaker, _source(pkg, cache, rel),
                                  _speech(text, None, lang, speaker, "unknown", "recorded"), root, rel))
            taken += 1
    return jobs


def plan_hedgewars_speech(cache: Path, rng, skipped: list) -> list[dict]:
    pkg = "hedgewars-data"
    root = package_root(pkg, cache)
    voices = root / "usr/share/games/hedgewars/Data/Sounds/voices"
    jobs = []
    for pack in sorted(p.name for p in voices.iterdir() if p.is_dir()):
        files = [r for r in _files(root, str((voices / pack).relative_to(root)))
                 if not HEDGEWARS_NONVERBAL.match(Path(r).stem.lower())]
        lang = pack.split("_")[1] if pack.startswith("Default_") or pack == "Russian_pl" else "en"
        speaker = f"hedgewars-{_slug(pack)}"
        for rel in _pick(rng, files, HEDGEWARS_PHRASES):
            stem = Path(rel).stem.lower()
            text = HEDGEWARS_TEXT.get(stem, stem)
            word = None if " " in text else text
            jobs.append(_file_job("speech", f"{speaker}-{_slug(stem)}", speaker, _source(pkg, cache, rel),
                                  _speech(text, word, lang, speaker, "unknown", "recorded",
                                          HEDGEWARS_ACCENTS.get(pack)), root, rel))
    return jobs


def plan_espeak(cache: Path, rng, skipped: list) -> list[dict]:
    """Keywords and _unknown_ words from espeak-ng voice x variant configurations, seeded pitch/speed."""
    jobs = []
    variants = sorted(ESPEAK_VARIANTS)
    for voice, accent in ESPEAK_VOICES.items():
        for variant in _pick(rng, variants, VARIANTS_PER_VOICE):
            gender, vtype = ESPEAK_VARIANTS[variant]
            pitch, speed = int(rng.integers(25, 76)), int(rng.integers(130, 186))
            speaker = f"espeak-{voice}-{_slug(variant)}"
            words = list(KWS_WORDS) + _pick(rng, list(UNKNOWN_WORDS), ESPEAK_UNKNOWN_PER_VOICE)
            for w in words:
                jobs.append({"id": f"speech/{speaker}-{w}", "kind": "speech", "group": speaker,
                             "source": _source("espeak-ng", cache, None, "espeak-ng"),
                             "labels": _speech(w, w, "en", speaker, gender, vtype, accent),
                             "render": {"op": "espeak", "voice": f"{voice}+{variant}", "pitch": pitch,
                                        "speed": speed, "text": w}})
    return jobs


def plan_flite(cache: Path, rng, skipped: list) -> list[dict]:
    jobs = []
    for voice, gender in FLITE_VOICES.items():
        speaker = f"flite-{voice}"
        for w in KWS_WORDS + UNKNOWN_WORDS:
            jobs.append({"id": f"speech/{speaker}-{w}", "kind": "speech", "group": speaker,
                         "source": _source("flite", cache, None, "flite"),
                         "labels": _speech(w, w, "en", speaker, gender, "synthetic", "american"
                                           if voice in ("slt", "rms", "kal16") else "scottish"),
                         "render": {"op": "flite", "voice": voice, "text": w}})
    return jobs


def plan_music(cache: Path, rng, skipped: list) -> list[dict]:
    jobs = []
    for k, (sf_name, (pkg, rel)) in enumerate(SOUNDFONTS.items()):
        root = package_root(pkg, cache)
        for inst, (program, family, lo, hi) in INSTRUMENTS.items():
            for pitch in range(lo + (k - lo) % PITCH_STEP, hi + 1, PITCH_STEP):
                velocity = int(rng.choice(VELOCITIES))
                jobs.append({"id": f"music/{sf_name}-{inst}-{pitch:03d}", "kind": "music", "group": sf_name,
                             "source": _source(pkg, cache, rel, "fluidsynth"),
                             "labels": {"instrument": inst, "family": family, "midi_pitch": pitch,
                                        "velocity": velocity, "soundfont": sf_name},
                             "render": {"op": "note", "soundfont": str(root / rel), "program": program,
                                        "pitch": pitch, "velocity": velocity}})
    return jobs


def stroke_of(name: str) -> str | None:
    s = name.lower()
    for pattern, stroke in STROKE_RULES:
        if pattern.search(s):
            return stroke
    return None


def plan_drums(cache: Path, rng, skipped: list) -> list[dict]:
    jobs = []
    for pkg in ("hydrogen-data", "hydrogen-drumkits"):
        root = package_root(pkg, cache)
        for xml in sorted((root / "usr/share/hydrogen/data/drumkits").glob("*/drumkit.xml")):
            kit = _slug(xml.parent.name)
            try:
                tree = ET.parse(xml).getroot()
            except (ET.ParseError, OSError) as e:
                skipped.append({"file": f"{pkg}:{xml.relative_to(root)}", "reason": f"bad drumkit.xml: {e}"})
                continue
            ns = tree.tag[: tree.tag.index("}") + 1] if tree.tag.startswith("{") else ""
            by_stroke: dict[str, list[tuple[str, str]]] = {}
            for inst in tree.iter(ns + "instrument"):
                name = (inst.findtext(ns + "name") or "").strip()
                stroke = stroke_of(name)
                files = [e.text for e in inst.iter(ns + "filename") if e.text]
                if stroke and files:
                    # one layer per instrument, the middle one (a medium velocity) where there are several
                    by_stroke.setdefault(stroke, []).append((name, files[len(files) // 2]))
            for stroke, insts in sorted(by_stroke.items()):
                for name, fname in _pick(rng, insts, DRUM_SAMPLES_PER_STROKE):
                    rel = str((xml.parent / fname).relative_to(root))
                    jobs.append(_file_job("drum", f"{kit}-{stroke}-{_slug(name)}", kit, _source(pkg, cache, rel),
                                          {"stroke": stroke, "kit": kit}, root, rel, max_s=DRUM_MAX_S))
    return jobs


def plan_env(cache: Path, rng, skipped: list) -> list[dict]:
    by_class: dict[str, list[tuple]] = {}
    roots = {}
    for pkg in sorted({r[0] for r in ENV_RULES}):
        roots[pkg] = root = package_root(pkg, cache)
        for rel in _files(root):
            if "/voices/" in rel or "_desc" in rel:
                continue
            for rpkg, pattern, cls, detail_group in ENV_RULES:
                m = pattern.search(rel) if rpkg == pkg else None
                if m:
                    detail = m.group(detail_group) if detail_group else None
                    by_class.setdefault(cls, []).append((pkg, rel, detail))
                    break
    jobs = []
    for cls, items in sorted(by_class.items()):
        if len(items) < ENV_MIN_FILES:
            skipped.append({"file": f"env class {cls}", "reason": f"only {len(items)} source files "
                                                                  f"(< {ENV_MIN_FILES})"})
            continue
        for pkg, rel, detail in _pick(rng, items, ENV_MAX_FILES):
            name = f"{cls}-{_slug(pkg.split('-')[0])}-{_slug(Path(rel).stem)}"
            jobs.append(_file_job("env", name, f"{pkg}:{rel}", _source(pkg, cache, rel),
                                  {"class": cls, "detail": detail}, roots[pkg], rel, max_s=ENV_MAX_S))
    return jobs


def plan_noise(cache: Path, rng, skipped: list) -> list[dict]:
    import soundfile as sf
    jobs = []
    for pkg in sorted({r[0] for r in NOISE_RULES}):
        root = package_root(pkg, cache)
        for rel in _files(root):
            cls = next((c for p, pat, c in NOISE_RULES if p == pkg and pat.search(rel)), None)
            if cls is None:
                continue
            try:
                dur = sf.info(str(root / rel)).duration
            except Exception as e:  # noqa: BLE001 - any unreadable header means: skip this file
                skipped.append({"file": f"{pkg}:{rel}", "reason": f"unreadable: {e}"})
                continue
            n = max(1, min(NOISE_SEGMENTS_PER_FILE, int(dur // NOISE_SEGMENT_S)))
            slot = dur / n  # one segment from each of n equal slots, at a seeded offset inside the slot
            for i in range(n):
                start = i * slot + float(rng.uniform(0, max(0.0, slot - NOISE_SEGMENT_S)))
                name = f"{cls}-{_slug(pkg.split('-')[0])}-{_slug(Path(rel).stem)}-{i}"
                jobs.append(_file_job("noise", name, f"{pkg}:{rel}", _source(pkg, cache, rel),
                                      {"class": cls, "detail": None}, root, rel, round(start, 3), NOISE_SEGMENT_S))
    return jobs


PLANNERS = {"ktuberling": plan_ktuberling, "tuxpaint_speech": plan_tuxpaint_speech,
            "hedgewars_speech": plan_hedgewars_speech, "espeak": plan_espeak, "flite": plan_flite,
            "music": plan_music, "drums": plan_drums, "env": plan_env, "noise": plan_noise}
