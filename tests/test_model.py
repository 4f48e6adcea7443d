"""Encoder contracts: grids from the config, runtime chunking, batch and padding invariance, exports."""
from __future__ import annotations

import json

import pytest
import torch

from hear_mamclap.checkpoint import export_encoder, load_encoder
from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder, patchify, sincos_pos_embed_2d, unpatchify

SR = 16000


def tiny(**overrides) -> MAMCLAPEncoder:
    torch.manual_seed(0)
    return MAMCLAPEncoder(EncoderConfig.preset("tiny", **overrides)).eval()


def audio(batch: int, seconds: float, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(batch, int(seconds * SR), generator=torch.Generator().manual_seed(seed))


def test_presets_and_grid() -> None:
    assert EncoderConfig.preset("base").grid == (64, 8) and EncoderConfig.preset("base").n_patches == 512
    small = EncoderConfig.preset("small")
    assert (small.width, small.depth, small.heads) == (384, 12, 6)
    assert EncoderConfig.preset("tiny").grid == (8, 4)
    assert EncoderConfig(target_frames=512, patch_size=(8, 32)).grid == (64, 4)
    with pytest.raises(ValueError, match="must divide"):
        EncoderConfig(target_frames=1000)
    with pytest.raises(ValueError, match="unknown encoder preset"):
        EncoderConfig.preset("huge")


def test_config_dict_round_trip() -> None:
    cfg = EncoderConfig.preset("tiny", patch_size=(8, 16))
    assert EncoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown encoder config keys"):
        EncoderConfig.from_dict({**cfg.to_dict(), "dropout": 0.1})


def test_patchify_is_time_major_and_inverts() -> None:
    mel = torch.randn(2, 32, 24)
    patches = patchify(mel, (8, 6))  # grid (4, 4)
    assert patches.shape == (2, 16, 48)
    torch.testing.assert_close(patches[:, 1 * 4 + 2], mel[:, 8:16, 12:18].reshape(2, 48))  # patch (t=1, f=2)
    assert torch.equal(unpatchify(patches, (8, 6), 4), mel)


def test_sincos_embeddings_are_distinct() -> None:
    pe = sincos_pos_embed_2d(64, (8, 4))
    assert pe.shape == (32, 64)
    assert torch.cdist(pe, pe).add(torch.eye(32) * 1e3).min() > 0.1


@pytest.mark.parametrize("overrides", [{}, {"patch_size": (8, 16)}, {"patch_size": (16, 8), "cls_token": False},
                                       {"n_mels": 32, "target_frames": 64}])
def test_forward_features_shapes_on_any_grid(overrides: dict) -> None:
    enc = tiny(**overrides)
    cfg = enc.cfg
    pt, _ = cfg.patch_size
    extra = 1 if cfg.cls_token else 0
    for frames in (pt, cfg.target_frames // 2, cfg.target_frames):
        mel = torch.randn(2, frames, cfg.n_mels)
        tokens, hidden = enc.forward_features(mel)
        n = (frames // pt) * cfg.grid[1]
        assert tokens.shape == (2, extra + n, cfg.width)
        assert len(hidden) == cfg.depth + 1 and all(h.shape == tokens.shape for h in hidden)
        assert torch.isfinite(tokens).all()
    ids_keep = torch.tensor([[0, 5, 3], [7, 1, 2]])
    tokens, _ = enc.forward_features(torch.randn(2, cfg.target_frames, cfg.n_mels), ids_keep=ids_keep)
    assert tokens.shape == (2, extra + 3, cfg.width)


def test_forward_features_rejects_bad_mel() -> None:
    enc = tiny()
    for shape in [(2, 128, 63), (2, 120, 64), (2, 256, 64)]:
        with pytest.raises(ValueError, match="expected log-mel"):
            enc.forward_features(torch.randn(*shape))


def test_runtime_shapes_and_timestamps() -> None:
    enc = tiny()
    x = audio(2, 3.0)
    out = enc(x, hidden_states=True)
    n_time = -(-enc.frontend.num_frames(x.shape[1]) // 16)  # ceil(298 / 16) = 19
    assert out.frames.shape == (2, n_time, enc.feature_dim("concat")) == (2, 19, 64 * 4)
    assert out.clip.shape == (2, 256) and out.n_frames.tolist() == [19, 19]
    assert len(out.hidden_states) == enc.cfg.depth + 1 and out.hidden_states[-1].shape == out.frames.shape
    mean = enc(x, freq_reduce="mean")
    assert mean.frames.shape == (2, 19, 64)
    torch.testing.assert_close(mean.clip, mean.frames.mean(1))
    times = enc.cfg.patch_times(3)
    torch.testing.assert_close(times, torch.tensor([0.0875, 0.2475, 0.4075], dtype=torch.float64))
    with pytest.raises(ValueError, match="freq_reduce"):
        enc(x, freq_reduce="max")


def test_chunked_long_input_equals_chunks_encoded_directly() -> None:
    enc = tiny()
    x = audio(2, 3.0)  # 298 frames -> 19 time patches -> chunks of 8, 8, 3
    out = enc(x, hidden_states=True)
    mel, _ = enc.mel(x)
    mel = torch.nn.functional.pad(mel, (0, 0, 0, 19 * 16 - mel.shape[1]))
    for start, stop in [(0, 8), (8, 16), (16, 19)]:
        tokens, hidden = enc.forward_features(mel[:, start * 16:stop * 16])
        direct = tokens[:, 1:].reshape(2, stop - start, -1)  # (B, n, P_f * D): drop CLS, concat frequency
        torch.testing.assert_close(out.frames[:, start:stop], direct, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.hidden_states[2][:, start:stop], hidden[2][:, 1:].reshape(2, stop - start, -1),
                                   rtol=1e-5, atol=1e-5)


def test_clip_alone_equals_clip_in_batch_with_longer_clips() -> None:
    enc = tiny()
    lengths = [int(2.7 * SR), int(0.5 * SR), int(1.3 * SR), 400]
    batch = torch.zeros(4, max(lengths))
    for i, n in enumerate(lengths):
        batch[i, :n] = audio(1, n / SR, seed=i)[0]
    batch[1, lengths[1]:] = 0.3  # garbage past the end must not leak into the clip's features
    out = enc(batch, lengths=torch.tensor(lengths), hidden_states=True)
    for i, n in enumerate(lengths):
        alone = enc(batch[i:i + 1, :n], hidden_states=True)
        k = int(alone.n_frames)
        assert int(out.n_frames[i]) == k
        torch.testing.assert_close(out.frames[i, :k], alone.frames[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out.clip[i], alone.clip[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out.hidden_states[1][i, :k], alone.hidden_states[1][0], rtol=1e-4, atol=1e-4)
        assert not out.frames[i, k:].any()
    assert torch.isfinite(out.frames).all()


def test_batch_slice_invariance() -> None:
    enc = tiny()
    x = audio(3, 1.5)
    whole = enc(x)
    torch.testing.assert_close(enc(x[1:2]).frames, whole.frames[1:2], rtol=1e-4, atol=1e-4)


def test_bad_lengths_are_explained() -> None:
    enc = tiny()
    with pytest.raises(ValueError, match="expected lengths"):
        enc(audio(2, 1.0), lengths=torch.tensor([16000, 20000]))
    with pytest.raises(ValueError, match="expected lengths"):
        enc(audio(2, 1.0), lengths=torch.tensor([16000, 100]))


def test_export_round_trip(tmp_path) -> None:
    enc = tiny(norm_mean=-3.0, norm_std=2.0)
    export_encoder(enc, tmp_path / "export", metadata={"variant": "mam", "step": 7})
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["encoder.json", "encoder.safetensors"]
    for path in (tmp_path / "export", tmp_path / "export" / "encoder.safetensors"):
        loaded = load_encoder(path)
        assert loaded.cfg == enc.cfg and loaded.frontend.mean == -3.0 and loaded.metadata["step"] == 7
        x = audio(2, 2.0)
        assert torch.equal(loaded(x).frames, enc(x).frames)


def test_load_rejects_bad_sources(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_encoder(tmp_path / "missing")
    export_encoder(tiny(), tmp_path / "a")
    (tmp_path / "a" / "encoder.json").unlink()
    with pytest.raises(FileNotFoundError, match="encoder.json"):
        load_encoder(tmp_path / "a")
    export_encoder(tiny(), tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "encoder.json").read_text())
    manifest["config"]["depth"] = 5
    (tmp_path / "b" / "encoder.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="do not fit"):
        load_encoder(tmp_path / "b")
    torch.save({"state": {}}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="'model' and 'config'"):
        load_encoder(tmp_path / "c.pt")
