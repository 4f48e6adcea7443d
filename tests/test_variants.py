"""The four variants as data: one table of loss weights, asked through uses_teacher / uses_labels; the
`--variant` flag (and its old name `--preset`); checkpoints that still call the variant "preset"."""
from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from training.pretrain.mam import VARIANT_WEIGHTS, VARIANTS, PretrainConfig
from training.pretrain.train import TrainConfig, register

# (uses_teacher, uses_labels), written out by hand: what each method of the paper needs.
NEEDS = {"mam": (False, False), "mam_clap": (True, False), "supmam": (False, True), "supmam_clap": (True, True)}


@pytest.mark.parametrize("variant", list(NEEDS))
def test_each_variant_says_what_it_needs(variant):
    cfg = PretrainConfig.preset(variant, size="tiny")
    assert (cfg.uses_teacher, cfg.uses_labels) == NEEDS[variant]
    assert cfg.uses_decoder  # every variant reconstructs


def test_the_table_is_the_only_difference_between_variants():
    assert VARIANTS == tuple(NEEDS) == tuple(VARIANT_WEIGHTS)
    base = PretrainConfig.preset("mam")
    for variant, weights in VARIANT_WEIGHTS.items():
        cfg = PretrainConfig.preset(variant)
        assert cfg == dataclasses.replace(base, **weights), variant
    # Overrides decide, not the name: SupMAM without its classification loss needs no labels.
    assert not PretrainConfig.preset("supmam", lambda_cls=0.0).uses_labels
    assert not PretrainConfig.preset("mam_clap", distill_visible_weight=0.0, distill_masked_weight=0.0).uses_teacher


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["pretrain", *argv])


def test_variant_flag_and_its_old_name():
    assert parse("--variant", "mam_clap").variant == "mam_clap"
    assert parse("--preset", "supmam").variant == "supmam"  # commands written before the rename still work
    from training.args import given_fields
    assert TrainConfig(**given_fields(parse(), TrainConfig, skip=("overrides",))).variant == TrainConfig().variant
    with pytest.raises(SystemExit):
        parse("--variant", "mae")


def test_train_config_from_a_checkpoint_written_before_the_rename():
    saved = {**dataclasses.asdict(TrainConfig(variant="supmam", overrides=(("lambda_cls", "0.1"),)))}
    saved["preset"] = saved.pop("variant")
    saved["overrides"] = [list(kv) for kv in saved["overrides"]]  # as torch.load gives them back
    cfg = TrainConfig.from_dict(saved)
    assert cfg == TrainConfig(variant="supmam", overrides=(("lambda_cls", "0.1"),))
    assert cfg.pretrain_config().lambda_cls == 0.1 and cfg.pretrain_config().uses_labels
    assert TrainConfig.from_dict(dataclasses.asdict(cfg)) == cfg


def test_checkpoint_metadata_names_the_variant_under_either_key(tmp_path):
    from hear_mamclap.checkpoint import read_metadata

    pcfg = PretrainConfig.preset("mam", size="tiny")
    for key in ("variant", "preset"):
        path = tmp_path / f"{key}.pt"
        torch.save({"model": {}, "config": pcfg.to_dict(), "step": 1,
                    "train_config": {key: "mam_clap", "size": "tiny", "seed": 3}}, path)
        meta = read_metadata(path)
        assert (meta["variant"], meta["size"], meta["seed"]) == ("mam_clap", "tiny", 3), key
