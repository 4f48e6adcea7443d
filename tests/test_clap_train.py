"""`mamclap teacher`: metrics against hand-computed cases, caption embeddings from the file equal MiniLM's
own, stale files refused, and the CLI trains on the tiny kit, writing metrics with chance levels and a
checkpoint that load_teacher reads strictly."""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch

from training.pretrain.clap_train import (PROMPT, caption_table, chance_recall, clip_metrics, held_out, load_caption_table,
                                 load_text_encoder, open_corpus, read_captions, recall_at, weights_sha256)
from training.pretrain.data import index_shards

HOLDOUT = "0.15"  # 6 of the tiny kit's 32 clips: a few seconds of HTS-AT forwards on CPU


# ---- metrics (fast) ----


def test_recall_counts_ties_against_the_model_and_shared_captions_as_correct():
    n = 6
    same = torch.eye(n, dtype=torch.bool)
    assert recall_at(torch.eye(n), same) == {"R@1": 1.0, "R@5": 1.0}
    assert recall_at(torch.ones(n, n), same) == {"R@1": 0.0, "R@5": 0.0}  # a collapsed model retrieves nothing
    reverse = torch.arange(n, 0, -1).float().expand(n, n)  # every query ranks item 0 first, item 5 last
    assert recall_at(reverse, same) == {"R@1": pytest.approx(1 / n, abs=1e-6),
                                        "R@5": pytest.approx(5 / n, abs=1e-6)}
    # Clips 0 and 1 share a caption: retrieving either one is a hit for both.
    dup = same.clone()
    dup[0, 1] = dup[1, 0] = True
    sim = torch.eye(n)
    sim[0, 0], sim[0, 1] = 0.5, 0.9
    assert recall_at(sim, same)["R@1"] == pytest.approx(5 / 6, abs=1e-6)
    assert recall_at(sim, dup)["R@1"] == 1.0


def test_chance_levels():
    same = torch.eye(9, dtype=torch.bool)
    assert chance_recall(same, 1) == pytest.approx(1 / 9, abs=1e-6)
    assert chance_recall(same, 5) == pytest.approx(5 / 9, abs=1e-6)
    assert chance_recall(torch.eye(3, dtype=torch.bool), 5) == 1.0
    pair = torch.eye(4, dtype=torch.bool)
    pair[0, 1] = pair[1, 0] = True  # two correct items among 4 for queries 0 and 1
    assert chance_recall(pair, 1) == pytest.approx((2 * 0.5 + 2 * 0.25) / 4, abs=1e-6)
    # Zero-shot chance: mean over clips of (#labels / #classes present).
    audio = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    labels = torch.zeros(3, 10)
    labels[0, [1, 2]] = labels[1, 2] = labels[2, [1, 2, 5]] = 1
    present = torch.tensor([1, 2, 5, 7])
    prompts = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    metrics, chance = clip_metrics(audio, audio, ["a", "b", "c"], labels, prompts, present)
    assert chance["zero_shot_top1"] == pytest.approx((2 / 4 + 1 / 4 + 3 / 4) / 3, abs=1e-6)
    assert metrics["audio_to_text"]["R@1"] == 1.0  # captions equal to the audio embeddings


def test_captions_and_clips_come_from_one_shard_reader(tmp_path):
    """Pretraining's index and the CLAP trainer's captions read the same members, skipping the same shards."""
    import io
    import tarfile

    def add(tar, name, data: bytes):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    for s, keys in ((0, ("a", "b")), (1, ("c",))):
        with tarfile.open(tmp_path / f"shard-{s}.tar", "w") as tar:
            for key in keys:
                add(tar, f"{key}.flac", b"fLaC-not-decoded-here")
                add(tar, f"{key}.json", json.dumps({"caption": f"the sound of {key}" if key != "b" else " ",
                                                    "labels": ["/m/x"]}).encode())
    (tmp_path / "shard-2.tar").write_bytes(b"not a tar file" * 64)  # skipped by both
    items = index_shards(tmp_path, {"/m/x": 0})
    assert [(it.key, Path(it.path).name, it.labels) for it in items] == [
        ("a", "shard-0.tar", (0,)), ("b", "shard-0.tar", (0,)), ("c", "shard-1.tar", (0,))]
    with open(tmp_path / "shard-0.tar", "rb") as f:
        f.seek(items[0].offset)
        assert f.read(items[0].size) == b"fLaC-not-decoded-here"
    assert read_captions(tmp_path) == {"a": "the sound of a", "c": "the sound of c"}  # a blank caption is none


# ---- the tiny kit ----


@pytest.fixture(scope="module")
def corpus(tiny_corpus) -> Path:
    """The tiny kit's shards (conftest.py)."""
    return tiny_corpus


@pytest.fixture(scope="module")
def caption_file(corpus, tmp_path_factory) -> Path:
    """`mamclap teacher embed-captions` through the CLI's entry point in this process, which then holds
    MiniLM's imports for test_caption_embeddings_round_trip's own encoder (a start-up of transformers and
    sentence-transformers spared; the demo's test runs the command as a subprocess)."""
    from training import cli

    path = tmp_path_factory.mktemp("captions") / "captions.pt"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["teacher", "embed-captions", "--data", str(corpus), "--out", str(path)]) == 0
    assert json.loads(printed.getvalue().strip().splitlines()[-1])["captions"] == 32
    return path


