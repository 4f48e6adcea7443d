"""Whole-kit builds: determinism, the no-overlap check, interrupted stages, the `mamclap data` CLI.

Needs the source bank (``mamclap data bank``; $MAMCLAP_DATA/bank, default <repo>/data/bank). Kits are built
into temporary data dirs from that bank, so nothing under data/ changes.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from training.cli import main
from training.kit import build, corpus

REPO = Path(__file__).resolve().parents[1]
BANK = Path(os.environ.get("MAMCLAP_DATA", REPO / "data")) / "bank"


pytestmark = pytest.mark.slow  # each test needs whole tiny kits (HEAR suite, SUPERB layouts, corpus)


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> Path:
    """The bank with a third of its speakers (audio shared by a link): same contract, faster SUPERB layouts."""
    if not (BANK / "index.jsonl").is_file():
        pytest.skip(f"no source bank at {BANK}: build it with `mamclap data bank`")
    records = build.load_records(BANK)
    speakers = sorted({r["labels"]["speaker"] for r in records if r["kind"] == "speech"})
    keep = set(speakers[::3])
    subset = [r for r in records if r["kind"] != "speech" or r["labels"]["speaker"] in keep]
    out = tmp_path_factory.mktemp("bank") / "bank"
    out.mkdir()
    (out / "index.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in subset))
    shutil.copy(BANK / "bank.json", out / "bank.json")
    (out / "audio").symlink_to((BANK / "audio").resolve())
    return out


@pytest.fixture(scope="module")
def kits(bank, tmp_path_factory) -> dict[str, Path]:
    """tiny kits of seed 0 (2 workers) and seed 1 (1 worker)."""
    out = {}
    for name, seed, workers in (("a", 0, 2), ("c", 1, 1)):
        data = tmp_path_factory.mktemp(f"data_{name}")
        build.build_kit("tiny", seed, data, data / "cache", workers=workers, bank_dir=bank, progress=False)
        out[name] = build.kit_dir("tiny", seed, data)
    return out


def labels(kit: Path) -> list:
    return [json.loads(p.read_text())["labels"] for p in sorted((kit / "corpus").glob("*.stats.json"))] + \
        [json.loads(p.read_text()) for p in sorted((kit / "hear").glob("*/*.json"))]


def test_different_seed_different_kit(kits):
    a, c = kits["a"], kits["c"]
    assert (a / "files.sha256").read_text() != (c / "files.sha256").read_text()
    assert labels(a) != labels(c)
    ma, mc = (json.loads((k / "manifest.json").read_text()) for k in (a, c))
    assert ma["digest"] != mc["digest"]


def test_manifest_cards_and_no_overlap(kits):
    kit = kits["a"]
    m = json.loads((kit / "manifest.json").read_text())
    assert m["no_overlap"]["intersection"] == [] and m["no_overlap"]["test_bank_ids"] > 0
    assert m["datasets"]["corpus"]["clips"] == build.SIZES["tiny"].corpus.clips
    assert {"hear/mini_speech_commands", "superb/speech_commands", "superb/voxceleb1"} <= set(m["datasets"])
    assert m["sources"] and all("package" in s and "license" in s for s in m["sources"])
    assert set(m["timings_s"]) >= {"bank", "hear", "superb", "corpus", "checksums"}
    cards = sorted(p.name for p in (kit / "cards").iterdir())
    assert "corpus.md" in cards and "hear-mini_esc.md" in cards and "superb-voxceleb1.md" in cards
    assert "Debian package" in (kit / "cards" / "corpus.md").read_text()
    assert build.check_kit(kit)["no_overlap"]["intersection"] == []


def test_overlap_is_caught_by_check_and_by_the_build(kits, bank, tmp_path):
    data = tmp_path / "data"
    kit = data / kits["a"].name
    shutil.copytree(kits["a"], kit)
    hear = json.loads((kit / "hear" / "stage.json").read_text())
    superb = json.loads((kit / "superb" / "stage.json").read_text())
    records = build.load_records(bank)
    test_ids = build.evaluation_holdout(hear, superb, records)["test_ids"]
    leaked = [r for r in records if r["id"] in test_ids and r["kind"] in corpus.FOREGROUND_KINDS]
    # rebuild the corpus through the public API from test material only
    shutil.rmtree(kit / "corpus")
    corpus.build_corpus(leaked, bank, kit / "corpus", build.SIZES["tiny"].corpus, 0, exclude=set(), workers=1,
                        progress=False)
    with pytest.raises(build.OverlapError, match="test splits"):
        build.check_kit(kit)
    assert main(["data", "--data-dir", str(data), "check", "--size", "tiny", "--seed", "0"]) == 1
    with pytest.raises(build.OverlapError):
        build.build_kit("tiny", 0, data, data / "cache", workers=1, bank_dir=bank, progress=False)


def test_check_finds_a_changed_file(kits, tmp_path):
    kit = tmp_path / kits["a"].name
    shutil.copytree(kits["a"], kit)
    wav = sorted((kit / "hear").rglob("*.wav"))[0]
    wav.write_bytes(wav.read_bytes()[:-2] + b"\x01\x02")
    with pytest.raises(RuntimeError, match="missing or changed"):
        build.check_kit(kit)


def test_interrupted_build_reruns_to_the_same_files_as_an_uninterrupted_one(kits, bank, tmp_path, monkeypatch):
    """Also the determinism test: same seed, built twice into two dirs (2 workers vs 1) -> same files."""
    import training.kit.superb_layouts as superb_layouts

    real = superb_layouts.build_superb

    def half_then_fail(records, out_dir, size, seed, bank_dir=None):
        (Path(out_dir) / "speech_commands").mkdir()
        (Path(out_dir) / "speech_commands" / "half.wav").write_bytes(b"RIFF")
        raise KeyboardInterrupt

    data = tmp_path / "data"
    monkeypatch.setattr(superb_layouts, "build_superb", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        build.build_kit("tiny", 0, data, data / "cache", workers=1, bank_dir=bank, progress=False)
    kit = build.kit_dir("tiny", 0, data)
    assert sorted(p.name for p in kit.iterdir()) == ["hear"], "only the complete stage may remain"
    monkeypatch.setattr(superb_layouts, "build_superb", real)
    m = build.build_kit("tiny", 0, data, data / "cache", workers=1, bank_dir=bank, progress=False)
    assert m["timings_s"]["hear"] == "cached" and m["timings_s"]["superb"] != "cached"
    assert (kit / "files.sha256").read_text() == (kits["a"] / "files.sha256").read_text()
    assert labels(kit) == labels(kits["a"])


def test_cli_build_show_check(kits, bank, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(kits["c"], data / kits["c"].name)
    args = ["data", "--data-dir", str(data)]
    assert main(args + ["build", "--size", "tiny", "--seed", "1", "--bank-dir", str(bank), "--workers", "1",
                        "--audioset-layout"]) == 0
    out = capsys.readouterr().out
    assert "'hear': 'cached'" in out and "'corpus': 'cached'" in out
    assert (data / kits["c"].name / "audioset" / "unbalanced_train_segments.csv").is_file()
    assert main(args + ["show", "--size", "tiny", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "corpus" in out and "hear/mini_esc" in out and "shared 0" in out
    assert main(args + ["check", "--size", "tiny", "--seed", "1"]) == 0
    assert main(args + ["show", "--size", "small", "--seed", "1"]) == 1
