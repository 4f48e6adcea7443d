"""AudioMAE / timm interop: a timm ViT in AudioMAE's configuration, converted, gives the same tokens."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

timm_vit = pytest.importorskip("timm.models.vision_transformer")

import hear_mamclap  # noqa: E402
from hear_mamclap import convert  # noqa: E402
from hear_mamclap.checkpoint import load_encoder  # noqa: E402
from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder  # noqa: E402
from training.cli import main  # noqa: E402

SMALL = replace(convert.AUDIOMAE, target_frames=128, n_mels=64, width=64, depth=2, heads=4)  # fast variants


def timm_model(cfg: EncoderConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm_vit.VisionTransformer(**convert.timm_kwargs(cfg)).eval()
    with torch.no_grad():  # random positions and CLS: the conversion must not depend on AudioMAE's values
        model.pos_embed.normal_(std=0.5)
        model.cls_token.normal_(std=0.5)
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(std=0.1)  # non-trivial norms and biases, so a swapped name shows
    return model


def log_mel(cfg: EncoderConfig, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, cfg.target_frames, cfg.n_mels)  # normalised log-mel, (B, T, F)


@pytest.mark.parametrize("cfg", [pytest.param(convert.AUDIOMAE, marks=pytest.mark.slow), SMALL],
                         ids=["audiomae-vit-b", "small"])
def test_timm_to_ours_gives_identical_tokens(cfg):
    model = timm_model(cfg)
    encoder, notes = convert.from_timm(model.state_dict(), cfg)
    mel = log_mel(cfg, batch=1 if cfg is convert.AUDIOMAE else 2)
    with torch.no_grad():
        want = model.forward_features(mel[:, None])  # (B, 1 + N, D): timm takes (B, 1, T, F)
        got, _ = encoder.forward_features(mel)
    assert notes == []
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_ours_to_timm_gives_identical_tokens_and_round_trips():
    encoder = MAMCLAPEncoder(replace(SMALL, pos_embed="sincos")).eval()  # our own sin-cos positions
    model = timm_vit.VisionTransformer(**convert.timm_kwargs(encoder.cfg)).eval()
    model.load_state_dict(convert.to_timm(encoder), strict=True)
    mel = log_mel(encoder.cfg)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(mel[:, None]), encoder.forward_features(mel)[0],
                                   atol=2e-5, rtol=1e-4)
    back, _ = convert.from_timm(model.state_dict(), encoder.cfg)
    for key, value in convert.to_timm(back).items():
        torch.testing.assert_close(value, model.state_dict()[key])


def test_stored_positions_survive_export(tmp_path):
    encoder, _ = convert.from_timm(timm_model(SMALL).state_dict(), SMALL)
    from hear_mamclap.checkpoint import export_encoder

    loaded = load_encoder(export_encoder(encoder, tmp_path / "enc"))
    assert loaded.cfg.pos_embed == "stored"
    torch.testing.assert_close(loaded.pos_embed, encoder.pos_embed)
    assert not torch.allclose(loaded.pos_embed, MAMCLAPEncoder(replace(SMALL, pos_embed="sincos")).pos_embed)


def test_audiomae_checkpoint_file_to_hear_module(tmp_path, capsys):
    """An AudioMAE pretraining checkpoint ({"model": ...} with decoder and mask token) through the CLI to an
    export that the HEAR API loads; its features are the converted encoder's."""
    model = timm_model(SMALL)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["mask_token"] = torch.zeros(1, 1, 32)
    state["decoder_embed.weight"] = torch.zeros(32, 64)
    torch.save({"model": state, "epoch": 3}, tmp_path / "pretrained.pth")
    argv = ["convert", "audiomae", str(tmp_path / "pretrained.pth"), "--out", str(tmp_path / "export"),
            "--heads", "4", "--target-frames", "128", "--n-mels", "64"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "dropped decoder_embed*" in out and "dropped mask_token*" in out
    hear = hear_mamclap.load_model(str(tmp_path / "export"))
    audio = torch.randn(2, 16000)
    scene = hear_mamclap.get_scene_embeddings(audio, hear)
    encoder, _ = convert.from_timm(model.state_dict(), SMALL)
    with torch.no_grad():
        want = encoder(audio).clip
    assert scene.shape == want.shape
    torch.testing.assert_close(scene, want, atol=1e-5, rtol=1e-4)


def test_to_timm_cli_writes_a_loadable_state_dict(tmp_path):
    from safetensors.torch import load_file
    from hear_mamclap.checkpoint import export_encoder

    encoder = MAMCLAPEncoder(EncoderConfig.preset("tiny")).eval()
    export_encoder(encoder, tmp_path / "enc")
    assert main(["convert", "to-timm", str(tmp_path / "enc"), "--out", str(tmp_path / "vit.safetensors")]) == 0
    model = timm_vit.VisionTransformer(**convert.timm_kwargs(encoder.cfg))
    model.load_state_dict(load_file(str(tmp_path / "vit.safetensors")), strict=True)
    assert (tmp_path / "vit.json").is_file()


def test_unsupported_layouts_are_refused():
    state = timm_model(SMALL).state_dict()
    with pytest.raises(ValueError, match="LayerScale"):
        convert.from_timm({**state, "blocks.0.ls1.gamma": torch.ones(64)}, SMALL)
    with pytest.raises(ValueError, match="one-channel"):
        convert.from_timm({**state, "patch_embed.proj.weight": torch.zeros(64, 3, 16, 16)}, SMALL)
    with pytest.raises(ValueError, match="positions"):
        convert.from_timm(state, replace(SMALL, target_frames=256))
    fc = {("fc_norm" + k[4:] if k.startswith("norm.") else k): v for k, v in state.items()}
    _, notes = convert.from_timm(fc, SMALL)
    assert any("fc_norm" in n for n in notes)


def test_init_from_copies_an_export_into_the_pretraining_encoder(tmp_path):
    """pretrain --init-from: the wrapper's encoder starts from the export's weights; another size is refused."""
    from hear_mamclap.checkpoint import export_encoder
    from hear_mamclap.errors import UserError
    from training.pretrain.mam import MAMPretrainer, PretrainConfig
    from training.pretrain.train import init_encoder

    torch.manual_seed(3)
    source = MAMCLAPEncoder(EncoderConfig.preset("tiny"))
    export_encoder(source, tmp_path / "enc")
    model = MAMPretrainer(PretrainConfig.preset("mam", size="tiny"))
    assert not torch.equal(model.encoder.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    init_encoder(model.encoder, str(tmp_path / "enc"))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.encoder.state_dict()[key], value)
    with pytest.raises(UserError, match="differs from --size"):
        init_encoder(MAMPretrainer(PretrainConfig.preset("mam", size="small")).encoder, str(tmp_path / "enc"))
