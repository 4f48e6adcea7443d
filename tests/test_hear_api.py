"""Contracts of the HEAR 2021 module over a tiny encoder: shapes, timestamps, batch and chunk invariance,
checkpoint formats, and clear errors for bad input."""
from __future__ import annotations

import pytest
import torch

import hear_mamclap as hear
from hear_mamclap.checkpoint import export_encoder
from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder, interpolate_in_time


@pytest.fixture(scope="module")
def encoder() -> MAMCLAPEncoder:
    torch.manual_seed(0)
    return MAMCLAPEncoder(EncoderConfig.preset("tiny")).eval()


@pytest.fixture(scope="module")
def model(encoder) -> hear.HearModel:
    return hear.HearModel(encoder)


def audio(n_sounds: int, seconds: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(n_sounds, int(seconds * hear.SAMPLE_RATE), generator=g)


def test_shapes_and_regular_timestamps(model):
    x = audio(3, 2.5)
    emb, ts = hear.get_timestamp_embeddings(x, model)
    assert emb.shape[:2] == ts.shape and emb.shape[0] == 3
    assert emb.shape[2] == model.timestamp_embedding_size
    hops = ts[0, 1:] - ts[0, :-1]
    assert torch.allclose(hops, torch.full_like(hops, hear.TIMESTAMP_HOP_MS)) and hops[0] <= 50
    assert ts[0, -1] <= 2500 and ts[0, 0] >= 0
    scene = hear.get_scene_embeddings(x, model)
    assert scene.shape == (3, model.scene_embedding_size)
    assert torch.isfinite(emb).all() and torch.isfinite(scene).all()


def test_slice_of_batch_equals_batch(model):
    x = audio(4, 1.7)
    emb, _ = hear.get_timestamp_embeddings(x, model)
    emb_slice, _ = hear.get_timestamp_embeddings(x[1:3], model)
    torch.testing.assert_close(emb_slice, emb[1:3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hear.get_scene_embeddings(x[2:3], model),
                               hear.get_scene_embeddings(x, model)[2:3], atol=1e-5, rtol=1e-5)


def test_clip_alone_equals_clip_padded_beside_longer_clips(encoder):
    short, long = audio(1, 1.0, seed=1), audio(1, 3.0, seed=2)
    batch = torch.zeros(2, long.shape[1])
    batch[0, :short.shape[1]], batch[1] = short[0], long[0]
    alone = encoder(short)
    together = encoder(batch, lengths=torch.tensor([short.shape[1], long.shape[1]]))
    n = int(alone.n_frames[0])
    torch.testing.assert_close(together.frames[0, :n], alone.frames[0, :n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together.clip[0], alone.clip[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", [dict(layers="last"), dict(layers="mean", last_k=2),
                                     dict(layers="concat", last_k=3, scene_pooling="meanmax")])
def test_grouping_of_windows_does_not_change_features(encoder, options):
    # Audio spanning several encoder windows: one window per forward vs all at once.
    x = audio(2, 4.3 * encoder.cfg.target_frames / 100)
    one = hear.HearModel(encoder, windows_per_forward=1, **options)
    many = hear.HearModel(encoder, windows_per_forward=64, **options)
    torch.testing.assert_close(one.embed(x).features, many.embed(x).features, atol=1e-5, rtol=1e-5)
    # ...and both equal the encoder's own whole-clip processing for the last layer.
    if options["layers"] == "last":
        torch.testing.assert_close(one.embed(x).features, encoder(x).frames, atol=1e-5, rtol=1e-5)
    emb, _ = hear.get_timestamp_embeddings(x, one)
    assert emb.shape[2] == one.timestamp_embedding_size


def test_load_model_from_export_and_training_checkpoint(encoder, tmp_path):
    export_encoder(encoder, tmp_path / "export")
    torch.save({"model": {f"encoder.{k}": v for k, v in encoder.state_dict().items()},
                "config": {"encoder": encoder.cfg.to_dict()}, "step": 3}, tmp_path / "ckpt.pt")
    x = audio(1, 1.0)
    ref = hear.get_scene_embeddings(x, hear.HearModel(encoder))
    for path in (tmp_path / "export", tmp_path / "export" / "encoder.safetensors", tmp_path / "ckpt.pt"):
        torch.testing.assert_close(hear.get_scene_embeddings(x, hear.load_model(str(path))), ref)


def test_empty_path_warns_and_gives_random_base_encoder():
    with pytest.warns(UserWarning, match="randomly initialised"):
        m = hear.load_model("")
    assert m.encoder.cfg.width == 768 and m.sample_rate == 16000


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(16000), "rank 2"),
    (torch.zeros(1, 1, 16000), "mono"),
    (torch.zeros(2, 2, 16000), "mono"),
    (torch.zeros(1, 16000, dtype=torch.int16), "floating-point"),
    (torch.full((1, 16000), float("nan")), "NaN or Inf"),
    (torch.full((1, 16000), float("inf")), "NaN or Inf"),
    (torch.zeros(1, 0), "at least 400 samples"),
    (torch.zeros(1, 399), "at least 400 samples"),
    (torch.zeros(0, 16000), "at least one sound"),
    ([[0.0] * 16000], "torch.Tensor"),
])
def test_bad_input_gives_clear_error(model, bad, message):
    for fn in (hear.get_scene_embeddings, hear.get_timestamp_embeddings):
        with pytest.raises(ValueError, match=message):
            fn(bad, model)


