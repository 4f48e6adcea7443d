"""Encoder contracts: grids from the config, runtime chunking, batch and padding invariance, exports."""
from __future__ import annotations

import json

import pytest
import torch

from hear_mamclap.checkpoint import export_encoder, load_encoder
from hear_mamclap.model import (EncoderConfig, MAMCLAPEncoder, check_audio, patchify, sincos_pos_embed_2d,
                                unpatchify)

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


@pytest.mark.parametrize("overrides", [{}, {"sample_rate": 22050, "frame_shift_ms": 12.5, "frame_length_ms": 30.0}])
def test_frame_geometry_is_the_front_ends(overrides) -> None:
    enc = tiny(**overrides)
    cfg = enc.cfg
    assert (cfg.hop_samples, cfg.window_samples) == (enc.frontend.hop_length, enc.frontend.window_length)
    if not overrides:
        assert (cfg.hop_samples, cfg.window_samples, cfg.samples_for(1024)) == (160, 400, 400 + 160 * 1023)
    for n in (1, 2, 17):
        x = torch.zeros(1, cfg.samples_for(n))
        assert enc.frontend(x).shape[1] == cfg.num_frames(x.shape[1]) == n
        assert cfg.num_frames(x.shape[1] - 1) == n - 1  # the fewest samples for n frames


EMBED_OPTIONS = [dict(), dict(layers="mean", last_k=2), dict(layers="concat", last_k=3, freq_reduce="mean"),
                 dict(hidden_states=True)]


def padded_batch(lengths: list[int], total: int, fill: float) -> torch.Tensor:
    batch = torch.full((len(lengths), total), fill)
    for i, n in enumerate(lengths):
        batch[i, :n] = audio(1, n / SR, seed=i)[0]
    return batch


@pytest.mark.parametrize("hop_ms", [None, 40.0])
@pytest.mark.parametrize("options", EMBED_OPTIONS)
def test_embed_batched_equals_one_by_one(options, hop_ms) -> None:
    """Clips of several encoder windows and of one frame, padded with garbage, one window per pass, give each
    clip what it gets alone in the default grouping; per patch, nothing past a clip's end."""
    enc = tiny()
    lengths = [int(2.7 * SR), int(0.5 * SR), int(1.3 * SR), 400]
    batch = padded_batch(lengths, max(lengths), fill=0.3)
    with torch.no_grad():
        out = enc.embed(batch, torch.tensor(lengths), hop_ms=hop_ms, windows_per_forward=1, **options)
        assert out.features.shape[1] == len(out.timestamps_ms)
        assert len(out.hidden_states) == (enc.cfg.depth + 1 if options.get("hidden_states") else 0)
        for i, n in enumerate(lengths):
            alone = enc.embed(batch[i:i + 1, :n], hop_ms=hop_ms, **options)
            T = alone.features.shape[1]
            assert int(out.n_patches[i]) == int(alone.n_patches[0]) and torch.equal(out.timestamps_ms[:T],
                                                                                     alone.timestamps_ms)
            for a, b in zip([out.features, *out.hidden_states], [alone.features, *alone.hidden_states]):
                torch.testing.assert_close(a[i, :T], b[0], rtol=1e-4, atol=1e-4)
                if hop_ms is None:
                    assert not a[i, T:].any()
    assert out.features.shape[2] == enc.embed_dim(**{k: v for k, v in options.items() if k != "hidden_states"})


@pytest.mark.parametrize("hop_ms", [None, 25.0])
def test_embed_ignores_what_lies_past_each_clip(hop_ms) -> None:
    """Padding invariance: zeros, garbage, or extra padding past the longest clip give the same features."""
    enc = tiny()
    lengths = torch.tensor([int(1.9 * SR), int(0.4 * SR)])
    zeros = padded_batch(lengths.tolist(), int(lengths.max()), fill=0.0)
    garbage = padded_batch(lengths.tolist(), int(lengths.max()) + 5000, fill=-0.7)
    with torch.no_grad():
        a = enc.embed(zeros, lengths, hop_ms=hop_ms, hidden_states=True)
        b = enc.embed(garbage, lengths, hop_ms=hop_ms, hidden_states=True)
    assert torch.equal(a.timestamps_ms, b.timestamps_ms) and torch.equal(a.n_patches, b.n_patches)
    for x, y in zip([a.features, *a.hidden_states], [b.features, *b.hidden_states]):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)


def test_embed_per_patch_is_forward_and_at_a_hop_interpolates() -> None:
    enc = tiny()
    x = audio(2, 3.0)
    with torch.no_grad():
        whole = enc(x, hidden_states=True)
        per_patch = enc.embed(x, hidden_states=True, windows_per_forward=1)
        at_hop = enc.embed(x, hop_ms=40.0)
    torch.testing.assert_close(per_patch.features, whole.frames, rtol=1e-5, atol=1e-5)
    for a, b in zip(per_patch.hidden_states, whole.hidden_states, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(per_patch.timestamps_ms, 1000 * enc.cfg.patch_times(19))
    assert at_hop.features.shape == (2, 75, per_patch.features.shape[2])  # ceil(3000 ms / 40 ms)
    torch.testing.assert_close(at_hop.timestamps_ms, 20.0 + 40.0 * torch.arange(75, dtype=torch.float64))
    # a step exactly between two patch centres is their mean: 87.5 ms + 160 ms * 3 = 567.5, 727.5 ms -> 647.5 ms
    mid = enc.embed(x, hop_ms=647.5 * 2, n_steps=1)
    torch.testing.assert_close(mid.features[:, 0], per_patch.features[:, 3:5].mean(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("option, message", [(dict(layers="sum"), "layers"), (dict(last_k=0), "last_k"),
                                             (dict(last_k=4), "last_k"), (dict(freq_reduce="max"), "freq_reduce"),
                                             (dict(windows_per_forward=0), "windows_per_forward"),
                                             (dict(windows_per_forward=2.0), "windows_per_forward")])
def test_embed_refuses_bad_options(option, message) -> None:
    enc = tiny()  # depth 3
    with pytest.raises(ValueError, match=message):
        enc.check_embed_options(**option)
    with pytest.raises(ValueError, match=message):
        enc.embed(audio(1, 0.5), **option)


def test_one_audio_check_for_both_forms() -> None:
    check_audio(torch.zeros(2, 400), 400)
    check_audio([torch.zeros(400), torch.zeros(3)], as_list=True)
    with pytest.raises(ValueError, match="list of 1-D waveform tensors"):
        check_audio(torch.zeros(2, 400), as_list=True)
    with pytest.raises(ValueError, match="torch.Tensor"):
        check_audio([torch.zeros(400)], 400)
    with pytest.raises(ValueError, match=r"wavs\[1\]: expected at least 401 samples"):
        check_audio([torch.zeros(401), torch.zeros(400)], 401, as_list=True)
    with pytest.raises(ValueError, match=r"at least 400 samples \(25 ms at 16000 Hz\), got 399"):
        check_audio(torch.zeros(1, 399), 400)
    with pytest.raises(ValueError, match="at least 400 samples"):
        tiny().embed(torch.zeros(1, 399))


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
