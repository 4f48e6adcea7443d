"""SUPERB layouts: Speech Commands v0.01 and VoxCeleb1 as s3prl 0.4.18's own dataset classes read them.

Needs the source bank (``mamclap data bank``; $MAMCLAP_DATA/bank, default <repo>/data/bank).
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf

from training.kit.hear_suite import KWS_WORDS, SAMPLE_RATE
from training.kit.superb_layouts import build_superb, s3prl_dev_percentage

CLASSES_12 = set(KWS_WORDS) | {"_unknown_", "_silence_"}


@pytest.fixture
def superb(tiny_superb) -> tuple[Path, dict]:
    """(layouts folder, manifest) of the session's tiny SUPERB layouts (conftest.py)."""
    return tiny_superb


def test_speech_commands_layout(superb):
    out, _ = superb
    train, test = out / "speech_commands" / "train", out / "speech_commands" / "test"
    assert {p.name for p in test.iterdir()} == CLASSES_12
    assert set(KWS_WORDS) | {"_background_noise_"} <= {p.name for p in train.iterdir()}
    names = [p for p in train.glob("*/*.wav") if p.parent.name != "_background_noise_"]
    assert names
    for p in names:
        m = re.fullmatch(r"([0-9a-f]{8})_nohash_(\d+)\.wav", p.name)
        assert m, p.name
        # s3prl drops prefixes hashing to 10-20% (its unused test share): none of ours may land there.
        assert not 10 <= s3prl_dev_percentage(m.group(1)) < 20, p.name
    for p in list(train.glob("*/*.wav"))[:20] + list(test.glob("*/*.wav"))[:20]:
        info = sf.info(str(p))
        assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
        if p.parent.name != "_background_noise_":
            assert info.frames == SAMPLE_RATE
    beds = list((train / "_background_noise_").glob("*.wav"))
    assert beds and all(sf.info(str(b)).frames > SAMPLE_RATE for b in beds)


def test_voxceleb1_layout(superb):
    out, manifest = superb
    root = out / "voxceleb1"
    lines = (root / "iden_split.txt").read_text().split("\n")[:-1]
    assert lines
    for line in lines:
        m = re.fullmatch(r"([123]) (id1\d{4})/([0-9a-f]{11})/(\d{5})\.wav", line)
        assert m, line
        assert (root / "dev" / "wav" / line.split()[1]).is_file()
    speakers = sorted({line.split()[1].split("/")[0] for line in lines})
    assert speakers == [f"id{10001 + i}" for i in range(len(speakers))]  # s3prl: label = int(id) - 10001
    assert Counter(line[0] for line in lines).keys() == {"1", "2", "3"}


def test_superb_test_material_is_held_out(superb, bank_records):
    """Test voices never speak in the Speech Commands train root; VoxCeleb1 test texts are held out."""
    _, manifest = superb
    by_id = {r["id"]: r for r in bank_records}
    sc = manifest["speech_commands"]
    voices = {s: {by_id[i]["group"] for i in sc[s] if by_id[i]["kind"] == "speech"} for s in ("train", "test")}
    assert voices["test"] and not voices["test"] & voices["train"]
    vox = manifest["voxceleb1"]
    texts = {s: {(by_id[i]["labels"]["speaker"], by_id[i]["labels"]["text"]) for i in vox[s]}
             for s in ("train", "test")}
    assert texts["test"] and not texts["test"] & texts["train"]


@pytest.mark.slow
def test_workers_write_the_same_layouts_as_the_serial_build(superb, bank_records, bank_dir, tmp_path):
    """The two layouts written side by side in 2 processes: byte for byte the session's, built in this one."""
    out, manifest = superb

    def digests(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    par = build_superb(bank_records, tmp_path / "superb", "tiny", seed=0, bank_dir=bank_dir, workers=2)
    serial = digests(out)
    assert {k.split("/")[0] for k in serial} == {"speech_commands", "voxceleb1"} and len(serial) > 50
    assert digests(tmp_path / "superb") == serial

    def drop_timing(m: dict) -> dict:
        return {k: {kk: vv for kk, vv in v.items() if kk != "build_seconds"} if isinstance(v, dict) else v
                for k, v in m.items()}

    assert drop_timing(par) == drop_timing(manifest)


def test_s3prl_speech_commands_reads_the_layout(superb):
    compat = pytest.importorskip("superb_upstream.compat")
    pytest.importorskip("s3prl")
    compat.prepare_s3prl()
    from s3prl.downstream.speech_commands.dataset import (CLASSES, SpeechCommandsDataset,
                                                          SpeechCommandsTestingDataset)
    from s3prl.downstream.speech_commands.expert import split_dataset

    out, _ = superb
    root = out / "speech_commands"
    train_list, valid_list = split_dataset(root / "train")
    assert train_list and valid_list
    train = SpeechCommandsDataset(train_list, speech_commands_root=str(root / "train"))
    dev = SpeechCommandsDataset(valid_list, speech_commands_root=str(root / "train"))
    test = SpeechCommandsTestingDataset(speech_commands_test_root=str(root / "test"))
    assert {c for c, _ in train.data} == set(CLASSES) == CLASSES_12
    assert {c for c, _ in dev.data} == CLASSES_12
    assert {c for c, _ in test.data} == CLASSES_12
    wav, label, _ = train[0]
    assert wav.ndim == 1 and len(wav) == SAMPLE_RATE and 0 <= label < 12
    wav, label, _ = test[len(test) - 1]
    assert len(wav) == SAMPLE_RATE


def test_s3prl_voxceleb1_reads_the_layout(superb, tmp_path, monkeypatch):
    compat = pytest.importorskip("superb_upstream.compat")
    pytest.importorskip("s3prl")
    compat.prepare_s3prl()
    import s3prl.downstream.voxceleb1.dataset as vox

    # compat keys s3prl's voxceleb1 file-list cache by data root under $MAMCLAP_CACHE: keep it in tmp_path.
    monkeypatch.setenv("MAMCLAP_CACHE", str(tmp_path))
    out, manifest = superb
    root = out / "voxceleb1"
    n_speakers = len(manifest["voxceleb1"]["speaker_ids"])
    lines = (root / "iden_split.txt").read_text().split("\n")[:-1]
    for mode, code in (("train", "1"), ("dev", "2"), ("test", "3")):
        ds = vox.SpeakerClassifiDataset(mode, root, str(root / "iden_split.txt"), max_timestep=SAMPLE_RATE * 3)
        assert len(ds) == sum(line.startswith(code + " ") for line in lines)
        assert set(ds.label) <= set(range(n_speakers))
        if mode == "train":
            assert set(ds.label) == set(range(n_speakers))
    wav, label, name = ds[0]
    assert wav.ndim == 1 and len(wav) > SAMPLE_RATE // 4 and 0 <= label < n_speakers