@pytest.mark.parametrize("option", [dict(layers="sum"), dict(last_k=0), dict(freq_reduce="max"),
                                    dict(scene_pooling="attention"), dict(timestamp_hop_ms=80)])
def test_bad_options_are_refused(encoder, option):
    with pytest.raises(ValueError):
        hear.HearModel(encoder, **option)


def test_timestamp_interpolation_in_chunks_equals_the_linear_formula(model):
    """interpolate_in_time() fills its output a chunk of timestamps at a time (bounded temporaries on long
    audio); any chunk size gives the HEAR timestamp embeddings, the linear interpolation between the
    neighbouring patch centres."""
    x = audio(2, 7.3)
    patches = model.embed(x)
    features = patches.features                                          # (B, P, D)
    times = model.embed(x, hop_ms=model.timestamp_hop_ms).timestamps_ms  # (T,) ms
    whole = interpolate_in_time(features, patches.timestamps_ms, times, patches.n_patches, chunk=10**9)
    assert torch.equal(whole, hear.get_timestamp_embeddings(x, model)[0])
    for chunk in (1, 7, 64):
        part = interpolate_in_time(features, patches.timestamps_ms, times, patches.n_patches, chunk=chunk)
        assert torch.equal(part, whole), chunk
    centres = 1000.0 * model.encoder.frame_times(features.shape[1]).double()
    t = times.double()[100]                                              # one timestamp between two centres
    j = int(torch.searchsorted(centres, t))
    w = (t - centres[j - 1]) / (centres[j] - centres[j - 1])
    expected = features[:, j - 1].double() * (1 - w) + features[:, j].double() * w
    assert torch.allclose(whole[:, 100].double(), expected, atol=1e-5)


@pytest.mark.parametrize("options", [dict(), dict(layers="mean", last_k=2, freq_reduce="mean"),
                                     dict(layers="concat", last_k=3, scene_pooling="meanmax", timestamp_hop_ms=25.0),
                                     dict(scene_pooling="meanstd", freq_reduce="mean"),
                                     dict(windows_per_forward=1, timestamp_hop_ms=50.0)])
def test_the_hear_api_is_embed_with_its_options(encoder, options):
    """Timestamp embeddings are embed() at the timestamp hop; scene embeddings pool embed()'s patches."""
    model = hear.HearModel(encoder, **options)
    x = audio(3, 3.3)
    emb, ts = hear.get_timestamp_embeddings(x, model)
    scene = hear.get_scene_embeddings(x, model)
    kw = {k: v for k, v in options.items() if k in ("layers", "last_k", "freq_reduce", "windows_per_forward")}
    with torch.no_grad():
        at_hop = encoder.embed(x, hop_ms=model.timestamp_hop_ms, **kw)
        patches = encoder.embed(x, **kw).features  # (B, P, D)
    assert torch.equal(emb, at_hop.features)
    assert torch.equal(ts, at_hop.timestamps_ms.float().expand(3, -1))
    pooled = patches.mean(1)
    if options.get("scene_pooling") == "meanmax":
        pooled = torch.cat([pooled, patches.amax(1)], dim=1)
    if options.get("scene_pooling") == "meanstd":  # population std over the clip's patches
        std = ((patches - patches.mean(1, keepdim=True)) ** 2).mean(1).sqrt()
        torch.testing.assert_close(scene[:, pooled.shape[1]:], std, atol=1e-6, rtol=1e-5)
        scene = scene[:, :pooled.shape[1]]
    assert torch.equal(scene, pooled)
    assert model.scene_embedding_size == (1 if options.get("scene_pooling", "mean") == "mean" else 2) * emb.shape[2]


def test_timestamp_output_in_host_memory_is_the_same():
    """output_device="cpu" builds the interpolated output in host memory chunk by chunk: the same numbers."""
    import hear_mamclap

    torch.manual_seed(0)
    encoder = MAMCLAPEncoder(EncoderConfig.preset("tiny")).eval()
    audio = torch.randn(2, 16000 * 3) * 0.1
    same = hear_mamclap.HearModel(encoder)
    host = hear_mamclap.HearModel(encoder, output_device="cpu")
    (a, ta), (b, tb) = (hear_mamclap.get_timestamp_embeddings(audio, m) for m in (same, host))
    assert b.device.type == "cpu"
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ta, tb)
    with pytest.raises(ValueError, match="output_device"):
        hear_mamclap.HearModel(encoder, output_device="gpu")
