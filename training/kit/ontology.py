"""A fixed AudioSet-like ontology for the kit, the map from bank labels to it, and a caption generator.

Classes carry their AudioSet MID (from the public audioset/ontology ontology.json) where AudioSet has the
class, and an id of ours, ``/mamclap/<key>``, where it does not (languages, tom-tom, ride cymbal, digging,
...). Each class has one parent; a bank record gets its leaf classes and every ancestor, as AudioSet labels
do ("Bark" implies "Dog", "Domestic animals, pets" and "Animal").

Bank vocabularies belong to the bank module; labels() maps them through alias tables and, for a word it
does not know, falls back to the kind's root class (Speech, Music, Percussion, Sounds of things, Background
noise) and reports the word, so a new bank vocabulary degrades gracefully and visibly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

OWN = "/mamclap/"


@dataclass(frozen=True)
class OntologyClass:
    key: str  # stable short name used in code
    mid: str  # AudioSet MID, or /mamclap/<key> for classes AudioSet lacks
    name: str  # display name (AudioSet's where the class exists)
    parent: str | None  # key of the parent class


def _c(key: str, mid: str | None, name: str, parent: str | None) -> OntologyClass:
    return OntologyClass(key, mid or OWN + key, name, parent)


LANGUAGE_NAMES = {
    "en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
    "nl": "Dutch", "sv": "Swedish", "da": "Danish", "nb": "Norwegian", "no": "Norwegian", "fi": "Finnish",
    "pl": "Polish", "cs": "Czech", "sk": "Slovak", "ru": "Russian", "uk": "Ukrainian", "el": "Greek",
    "tr": "Turkish", "hu": "Hungarian", "ro": "Romanian", "ca": "Catalan", "eu": "Basque", "gl": "Galician",
    "ja": "Japanese", "zh": "Chinese", "ko": "Korean", "hi": "Hindi", "ar": "Arabic", "he": "Hebrew",
    "id": "Indonesian", "vi": "Vietnamese", "sl": "Slovenian", "hr": "Croatian", "sr": "Serbian",
    "bg": "Bulgarian", "lt": "Lithuanian", "lv": "Latvian", "et": "Estonian", "eo": "Esperanto", "ga": "Irish",
    "cy": "Welsh", "is": "Icelandic", "be": "Belarusian", "nn": "Norwegian Nynorsk", "wa": "Walloon", "af": "Afrikaans", "sw": "Swahili", "ta": "Tamil", "bn": "Bengali",
}

CLASSES: tuple[OntologyClass, ...] = (
    # speech
    _c("speech", "/m/09x0r", "Speech", None),
    _c("male_speech", "/m/05zppz", "Male speech, man speaking", "speech"),
    _c("female_speech", "/m/02zsn", "Female speech, woman speaking", "speech"),
    _c("child_speech", "/m/0ytgt", "Child speech, kid speaking", "speech"),
    _c("whispering", "/m/02rtxlg", "Whispering", "speech"),
    _c("speech_synthesizer", "/m/0brhx", "Speech synthesizer", "speech"),
    *(_c(f"lang_{code}", None, f"{name} speech", "speech") for code, name in sorted(LANGUAGE_NAMES.items())
      if code != "no"),
    # music, instrument families and instruments
    _c("music", "/m/04rlf", "Music", None),
    _c("musical_instrument", "/m/04szw", "Musical instrument", "music"),
    _c("plucked_string", "/m/0fx80y", "Plucked string instrument", "musical_instrument"),
    _c("guitar", "/m/0342h", "Guitar", "plucked_string"),
    _c("acoustic_guitar", "/m/042v_gx", "Acoustic guitar", "guitar"),
    _c("electric_guitar", "/m/02sgy", "Electric guitar", "guitar"),
    _c("bass_guitar", "/m/018vs", "Bass guitar", "plucked_string"),
    _c("harp", "/m/03m5k", "Harp", "plucked_string"),
    _c("banjo", "/m/018j2", "Banjo", "plucked_string"),
    _c("sitar", "/m/0jtg0", "Sitar", "plucked_string"),
    _c("bass_role", "/m/01vj9c", "Bass (instrument role)", "musical_instrument"),
    _c("keyboard", "/m/05148p4", "Keyboard (musical)", "musical_instrument"),
    _c("piano", "/m/05r5c", "Piano", "keyboard"),
    _c("electric_piano", "/m/01s0ps", "Electric piano", "keyboard"),
    _c("harpsichord", "/m/03q5t", "Harpsichord", "keyboard"),
    _c("organ", "/m/013y1f", "Organ", "keyboard"),
    _c("hammond_organ", "/m/03gvt", "Hammond organ", "organ"),
    _c("synthesizer", "/m/0l14qv", "Synthesizer", "keyboard"),
    _c("accordion", "/m/0mkg", "Accordion", "keyboard"),
    _c("bowed_string", "/m/0l14_3", "Bowed string instrument", "musical_instrument"),
    _c("string_section", "/m/02qmj0d", "String section", "bowed_string"),
    _c("violin", "/m/07y_7", "Violin, fiddle", "bowed_string"),
    _c("viola", None, "Viola", "bowed_string"),
    _c("cello", "/m/01xqw", "Cello", "bowed_string"),
    _c("double_bass", "/m/02fsn", "Double bass", "bowed_string"),
    _c("pizzicato", "/m/0d8_n", "Pizzicato", "bowed_string"),
    _c("brass", "/m/01kcd", "Brass instrument", "musical_instrument"),
    _c("trumpet", "/m/07gql", "Trumpet", "brass"),
    _c("trombone", "/m/07c6l", "Trombone", "brass"),
    _c("french_horn", "/m/0319l", "French horn", "brass"),
    _c("tuba", None, "Tuba", "brass"),
    _c("woodwind", "/m/085jw", "Wind instrument, woodwind instrument", "musical_instrument"),
    _c("reed", None, "Reed instrument", "woodwind"),
    _c("flute", "/m/0l14j_", "Flute", "woodwind"),
    _c("saxophone", "/m/06ncr", "Saxophone", "reed"),
    _c("clarinet", "/m/01wy6", "Clarinet", "reed"),
    _c("oboe", "/m/05kms", "Oboe", "reed"),
    _c("bassoon", "/m/01c3q", "Bassoon", "reed"),
    _c("harmonica", "/m/03qjg", "Harmonica", "reed"),
    _c("bagpipes", "/m/0192l", "Bagpipes", "woodwind"),
    _c("mallet", "/m/0j45pbj", "Mallet percussion", "musical_instrument"),
    _c("marimba", "/m/0dwsp", "Marimba, xylophone", "mallet"),
    _c("glockenspiel", "/m/0dwtp", "Glockenspiel", "mallet"),
    _c("vibraphone", "/m/0dwt5", "Vibraphone", "mallet"),
    _c("steelpan", "/m/0l156b", "Steelpan", "mallet"),
    _c("tubular_bells", "/m/016622", "Tubular bells", "mallet"),
    _c("vocal_music", "/m/0y4f8", "Vocal music", "music"),
    _c("choir", "/m/0l14jd", "Choir", "vocal_music"),
    _c("singing", "/m/015lz1", "Singing", "vocal_music"),
    # drums
    _c("percussion", "/m/0l14md", "Percussion", "musical_instrument"),
    _c("drum_kit", "/m/02hnl", "Drum kit", "percussion"),
    _c("drum", "/m/026t6", "Drum", "percussion"),
    _c("bass_drum", "/m/0bm02", "Bass drum", "drum"),
    _c("snare_drum", "/m/06rvn", "Snare drum", "drum"),
    _c("tom", None, "Tom-tom", "drum"),
    _c("timpani", "/m/011k_j", "Timpani", "drum"),
    _c("rimshot", "/m/03t3fj", "Rimshot", "drum"),
    _c("cymbal", "/m/01qbl", "Cymbal", "percussion"),
    _c("hi_hat", "/m/03qtq", "Hi-hat", "cymbal"),
    _c("crash_cymbal", "/m/0bm0k", "Crash cymbal", "cymbal"),
    _c("ride_cymbal", None, "Ride cymbal", "cymbal"),
    _c("cowbell", "/m/0239kh", "Cowbell", "percussion"),
    _c("tambourine", "/m/07brj", "Tambourine", "percussion"),
    _c("maraca", "/m/0xzly", "Maraca", "percussion"),
    _c("wood_block", "/m/01sm1g", "Wood block", "percussion"),
    _c("gong", "/m/0mbct", "Gong", "percussion"),
    _c("clapping", "/m/0l15bq", "Clapping", "percussion"),
    _c("finger_snapping", "/m/025_jnm", "Finger snapping", "percussion"),
    # animals
    _c("animal", "/m/0jbk", "Animal", None),
    _c("pets", "/m/068hy", "Domestic animals, pets", "animal"),
    _c("dog", "/m/0bt9lr", "Dog", "pets"),
    _c("bark", "/m/05tny_", "Bark", "dog"),
    _c("cat", "/m/01yrx", "Cat", "pets"),
    _c("meow", "/m/07qrkrw", "Meow", "cat"),
    _c("livestock", "/m/0ch8v", "Livestock, farm animals, working animals", "animal"),
    _c("horse", "/m/03k3r", "Horse", "livestock"),
    _c("cattle", "/m/01xq0k1", "Cattle, bovinae", "livestock"),
    _c("pig", "/m/068zj", "Pig", "livestock"),
    _c("sheep", "/m/07bgp", "Sheep", "livestock"),
    _c("goat", "/m/03fwl", "Goat", "livestock"),
    _c("chicken", "/m/09b5t", "Chicken, rooster", "livestock"),
    _c("duck", "/m/09ddx", "Duck", "livestock"),
    _c("wild_animals", "/m/01280g", "Wild animals", "animal"),
    _c("bird", "/m/015p6", "Bird", "wild_animals"),
    _c("bird_vocalization", "/m/020bb7", "Bird vocalization, bird call, bird song", "bird"),
    _c("roaring_cats", "/m/0cdnk", "Roaring cats (lions, tigers)", "wild_animals"),
    _c("canidae", "/m/01z5f", "Canidae, dogs, wolves", "wild_animals"),
    _c("howl", "/m/07qf0zm", "Howl", "canidae"),
    _c("frog", "/m/09ld4", "Frog", "wild_animals"),
    _c("insect", "/m/03vt0", "Insect", "wild_animals"),
    _c("cricket", "/m/09xqv", "Cricket", "insect"),
    # sounds of things
    _c("things", "/t/dd00041", "Sounds of things", None),
    _c("footsteps", "/m/07pbtc8", "Walk, footsteps", "things"),
    _c("vehicle", "/m/07yv9", "Vehicle", "things"),
    _c("car", "/m/0k4j", "Car", "vehicle"),
    _c("train", "/m/07jdr", "Train", "vehicle"),
    _c("aircraft", "/m/0k5j", "Aircraft", "vehicle"),
    _c("ship", "/m/06q74", "Ship", "vehicle"),
    _c("engine", "/m/02mk9", "Engine", "things"),
    _c("telephone", "/m/07cx4", "Telephone", "things"),
    _c("camera", "/m/0dv5r", "Camera", "things"),
    _c("domestic", "/t/dd00071", "Domestic sounds, home sounds", "things"),
    _c("door", "/m/02dgv", "Door", "domestic"),
    _c("knock", "/m/07r4wb8", "Knock", "door"),
    _c("glass", "/m/039jq", "Glass", "things"),
    _c("shatter", "/m/07rn7sz", "Shatter", "glass"),
    _c("explosion", "/m/014zdl", "Explosion", "things"),
    _c("gunshot", "/m/032s66", "Gunshot, gunfire", "explosion"),
    _c("bell", "/m/0395lw", "Bell", "things"),
    _c("church_bell", "/m/03w41f", "Church bell", "bell"),
    _c("bicycle_bell", "/m/0gy1t2s", "Bicycle bell", "bell"),
    _c("chime", "/m/0f8s22", "Chime", "bell"),
    _c("mechanisms", "/t/dd00077", "Mechanisms", "things"),
    _c("clock", "/m/01x3z", "Clock", "mechanisms"),
    _c("tools", "/m/07k1x", "Tools", "things"),
    _c("hammer", "/m/03l9g", "Hammer", "tools"),
    _c("sawing", "/m/01b82r", "Sawing", "tools"),
    _c("digging", None, "Digging", "tools"),
    _c("metal", None, "Metal impact", "things"),
    _c("wood", "/m/083vt", "Wood", "things"),
    _c("breaking", "/m/07pc8lb", "Breaking", "things"),
    _c("alarm", "/m/07pp_mv", "Alarm", "things"),
    _c("laser", None, "Laser (sound effect)", "things"),
    _c("whoosh", "/m/07rqsjt", "Whoosh, swoosh, swish", "things"),
    _c("thump", "/m/07qnq_y", "Thump, thud", "things"),
    _c("coin", "/m/0242l", "Coin (dropping)", "things"),
    _c("typing", "/m/0316dw", "Typing", "things"),
    # natural sounds
    _c("natural", "/m/059j3w", "Natural sounds", None),
    _c("water", "/m/0838f", "Water", "natural"),
    _c("splash", "/m/07rrlb6", "Splash, splatter", "water"),
    _c("stream", "/m/0j6m2", "Stream", "water"),
    _c("ocean", "/m/05kq4", "Ocean", "water"),
    _c("rain", "/m/06mb1", "Rain", "natural"),
    _c("wind", "/m/03m9d0z", "Wind", "natural"),
    _c("thunderstorm", "/m/0jb2l", "Thunderstorm", "natural"),
    _c("thunder", "/m/0ngt1", "Thunder", "thunderstorm"),
    _c("fire", "/m/02_41", "Fire", "natural"),
    _c("crackle", "/m/07pzfmf", "Crackle", "fire"),
    _c("lava", None, "Lava", "natural"),
    # human groups and backgrounds
    _c("crowd", "/m/03qtwd", "Crowd", None),
    _c("babble", "/m/07qfr4h", "Hubbub, speech noise, speech babble", "crowd"),
    _c("applause", "/m/028ght", "Applause", "crowd"),
    _c("background", "/m/093_4n", "Background noise", None),
    _c("room_tone", None, "Room tone", "background"),
    _c("white_noise", "/m/0chx_", "White noise", "background"),
    _c("pink_noise", "/m/0cj0r", "Pink noise", "background"),
    _c("hum", "/m/07rcgpl", "Hum", "background"),
    _c("outside_rural", "/t/dd00129", "Outside, rural or natural", "background"),
    _c("outside_urban", "/t/dd00128", "Outside, urban or manmade", "background"),
)
BY_KEY: dict[str, OntologyClass] = {c.key: c for c in CLASSES}
BY_MID: dict[str, OntologyClass] = {c.mid: c for c in CLASSES}

# Bank vocabulary -> class keys. Instrument names are matched whole first, then by the longest alias that
# occurs in them ("acoustic_grand_piano" -> piano).
INSTRUMENTS = {
    "piano": "piano", "grand": "piano", "honky": "piano", "electric_piano": "electric_piano",
    "rhodes": "electric_piano", "harpsichord": "harpsichord", "clavi": "harpsichord", "celesta": "glockenspiel",
    "organ": "organ", "drawbar": "hammond_organ", "hammond": "hammond_organ", "accordion": "accordion",
    "harmonica": "harmonica", "bandoneon": "accordion", "guitar": "guitar", "nylon": "acoustic_guitar",
    "steel": "acoustic_guitar", "acoustic_guitar": "acoustic_guitar", "electric_guitar": "electric_guitar",
    "jazz_guitar": "electric_guitar", "clean_guitar": "electric_guitar", "overdrive": "electric_guitar",
    "distortion": "electric_guitar", "bass": "bass_guitar", "contrabass": "double_bass",
    "double_bass": "double_bass", "acoustic_bass": "double_bass", "violin": "violin", "fiddle": "violin",
    "viola": "viola", "cello": "cello", "strings": "string_section", "string_ensemble": "string_section",
    "pizzicato": "pizzicato", "harp": "harp", "banjo": "banjo", "sitar": "sitar", "trumpet": "trumpet",
    "trombone": "trombone", "french_horn": "french_horn", "horn": "french_horn", "tuba": "tuba",
    "brass": "brass", "sax": "saxophone", "saxophone": "saxophone", "clarinet": "clarinet", "oboe": "oboe",
    "english_horn": "oboe", "bassoon": "bassoon", "flute": "flute", "piccolo": "flute", "recorder": "flute",
    "pan_flute": "flute", "whistle": "flute", "ocarina": "flute", "bagpipe": "bagpipes", "marimba": "marimba",
    "xylophone": "marimba", "vibraphone": "vibraphone", "glockenspiel": "glockenspiel",
    "music_box": "glockenspiel", "tubular_bells": "tubular_bells", "steel_drums": "steelpan",
    "timpani": "timpani", "choir": "choir", "voice": "choir", "aahs": "choir", "oohs": "choir",
    "synth": "synthesizer", "lead": "synthesizer", "pad": "synthesizer",
}
FAMILIES = {
    "string": "bowed_string", "strings": "bowed_string", "brass": "brass", "reed": "reed", "flute": "woodwind",
    "pipe": "woodwind", "woodwind": "woodwind", "keyboard": "keyboard", "piano": "keyboard", "mallet": "mallet",
    "chromatic_percussion": "mallet", "guitar": "guitar", "bass": "bass_role", "organ": "organ",
    "vocal": "vocal_music", "synth_lead": "synthesizer", "synth_pad": "synthesizer", "synth": "synthesizer",
    "ensemble": "string_section", "plucked": "plucked_string", "percussive": "percussion",
}
STROKES = {
    "kick": "bass_drum", "bass_drum": "bass_drum", "snare": "snare_drum", "rimshot": "rimshot",
    "side_stick": "rimshot", "hihat": "hi_hat", "closed_hihat": "hi_hat", "open_hihat": "hi_hat",
    "pedal_hihat": "hi_hat", "hi_hat": "hi_hat", "tom": "tom", "low_tom": "tom", "mid_tom": "tom",
    "high_tom": "tom", "floor_tom": "tom", "crash": "crash_cymbal", "ride": "ride_cymbal",
    "ride_bell": "ride_cymbal", "splash": "cymbal", "china": "cymbal", "cymbal": "cymbal", "clap": "clapping",
    "cowbell": "cowbell", "tambourine": "tambourine", "shaker": "maraca", "maracas": "maraca",
    "woodblock": "wood_block", "wood_block": "wood_block", "conga": "drum", "bongo": "drum",
    "timbale": "drum", "timpani": "timpani", "gong": "gong", "djembe": "drum", "cajon": "drum",
    "agogo": "cowbell", "clave": "wood_block", "finger_snap": "finger_snapping", "snap": "finger_snapping",
}
ENV_CLASSES = {
    "footsteps": "footsteps", "footstep": "footsteps", "walk": "footsteps", "water": "water",
    "splash": "splash", "stream": "stream", "ocean": "ocean", "waves": "ocean", "fire": "fire",
    "fire_loop": "fire", "campfire": "fire", "crackle": "crackle", "dog": "bark", "bark": "bark",
    "cat": "meow", "meow": "meow", "bird": "bird_vocalization", "birds": "bird_vocalization",
    "birdsong": "bird_vocalization", "birdsong_ambience": "bird_vocalization", "chicken": "chicken",
    "rooster": "chicken", "duck": "duck", "horse": "horse", "cow": "cattle", "cattle": "cattle", "pig": "pig",
    "sheep": "sheep", "goat": "goat", "frog": "frog", "insect": "insect", "insects": "insect",
    "cricket": "cricket", "crickets": "cricket", "lion": "roaring_cats", "wolf": "howl", "howl": "howl",
    "ship": "ship", "boat": "ship", "telephone": "telephone", "phone": "telephone", "camera": "camera", "mammal": "animal",
    "animal": "animal", "door": "door", "knock": "knock", "glass": "shatter", "glass_break": "shatter",
    "explosion": "explosion", "gunshot": "gunshot", "gun": "gunshot", "engine": "engine", "car": "car",
    "vehicle": "vehicle", "train": "train", "aircraft": "aircraft", "bell": "bell", "church_bell": "church_bell",
    "chime": "chime", "clock": "clock", "alarm": "alarm", "hammer": "hammer", "saw": "sawing",
    "dig": "digging", "digging": "digging", "metal": "metal", "wood": "wood", "break": "breaking",
    "breaking": "breaking", "laser": "laser", "whoosh": "whoosh", "thump": "thump", "coin": "coin",
    "typing": "typing", "rain": "rain", "wind": "wind", "thunder": "thunder", "thunderstorm": "thunderstorm",
    "lava": "lava", "crowd": "babble", "babble": "babble", "applause": "applause", "room_tone": "room_tone",
    "room": "room_tone", "white_noise": "white_noise", "pink_noise": "pink_noise", "hum": "hum",
    "night": "outside_rural", "forest": "outside_rural", "countryside": "outside_rural",
    "city": "outside_urban", "traffic": "outside_urban", "street": "outside_urban",
}
GENDERS = {"male": "male_speech", "female": "female_speech", "child": "child_speech"}
ROOTS = {"speech": "speech", "music": "musical_instrument", "drum": "percussion", "env": "things",
         "noise": "background"}


def slug(word: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(word).lower()).strip("_")


def _lookup(word: str | None, table: dict[str, str], substring: bool) -> str | None:
    if word is None:
        return None
    s = slug(word)
    if s in table:
        return table[s]
    if substring:  # the longest alias found inside the name wins: "acoustic_grand_piano" -> "piano"
        hits = [a for a in table if re.search(rf"(^|_){re.escape(a)}(_|$)", s)]
        if hits:
            return table[max(hits, key=len)]
    return None


def ancestors(key: str) -> list[str]:
    """key and every ancestor, leaf first."""
    out = []
    while key is not None:
        out.append(key)
        key = BY_KEY[key].parent
    return out


def leaf_keys(record: dict) -> tuple[list[str], list[str]]:
    """(leaf class keys, bank words that had no class) for one bank record."""
    kind, lab = record["kind"], record.get("labels") or {}
    keys, unknown = [], []

    def add(word: str | None, table: dict[str, str], substring: bool = False) -> None:
        key = _lookup(word, table, substring)
        if key:
            keys.append(key)
        elif word is not None:
            unknown.append(f"{kind}:{word}")

    if kind == "speech":
        keys.append("speech")
        if lab.get("gender") in GENDERS:
            keys.append(GENDERS[lab["gender"]])
        if lab.get("voice_type") == "whisper":
            keys.append("whispering")
        elif lab.get("voice_type") == "synthetic":
            keys.append("speech_synthesizer")
        lang = (lab.get("language") or "").split("-")[0].lower()
        if lang:
            key = "lang_nb" if lang == "no" else f"lang_{lang}"
            (keys.append(key) if key in BY_KEY else unknown.append(f"language:{lang}"))
    elif kind == "music":
        add(lab.get("instrument"), INSTRUMENTS, substring=True)
        add(lab.get("family"), FAMILIES)
    elif kind == "drum":
        keys.append("drum_kit")
        add(lab.get("stroke"), STROKES, substring=True)
    elif kind in ("env", "noise"):
        add(lab.get("class"), ENV_CLASSES, substring=True)
    else:
        raise ValueError(f"bank record {record.get('id')!r}: kind must be one of {sorted(ROOTS)}, got {kind!r}")
    if not keys:
        keys.append(ROOTS[kind])
    return keys, unknown


def label_keys(record: dict) -> list[str]:
    """Every ontology class of a bank record (leaves and ancestors), sorted."""
    leaves, _ = leaf_keys(record)
    return sorted({a for k in leaves for a in ancestors(k)})


def labels(record: dict) -> list[dict]:
    """[{"mid", "name"}] for a bank record, sorted by name."""
    return [{"mid": BY_KEY[k].mid, "name": BY_KEY[k].name} for k in sorted(label_keys(record),
                                                                         key=lambda k: BY_KEY[k].name)]


# ---------------------------------------------------------------------------------------------------------
# Captions: one clause per part, joined by templates chosen with the generator

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
ENV_PHRASES = {  # leaf class key -> clauses (a subject and a verb)
    "footsteps": ["footsteps {detail}", "someone walks {detail}", "steps sound {detail}"],
    "bark": ["a dog barks", "a dog is barking"], "meow": ["a cat meows"],
    "bird_vocalization": ["a bird chirps", "birds sing", "a bird calls"],
    "shatter": ["glass breaks", "glass shatters", "a glass smashes"],
    "door": ["a door opens or closes", "a door creaks", "a door bangs"], "knock": ["someone knocks"],
    "explosion": ["an explosion booms", "something explodes"], "gunshot": ["a gun fires", "gunshots ring out"],
    "engine": ["an engine runs", "an engine hums"], "fire": ["a fire crackles", "flames crackle"],
    "water": ["water splashes", "water flows"], "splash": ["water splashes"], "stream": ["a stream flows"],
    "bell": ["a bell rings", "a bell chimes"], "digging": ["someone digs {detail}", "a shovel scrapes"],
    "metal": ["metal clanks", "something metallic is struck"], "lava": ["lava bubbles"],
    "laser": ["a laser zaps"], "howl": ["a wolf howls"], "telephone": ["a telephone rings"],
    "camera": ["a camera shutter clicks"], "horse": ["a horse neighs"], "sheep": ["a sheep bleats"],
    "cattle": ["a cow moos"], "pig": ["a pig oinks"], "chicken": ["a chicken clucks"], "duck": ["a duck quacks"],
    "insect": ["insects buzz"], "animal": ["an animal calls"], "hammer": ["a hammer strikes"], "wood": ["wood knocks"], "breaking": ["something breaks"],
}
BED_PHRASES = {  # leaf class key -> how the background is mentioned
    "rain": ["over rain", "in the rain", "with rain in the background"],
    "wind": ["over wind", "in the wind", "with wind blowing"], "babble": ["in a crowd", "over crowd chatter"],
    "bird_vocalization": ["with birdsong in the background", "among birds"],
    "room_tone": ["in a quiet room", "over room tone"], "fire": ["over a crackling fire", "by a fire"],
    "lava": ["over bubbling lava"], "stream": ["by a stream", "over a babbling brook"],
    "ship": ["aboard a ship"], "outside_rural": ["outdoors at night", "in the countryside"], "water": ["by running water", "over flowing water"],
    "white_noise": ["over hiss", "over white noise"], "pink_noise": ["over a soft noise"],
}


BED_NOUNS = {  # leaf class key -> the background as a noun without an article ("faint rain", "loud crowd chatter")
    "rain": "rain", "wind": "wind", "babble": "crowd chatter", "bird_vocalization": "birdsong",
    "room_tone": "room tone", "fire": "fire crackle", "lava": "bubbling lava", "stream": "babbling water",
    "ship": "ship engine rumble", "outside_rural": "night-time countryside ambience", "water": "running water",
    "white_noise": "white noise", "pink_noise": "pink noise",
}
# What a caption says beyond the tags, and the record fields or mixer levels it comes from (training/kit/corpus.py
# passes the levels; every fact is left out when its source is missing):
#   speech  gender ("a woman"), voice type (synthetic, whisper), accent or character voice, language, the words
#   music   instrument (GM program name), instrument family, pitch register (low/middle/high from midi_pitch,
#           moved by the part's speed and pitch-shift augmentation), the note name for an unshifted single note
#   drum    tempo of a pattern (the mixer's grid tempo, moved by speed and time-stretch augmentation)
#   level   a part LEVEL_GAP_DB or more below the loudest part is "faint"/"quiet"; the whole clip is "quiet" or
#           "loud" from the active RMS of its written samples (QUIET_DBFS, LOUD_DBFS); the bed "faint" or "loud"
#           from its SNR under the foreground (FAINT_BED_SNR_DB, LOUD_BED_SNR_DB)
LEVEL_GAP_DB = 5.0
QUIET_DBFS, LOUD_DBFS = -30.0, -20.0
FAINT_BED_SNR_DB, LOUD_BED_SNR_DB = 18.0, 8.0
SLOW_BPM, FAST_BPM = 100.0, 130.0
FAMILY_WORDS = {  # bank family -> "from the ... family"
    "piano": "piano", "chromatic_percussion": "tuned percussion", "organ": "organ", "guitar": "guitar",
    "bass": "bass", "strings": "string", "string": "string", "ensemble": "ensemble", "brass": "brass",
    "reed": "reed", "pipe": "pipe", "flute": "flute", "synth_lead": "synth lead", "synth_pad": "synth pad",
    "ethnic": "folk", "percussive": "percussion",
    "keyboard": "keyboard", "mallet": "mallet percussion", "vocal": "vocal",
}  # GM's sound_effects and synth_effects are no instrument family: not named
ACCENT_WORDS = {"southern_us": "Southern US", "received_pronunciation": "Received Pronunciation",
                "west_midlands": "West Midlands"}
CHARACTER_VOICES = {"pirate", "mobster", "robot", "singer", "surfer"}  # hedgewars voice packs, not accents
REGISTERS = {"low": ["low", "low-pitched", "low-register"], "middle": ["mid-range", "middle-register", "mid-pitched"],
             "high": ["high", "high-pitched", "high-register"]}
PITCH_ORDER = ("low", "middle", "high")


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def note_name(midi: int) -> str:
    return f"{NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


def pitch_word(midi: float) -> str:
    return "low" if midi < 48 else "high" if midi > 72 else "middle"


def tempo_word(bpm: float) -> str:
    return "slow" if bpm < SLOW_BPM else "fast" if bpm > FAST_BPM else "moderate"


def _article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def language_name(lab: dict) -> str | None:
    return LANGUAGE_NAMES.get((lab.get("language") or "").split("-")[0].lower())


def is_phrase(record: dict) -> bool:
    """A corpus-bank music record is a played phrase (id "music/x-<soundfont>-<program>-phrase<k>",
    training/kit/corpus_bank.plan_music; midi_pitch is its median note), a bank one a single note."""
    return bool(re.search(r"-phrase\d+(-\d+)?$", str(record.get("id", ""))))


def _accent(lab: dict) -> str:
    accent = lab.get("accent")
    if not accent:
        return ""
    word = slug(accent)
    if word in CHARACTER_VOICES:
        return f" in {_article(word)}'s voice"
    return f" with {_article(ACCENT_WORDS.get(word, word.replace('_', ' ').title()))} accent"


def speaker_phrase(lab: dict, rng: np.random.Generator, language: str | None = None) -> tuple[str, bool]:
    """(subject, whether it names the language): gender, voice type and accent only where the record has them."""
    gender = lab.get("gender") if lab.get("gender") in ("male", "female", "child") else None
    with_lang = False
    if lab.get("voice_type") == "synthetic":
        adj = {"male": "male ", "female": "female ", "child": "child's "}.get(gender, "")
        subject = _pick(rng, [f"a synthetic {adj}voice", f"a synthesized {adj}voice", f"a {adj}text-to-speech voice"])
    elif gender:
        who = {"male": ["a man", "a male voice", "a male speaker"],
               "female": ["a woman", "a female voice", "a female speaker"],
               "child": ["a child", "a young voice"]}[gender]
        subject = _pick(rng, who)
    else:
        options = ["someone", "a voice", "a speaker"] + ([f"{_article(language)} speaker"] if language else [])
        subject = _pick(rng, options)
        with_lang = bool(language) and subject.endswith(f"{language} speaker")
    return subject + _accent(lab), with_lang


def _pitches(part: dict) -> list[float]:
    shift = float(part.get("semitones") or 0.0)
    return [float(r["labels"]["midi_pitch"]) + shift for r in part["records"]
            if (r.get("labels") or {}).get("midi_pitch") is not None]


def register_phrase(pitches: list[float], rng: np.random.Generator, noun: str) -> str:
    """"a low melody", "a few notes ranging from low to middle pitch" (noun: "melody", "few notes", ...)."""
    words = sorted({pitch_word(p) for p in pitches}, key=PITCH_ORDER.index)
    if len(words) == 1:
        return _article(f"{_pick(rng, REGISTERS[words[0]])} {noun}") if noun != "few notes" else \
            f"a few {_pick(rng, REGISTERS[words[0]])} notes"
    lo, hi = words[0], words[-1]
    head = "a few notes" if noun == "few notes" else _article(noun)
    return head + _pick(rng, [f" ranging from {lo} to {hi} pitch", f" spanning {lo} to {hi} pitches"])


def _instrument(lab: dict, rng: np.random.Generator) -> str:
    inst = re.sub(r"(_\d+)+$", "", str(lab.get("instrument") or "")).replace("_", " ").strip()
    if not inst:
        return "an instrument"
    fam = FAMILY_WORDS.get(slug(lab.get("family") or ""))
    inst_tokens = {t.rstrip("s") for t in inst.split()}
    if not fam or {t.rstrip("s") for t in fam.split()} & inst_tokens or rng.random() < 0.3:
        return _article(inst)
    return _pick(rng, [f"{_article(inst)} from the {fam} family", f"{_article(inst)}, a {fam} instrument,"])


def _tempo(bpm: float, rng: np.random.Generator) -> str:
    w, n = tempo_word(bpm), int(5 * round(bpm / 5))
    return _pick(rng, [f" at a {w} tempo", f" at about {n} BPM", f" at a {w} {n} BPM"])


def part_phrase(part: dict, rng: np.random.Generator, faint: bool = False) -> str:
    """One clause for a part: {"kind", "records": [bank records of its events, in order]} and, where the mixer
    knows them, "semitones" (pitch moved by augmentation) and "bpm" (a drum pattern's tempo, as heard);
    faint: the part is well below the loudest part of the clip."""
    recs = part["records"]
    lab, kind = recs[0].get("labels") or {}, part["kind"]
    adverb = _pick(rng, ["quietly ", "softly ", "faintly "]) if faint else ""
    if kind == "speech":
        words = " ".join(str(r["labels"].get("text") or r["labels"].get("word") or "") for r in recs).strip()
        verb = "whispers" if lab.get("voice_type") == "whisper" else _pick(rng, ["says", "speaks", "utters"])
        lang = language_name(lab)
        subject, named = speaker_phrase(lab, rng, lang)
        tail = f" in {lang}" if lang and not named else ""
        if words:
            return f"{subject} {adverb}{verb} '{words}'{tail}"
        return f"{subject} {adverb}{'whispers' if verb == 'whispers' else 'speaks'}{tail}"
    if kind == "music":
        inst = _instrument(lab, rng)
        pitches = _pitches(part)
        if len(recs) > 1 or is_phrase(recs[0]):
            noun = _pick(rng, ["melody", "few notes", "short phrase"])
            body = register_phrase(pitches, rng, noun) if pitches else ("a few notes" if noun == "few notes"
                                                                         else _article(noun))
        elif pitches:
            word = pitch_word(pitches[0])
            if not part.get("semitones") and rng.random() < 0.3:
                body = f"{note_name(int(lab['midi_pitch']))}, {_article(_pick(rng, REGISTERS[word]) + ' note')}"
            else:
                body = _article(_pick(rng, REGISTERS[word]) + " note")
        else:
            body = "a note"
        return f"{inst} {adverb}plays {body}"
    fade = f" {adverb.strip()}" if faint else ""
    if kind == "drum":
        strokes = sorted({str(r["labels"].get("stroke", "drum")).replace("_", " ") for r in recs})
        if len(recs) > 1:
            text = _pick(rng, ["a drum beat plays", "drums play a pattern", "a drummer plays a groove"]) + fade
            return text + (_tempo(float(part["bpm"]), rng) if part.get("bpm") else "")
        return f"{_article(strokes[0])} {'drum ' if strokes[0] in ('kick', 'snare', 'tom') else ''}hit sounds{fade}"
    leaves, _ = leaf_keys(recs[0])
    detail = lab.get("detail")
    options = ENV_PHRASES.get(leaves[0])
    if options:
        phrase = _pick(rng, options)
        return phrase.format(detail=f"on {detail}" if detail else "").strip() + fade
    name = str(lab.get("class") or BY_KEY[leaves[0]].name).replace("_", " ")
    return f"the {'faint ' if faint else ''}sound of {name}" + (f" ({detail})" if detail else "")


def bed_noun(record: dict) -> str:
    leaves, _ = leaf_keys(record)
    return BED_NOUNS.get(leaves[0]) or str((record.get("labels") or {}).get("class") or "noise").replace("_", " ")


def bed_phrase(record: dict, rng: np.random.Generator, snr_db: float | None = None) -> str:
    """How the background is mentioned after the parts; snr_db (foreground over bed) makes it faint or loud."""
    noun = bed_noun(record)
    if snr_db is not None and snr_db >= FAINT_BED_SNR_DB:
        return _pick(rng, [f"with faint {noun} in the background", f"over faint {noun}",
                           f"with {noun} barely audible behind"])
    if snr_db is not None and snr_db <= LOUD_BED_SNR_DB:
        return _pick(rng, [f"over loud {noun}", f"with {noun} loud in the background", f"against heavy {noun}"])
    leaves, _ = leaf_keys(record)
    options = BED_PHRASES.get(leaves[0])
    if options:
        return _pick(rng, options)
    return f"over {noun} in the background"


def level_phrase(level_dbfs: float | None, rng: np.random.Generator) -> str:
    """", quiet overall" / " at a high volume" for a clip's level (dBFS of its active frames), "" between."""
    if level_dbfs is None:
        return ""
    if level_dbfs < QUIET_DBFS:
        return _pick(rng, [", quiet overall", " at a low volume", ", recorded quietly"])
    if level_dbfs > LOUD_DBFS:
        return _pick(rng, [", loud overall", " at a high volume", ", recorded loudly"])
    return ""


def bed_caption(record: dict, rng: np.random.Generator, level_dbfs: float | None = None) -> str:
    """A sentence for a clip that is only a background bed."""
    noun = bed_noun(record)
    text = _pick(rng, [f"{noun} with nothing in the foreground", f"only {noun}", f"the sound of {noun} alone"])
    text += level_phrase(level_dbfs, rng)
    return text[0].upper() + text[1:] + "."


def caption(parts: list[dict], bed: dict | None, rng: np.random.Generator, reverberant: bool = False,
            level_dbfs: float | None = None, bed_snr_db: float | None = None) -> str:
    """A sentence for a mixture: parts in onset order (each {"kind", "records", "onset"} and optionally "end",
    "level_dbfs" (the part's RMS in the clip as written), "semitones", "bpm"), bed a record; level_dbfs: the
    clip's active level (corpus.active_level_dbfs); bed_snr_db: the foreground over the bed."""
    ordered = sorted(parts, key=lambda p: p["onset"])
    levels = [p["level_dbfs"] for p in ordered if p.get("level_dbfs") is not None]
    top = max(levels) if len(levels) == len(ordered) > 1 else None
    clauses = [part_phrase(p, rng, faint=top is not None and p["level_dbfs"] <= top - LEVEL_GAP_DB) for p in ordered]
    if len(clauses) == 1:
        text = clauses[0]
    elif len(clauses) == 2:
        sequential = ordered[1]["onset"] > ordered[0].get("end", ordered[0]["onset"])
        joins = [" while ", " and ", ", then "] if sequential else [" while ", " as ", " and "]
        text = clauses[0] + _pick(rng, joins) + clauses[1]
    else:
        text = ", ".join(clauses[:-1]) + " and " + clauses[-1]
    if bed is not None:
        text += " " + bed_phrase(bed, rng, bed_snr_db)
    if reverberant and rng.random() < 0.5:
        text += _pick(rng, [" in a reverberant room", " in a hall", " with echo"])
    text += level_phrase(level_dbfs, rng)
    return text[0].upper() + text[1:] + "."
