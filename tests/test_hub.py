"""from_pretrained / save_pretrained: a local folder round trip, offline, with a model card."""
from __future__ import annotations

import pytest
import torch

from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder


def test_save_and_load_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    encoder = MAMCLAPEncoder(EncoderConfig.preset("tiny")).eval()
    folder = encoder.save_pretrained(tmp_path / "model", metadata={"variant": "supmam_clap", "size": "tiny"})
    assert {p.name for p in folder.iterdir()} == {"encoder.safetensors", "encoder.json", "README.md"}
    card = (folder / "README.md").read_text()
    assert "supmam_clap" in card and "64 x 3 x 4" in card and "from_pretrained" in card
    loaded = MAMCLAPEncoder.from_pretrained(folder)
    audio = torch.randn(2, 16000)
    with torch.no_grad():
        torch.testing.assert_close(loaded(audio).frames, encoder(audio).frames)
    assert loaded.metadata["variant"] == "supmam_clap"


def test_from_pretrained_names_what_it_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a Hub repository id"):
        MAMCLAPEncoder.from_pretrained(tmp_path / "missing" / "deeper")


def test_hub_id_offline_without_cache_fails_clearly(monkeypatch, tmp_path):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(Exception) as info:
        MAMCLAPEncoder.from_pretrained("someone/no-such-model")
    assert "offline" in str(info.value).lower() or "cache" in str(info.value).lower()