@pytest.mark.slow
def test_caption_embeddings_round_trip(corpus, caption_file):
    table = torch.load(caption_file, map_location="cpu", weights_only=True)
    clips, captions = open_corpus(corpus)
    assert table["keys"] == sorted(captions) and table["captions"] == [captions[k] for k in table["keys"]]
    assert table["embeddings"].dtype == torch.float16 and table["embeddings"].shape == (32, 384)
    assert table["prompt_embeddings"].shape == (len(clips.vocabulary), 384)
    # The same texts embedded on the fly, in another order and batch, in float32.
    encoder = load_text_encoder("cpu")
    texts = table["captions"][::-1]
    direct = encoder.encode(texts, convert_to_tensor=True, normalize_embeddings=True).flip(0)
    torch.testing.assert_close(table["embeddings"].float(), direct, atol=2e-3, rtol=0)
    prompts = encoder.encode([PROMPT.format(name) for _, name in clips.vocabulary[:5]], convert_to_tensor=True,
                             normalize_embeddings=True)
    torch.testing.assert_close(table["prompt_embeddings"][:5].float(), prompts, atol=2e-3, rtol=0)
    # In training, the same function embeds without a file.
    onfly = caption_table(captions, clips.vocabulary, encoder)
    torch.testing.assert_close(onfly["embeddings"].float(), table["embeddings"].float(), atol=2e-3, rtol=0)
    assert load_caption_table(caption_file, captions, clips.vocabulary)["keys"] == table["keys"]
    edited = {**captions, table["keys"][0]: "A different caption."}
    with pytest.raises(ValueError, match="does not match the corpus"):
        load_caption_table(caption_file, edited, clips.vocabulary)
    # A tolerance lets a few captions differ (a corpus built on another platform); the file's caption stands.
    loose = load_caption_table(caption_file, edited, clips.vocabulary, tolerance=1 / 32)
    assert loose["stale"] == 1 and loose["captions"] == table["captions"]
    assert load_caption_table(caption_file, captions, clips.vocabulary, tolerance=1 / 32)["stale"] == 0
    two = {**edited, table["keys"][1]: "Another caption."}
    with pytest.raises(ValueError, match="2 with another caption"):
        load_caption_table(caption_file, two, clips.vocabulary, tolerance=1 / 32)
    with pytest.raises(ValueError, match="1 clips missing"):  # a clip the file lacks: never tolerated
        load_caption_table(caption_file, {**captions, "new-clip": "x"}, clips.vocabulary, tolerance=0.5)
    with pytest.raises(FileNotFoundError, match="corpus folder"):
        open_corpus(corpus.parent / "no-such-corpus")


@pytest.mark.slow
def test_cli_trains_and_the_checkpoint_loads_strictly(corpus, caption_file, tmp_path):
    from hear_mamclap.model import EncoderConfig
    from training.pretrain.teacher import TeacherConfig, load_teacher, read_laion_state_dict

    from training import cli

    out = tmp_path / "clap"
    # In this process, as the caption file was made (the demo runs `mamclap teacher train` as a subprocess).
    assert cli.main(["teacher", "train", "--data", str(corpus), "--caption-embeddings", str(caption_file),
                     "--out-dir", str(out), "--steps", "2", "--batch-size", "2", "--warmup-steps", "1",
                     "--log-every", "1", "--workers", "0", "--holdout", HOLDOUT]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    n_eval = sum(held_out(k, float(HOLDOUT)) for k in open_corpus(corpus)[1])
    assert metrics["step"] == 2 and metrics["held_out_clips"] == n_eval and metrics["train_clips"] == 32 - n_eval
    assert math.isfinite(metrics["final_loss"])
    chance = metrics["chance"]
    for direction in ("audio_to_text", "text_to_audio"):  # the tiny kit's captions are all different
        assert chance[direction] == {"R@1": pytest.approx(1 / n_eval, abs=1e-5),
                                     "R@5": pytest.approx(min(5, n_eval) / n_eval, abs=1e-5)}
        for when in ("initial", "final"):
            assert set(metrics[when][direction]) == {"R@1", "R@5"}
            assert 0 <= metrics[when][direction]["R@1"] <= metrics[when][direction]["R@5"] <= 1
    assert 0 < chance["zero_shot_top1"] < 1 and 0 <= metrics["final"]["zero_shot_top1"] <= 1
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2]

    state = read_laion_state_dict(out / "clap.pt")
    assert metrics["weights_sha256"] == weights_sha256(state)  # the digest names the saved weights
    changed = dict(state, logit_scale_a=state["logit_scale_a"] + 1)
    assert weights_sha256(changed) != metrics["weights_sha256"]
    assert {k.split(".", 1)[0] for k in state} == {"audio_branch", "audio_projection", "text_projection",
                                                   "logit_scale_a"}
    assert state["text_projection.0.weight"].shape == (512, 384)
    teacher = load_teacher(out / "clap.pt", EncoderConfig.preset("tiny"), TeacherConfig(projection=True))
    for name, value in teacher.audio_projection.state_dict().items():
        torch.testing.assert_close(value, state[f"audio_projection.{name}"], atol=0, rtol=0)
    targets = teacher(torch.randn(1, 16000) * 0.1)
    assert teacher.dim == 512 and torch.isfinite(targets).all()
