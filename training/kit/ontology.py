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


def note_name(midi: int) -> str:
    return f"{NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


def pitch_word(midi: int) -> str:
    return "low" if midi < 48 else "high" if midi > 72 else "middle"


def _article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def speaker_phrase(lab: dict, rng: np.random.Generator) -> str:
    who = {"male": ["a man", "a male voice"], "female": ["a woman", "a female voice"],
           "child": ["a child", "a young voice"]}.get(lab.get("gender"), ["someone", "a voice", "a speaker"])
    subject = who[int(rng.integers(len(who)))]
    if lab.get("voice_type") == "synthetic" and rng.random() < 0.5:
        subject = "a synthetic voice"
    if lab.get("accent"):
        subject += f" with {_article(str(lab['accent']).replace('_', ' ').title())} accent"
    return subject


def part_phrase(part: dict, rng: np.random.Generator) -> str:
    """One clause for a part: {"kind", "records": [bank records of its events, in order]}."""
    recs = part["records"]
    lab, kind = recs[0].get("labels") or {}, part["kind"]
    if kind == "speech":
        words = " ".join(str(r["labels"].get("text") or r["labels"].get("word") or "") for r in recs).strip()
        verb = "whispers" if lab.get("voice_type") == "whisper" else ["says", "speaks", "utters"][int(rng.integers(3))]
        lang = LANGUAGE_NAMES.get((lab.get("language") or "").split("-")[0].lower())
        tail = f" in {lang}" if lang and lang != "English" and rng.random() < 0.7 else ""
        return f"{speaker_phrase(lab, rng)} {verb} '{words}'{tail}" if words else f"{speaker_phrase(lab, rng)} speaks"
    if kind == "music":
        inst = str(lab.get("instrument") or "an instrument").replace("_", " ")
        pitches = [int(r["labels"]["midi_pitch"]) for r in recs if r["labels"].get("midi_pitch") is not None]
        if len(recs) > 1:
            return f"{_article(inst)} plays {['a melody', 'a few notes', 'a short phrase'][int(rng.integers(3))]}"
        if pitches and rng.random() < 0.3:
            return f"{_article(inst)} plays {note_name(pitches[0])}"
        return f"{_article(inst)} plays {_article(pitch_word(pitches[0]) + ' note') if pitches else 'a note'}"
    if kind == "drum":
        strokes = sorted({str(r["labels"].get("stroke", "drum")).replace("_", " ") for r in recs})
        if len(recs) > 1:
            return ["a drum beat plays", "drums play a pattern", "a drummer plays a groove"][int(rng.integers(3))]
        return f"{_article(strokes[0])} {'drum ' if strokes[0] in ('kick', 'snare', 'tom') else ''}hit sounds"
    leaves, _ = leaf_keys(recs[0])
    detail = lab.get("detail")
    options = ENV_PHRASES.get(leaves[0])
    if options:
        phrase = options[int(rng.integers(len(options)))]
        return phrase.format(detail=f"on {detail}" if detail else "").strip()
    name = str(lab.get("class") or BY_KEY[leaves[0]].name).replace("_", " ")
    return f"the sound of {name}" + (f" ({detail})" if detail else "")


def bed_phrase(record: dict, rng: np.random.Generator) -> str:
    leaves, _ = leaf_keys(record)
    options = BED_PHRASES.get(leaves[0])
    if options:
        return options[int(rng.integers(len(options)))]
    name = str((record.get("labels") or {}).get("class") or "noise").replace("_", " ")
    return f"over {name} in the background"


def caption(parts: list[dict], bed: dict | None, rng: np.random.Generator, reverberant: bool = False) -> str:
    """A sentence for a mixture: parts in onset order (each {"kind", "records", "onset"}), bed a record."""
    ordered = sorted(parts, key=lambda p: p["onset"])
    clauses = [part_phrase(p, rng) for p in ordered]
    if len(clauses) == 1:
        text = clauses[0]
    elif len(clauses) == 2:
        sequential = ordered[1]["onset"] > ordered[0].get("end", ordered[0]["onset"])
        joins = [" while ", " and ", ", then "] if sequential else [" while ", " as ", " and "]
        text = clauses[0] + joins[int(rng.integers(len(joins)))] + clauses[1]
    else:
        text = ", ".join(clauses[:-1]) + " and " + clauses[-1]
    if bed is not None:
        text += " " + bed_phrase(bed, rng)
    if reverberant and rng.random() < 0.5:
        text += [" in a reverberant room", " in a hall", " with echo"][int(rng.integers(3))]
    return text[0].upper() + text[1:] + "."
