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

    def half_then_fail(records, out_dir, size, seed, bank_dir=None, **pool):
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


def test_corpus_sources_by_category_match_the_shards(kits, bank):
    """The manifest and the corpus card count each bank clip the shards mix once, with its hours, per kind."""
    kit = kits["a"]
    by_id = {r["id"]: r for r in build.load_records(bank)}
    used = set()
    for stats in (kit / "corpus").glob("*.stats.json"):
        used |= set(json.loads(stats.read_text())["bank_ids"])
    got = json.loads((kit / "manifest.json").read_text())["datasets"]["corpus"]["sources_by_category"]
    assert set(got) == {"speech", "music", "drum", "env", "noise"}
    for kind, c in got.items():
        mine = [by_id[i] for i in used if by_id[i]["kind"] == kind]
        assert c["recordings"] == len(mine)
        assert c["hours"] == pytest.approx(sum(r["duration"] for r in mine) / 3600, abs=1e-4)
        assert c["groups"] == len({r["group"] for r in mine})
    assert sum(c["recordings"] for c in got.values()) == len(used)
    assert got["speech"]["recordings"] > 0 and got["speech"]["hours"] > 0
    card = (kit / "cards" / "corpus.md").read_text()
    assert "## Distinct source recordings" in card
    assert f"| speech | {got['speech']['recordings']} | {got['speech']['hours']} |" in card


def test_sources_by_category_counts_each_recording_once():
    by_id = {"a": {"kind": "speech", "duration": 1800.0, "group": "v1"},
             "b": {"kind": "speech", "duration": 1800.0, "group": "v1"},
             "c": {"kind": "env", "duration": 36.0, "group": "f1"}}
    got = build.sources_by_category(["a", "b", "a", "c", "not-in-bank"], by_id)
    assert got["speech"] == {"recordings": 2, "hours": 1.0, "groups": 1}
    assert got["env"] == {"recordings": 1, "hours": 0.01, "groups": 1}
    assert got["music"] == got["drum"] == got["noise"] == {"recordings": 0, "hours": 0.0, "groups": 0}


def test_kit_with_more_or_fewer_corpus_clips(kits, bank, tmp_path, capsys):
    """--corpus-clips: its own folder name; the standard kit's HEAR suite and SUPERB layouts, byte for byte;
    the corpus begins with the standard corpus's shards; manifest, cards and the CLI say so."""
    standard = build.SIZES["tiny"].corpus
    n = 2 * standard.shard_clips + 4  # two whole shards and a part of a third
    data = tmp_path / "data"
    assert build.kit_dir("tiny", 0, data, standard.clips) == build.kit_dir("tiny", 0, data) == data / "kit-tiny-s0"
    args = ["data", "--data-dir", str(data)]
    assert main(args + ["build", "--size", "tiny", "--seed", "0", "--bank-dir", str(bank), "--workers", "2",
                        "--corpus-clips", str(n)]) == 0
    kit = data / f"kit-tiny-s0-c{n}"
    assert build.kit_dir("tiny", 0, data, n) == kit and not (data / "kit-tiny-s0").exists()
    m = json.loads((kit / "manifest.json").read_text())
    assert m["kit"] == kit.name and m["corpus_clips"] == n and m["standard_corpus_clips"] == standard.clips
    assert m["datasets"]["corpus"]["clips"] == n and m["datasets"]["corpus"]["shards"] == 3

    def listing(k: Path) -> dict[str, str]:
        lines = (k / "files.sha256").read_text().splitlines()
        return {rel: digest for digest, rel in (line.split("  ", 1) for line in lines)}

    mine, theirs = listing(kit), listing(kits["a"])
    evaluation = {rel for rel in theirs if rel.startswith(("hear/", "superb/"))}
    assert evaluation and {rel: mine.get(rel) for rel in evaluation} == {rel: theirs[rel] for rel in evaluation}
    assert sorted(rel for rel in mine if rel.startswith(("hear/", "superb/"))) == sorted(evaluation)
    for shard in ("corpus/shard-000000.tar", "corpus/shard-000001.tar"):
        assert mine[shard] == theirs[shard]
    assert mine["corpus/shard-000002.tar"] != theirs["corpus/shard-000002.tar"]  # 4 clips of its 8
    assert m["no_overlap"]["excluded_bank_ids"] == json.loads((kits["a"] / "manifest.json").read_text())[
        "no_overlap"]["excluded_bank_ids"]
    card = (kit / "cards" / "corpus.md").read_text()
    assert f"--corpus-clips {n}" in card and f"{n} clips instead of {standard.clips}" in card
    assert f"--corpus-clips {n}" in (kit / "cards" / "hear-mini_esc.md").read_text()
    capsys.readouterr()
    assert main(args + ["show", "--size", "tiny", "--seed", "0", "--corpus-clips", str(n)]) == 0
    assert kit.name in capsys.readouterr().out
    assert main(args + ["check", "--size", "tiny", "--seed", "0", "--corpus-clips", str(n)]) == 0
    assert main(args + ["show", "--size", "tiny", "--seed", "0"]) == 1  # the standard kit is not there


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
