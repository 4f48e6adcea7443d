"""Fuzzing with a fixed seed: malformed inputs to the HEAR API and argument lists to every `mamclap` command.

HEAR API: each input gives embeddings of the documented shapes with finite values, or a ValueError whose
message is one line; never another exception. CLI: each argument list, run in this process, either reaches the
command's work (the heavy functions are replaced by one raising `Accepted`, so nothing trains) or ends with
exit status 0, 1 or 2, one line on stderr for 2, never a traceback. An alarm turns any hang into a failure.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import random
import signal

import numpy as np
import pytest
import torch

import hear_mamclap
from hear_mamclap.checkpoint import export_encoder
from hear_mamclap.model import EncoderConfig, MAMCLAPEncoder
from training import args as checks

SEED = 20261202


@contextlib.contextmanager
def deadline(seconds: int, what: str):
    def fire(signum, frame):
        raise TimeoutError(f"hung for {seconds} s: {what}")
    previous = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    torch.manual_seed(0)
    return export_encoder(MAMCLAPEncoder(EncoderConfig.preset("tiny")), tmp_path_factory.mktemp("fuzz") / "enc")


@pytest.fixture(scope="module")
def model(export):
    return hear_mamclap.load_model(str(export))


# ---- the HEAR API ----

def random_audio(rng: random.Random):
    """A mostly malformed audio argument, and a description of it."""
    n = rng.choice([0, 1, 100, 399, 400, 401, 1600, 16000, 16000 * 2 + 7])
    batch = rng.choice([0, 1, 2, 3])
    kind = rng.choice(["ok", "ok", "dtype", "ndim", "nan", "inf", "huge", "int16_scale", "not_tensor",
                       "non_contiguous", "requires_grad", "constant"])
    x = torch.randn(batch, n, generator=torch.Generator().manual_seed(rng.randrange(2**31))) * 0.1
    if kind == "dtype":
        dtype = rng.choice([torch.int16, torch.int32, torch.bool, torch.complex64, torch.float16, torch.float64,
                            torch.bfloat16, torch.uint8])
        x = (x * 1000).to(dtype) if not dtype.is_complex else x.to(dtype)
    elif kind == "ndim":
        x = rng.choice([x.reshape(-1), x[None], x[..., None], torch.tensor(0.5), x[None, None]])
    elif kind in ("nan", "inf") and x.numel():
        x.view(-1)[rng.randrange(x.numel())] = math.nan if kind == "nan" else -math.inf
    elif kind == "huge":
        x = x * rng.choice([1e6, 1e11, 1e13, 1e20, 3e38])
    elif kind == "int16_scale":
        x = x * 32767
    elif kind == "not_tensor":
        x = rng.choice([x.numpy(), x.tolist(), None, "audio.wav", 16000])
    elif kind == "non_contiguous" and x.ndim == 2:
        x = torch.randn(n, batch).T * 0.1
    elif kind == "requires_grad":
        x = x.clone().requires_grad_(True)
    elif kind == "constant":
        x = torch.full((batch, n), rng.choice([0.0, 1.0, -1.0]))
    shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
    return x, f"{kind} {shape} {getattr(x, 'dtype', '')}"


def check_one_line(err: ValueError, what: str) -> None:
    message = str(err)
    assert message and "\n" not in message, f"{what}: {message!r}"


def test_hear_api_malformed_audio(model):
    rng = random.Random(SEED)
    outcomes = {"embedded": 0, "refused": 0}
    for _ in range(60):
        audio, what = random_audio(rng)
        with deadline(60, what):
            try:
                scene = hear_mamclap.get_scene_embeddings(audio, model)
                emb, times = hear_mamclap.get_timestamp_embeddings(audio, model)
            except ValueError as err:
                check_one_line(err, what)
                outcomes["refused"] += 1
                continue
        n_sounds = audio.shape[0]
        assert scene.shape == (n_sounds, model.scene_embedding_size), what
        assert emb.shape[:2] == times.shape and emb.shape[0] == n_sounds, what
        assert emb.shape[2] == model.timestamp_embedding_size, what
        assert torch.isfinite(scene).all() and torch.isfinite(emb).all(), f"non-finite embeddings for {what}"
        assert (times[:, 1:] > times[:, :-1]).all(), what
        outcomes["embedded"] += 1
    assert outcomes["embedded"] >= 10 and outcomes["refused"] >= 10, outcomes


OPTION_VALUES = {
    "layers": ["last", "mean", "concat", "first", "", 1, None],
    "last_k": [1, 2, 3, 0, -1, 4, 1.5, "2", True, None],
    "freq_reduce": ["concat", "mean", "max", 0],
    "scene_pooling": ["mean", "meanmax", "max", []],
    "timestamp_hop_ms": [40, 25.0, 50, 50.1, 0, -5, float("nan"), float("inf"), "40", True],
    "windows_per_forward": [1, 2, 8, 0, -1, 1.5, "8", None, 10**9],
    "sample_rate": [16000, 44100],
    "hop": [40],
}


def test_hear_api_model_options(export):
    """Options load or are refused at load time: a model that loads embeds."""
    rng = random.Random(SEED + 1)
    audio = torch.randn(1, 16000) * 0.1
    loaded = refused = 0
    for _ in range(40):
        options = {name: rng.choice(values) for name, values in rng.sample(sorted(OPTION_VALUES.items()),
                                                                             rng.randint(1, 3))}
        with deadline(60, repr(options)):
            try:
                m = hear_mamclap.load_model(str(export), **options)
            except ValueError as err:
                check_one_line(err, repr(options))
                refused += 1
                continue
            scene = hear_mamclap.get_scene_embeddings(audio, m)
            emb, _ = hear_mamclap.get_timestamp_embeddings(audio, m)
        assert scene.shape == (1, m.scene_embedding_size) and emb.shape[2] == m.timestamp_embedding_size
        loaded += 1
    assert loaded >= 5 and refused >= 10, (loaded, refused)


# ---- the command line ----

class Accepted(Exception):
    """Raised in place of a command's work: the arguments got through every check before it."""


HEAVY = [("training.pretrain.train", "train"), ("training.pretrain.clap_train", "train"),
         ("training.pretrain.clap_train", "open_corpus"), ("training.pretrain.teacher", "init_laion_checkpoint"),
         ("training.eval.superb", "evaluate_task"), ("training.eval.hear", "evaluate"),
         ("training.eval.hear", "predict"), ("training.eval.readout", "choose_readouts"),
         ("training.eval.tables", "make_tables"), ("training.demo", "run_stages"),
         ("training.kit.build", "build_kit"), ("training.kit.build", "check_kit"),
         ("training.kit.bank", "build_bank"), ("training.kit.debian", "setup")]


def _commands(parser, path=()):
    """(path, parser) of every command that does something (a leaf of the subcommand tree)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _commands(sub, (*path, name))


BAD_NUMBERS = ["0", "-1", "-2", "abc", "", "1.5", "1e3", "nan", "inf", "-inf", "9" * 30, "0x10", " 3", "1e400"]


def _values(action, paths: dict) -> tuple[list[str], list[str]]:
    """(good values, mistakes people make) for an option or positional."""
    t = action.type
    if action.choices:
        good = [str(c) for c in action.choices]
        return good, [good[0].upper(), "nope", "", " " + good[0]]
    if t in (checks.positive_int, checks.nonneg_int, checks.seed, int):
        return ["1", "2", "3"], BAD_NUMBERS
    if t in (checks.positive_float, checks.nonneg_float, checks.fraction, float):
        return ["0.5", "0.1"], BAD_NUMBERS
    if t is checks.device:
        return ["cpu", "auto"], ["gpu", "cuda:x", "cuda:-1", "CPU", "", "cuda:99"]
    bad_paths = [str(paths[k]) for k in ("missing", "under_file")] + ["", "-"]
    if t is checks.existing_dir:
        return [str(paths["dir"])], bad_paths + [str(paths["file"])]
    if t is checks.existing_file:
        return [str(paths["file"])], bad_paths + [str(paths["dir"])]
    if t is checks.existing_path:
        return [str(paths["export"])], bad_paths
    if t is checks.out_dir:
        return [str(paths["new_dir"])], [str(paths["file"]), str(paths["under_file"]), ""]
    if t is checks.out_file:
        return [str(paths["new_file"])], [str(paths["dir"]), str(paths["under_file"]), ""]
    if getattr(t, "__name__", "") == "override":
        return ["mask_ratio=0.5", "lambda_cls=0.1"], ["mask_ratioo=1", "mask_ratio", "=1", "mask_ratio=1.5",
                                                       "lambda_cls=-1", "cls_pooling=max", "norm_pix_loss=maybe",
                                                       "decoder_heads=3", "encoder={}", "n_classes=1.5"]
    if action.dest == "model_options":
        return ["{}", '{"layers": "mean"}'], ["x", "[1]", '{"layers": 3', ""]
    return ["x"], ["", "--", "-1", str(paths["file"])]


def random_argv(rng: random.Random, commands: list, paths: dict) -> list[str]:
    """A command with its required arguments, then up to three mistakes or extra options."""
    path, parser = rng.choice(commands)
    options = [a for a in parser._actions if a.option_strings and a.dest not in ("help", "debug")]
    positionals = [a for a in parser._actions if not a.option_strings]
    chosen = [(a, rng.choice(_values(a, paths)[0])) for a in options if a.required]
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        if not options:
            break
        action = rng.choice(options)
        good, bad = _values(action, paths)
        mistake = rng.random()
        if mistake < 0.15 and chosen:
            chosen.pop(rng.randrange(len(chosen)))  # a required option left out
        chosen.append((action, rng.choice(bad if mistake < 0.6 else good)))
    argv = list(path)
    for action, value in chosen:
        argv += [rng.choice(action.option_strings)] + ([] if action.nargs == 0 else [value])
    for action in positionals:
        argv += [rng.choice(_values(action, paths)[rng.random() < 0.3]) for _ in range(rng.choice([0, 1, 1, 2]))]
    if rng.random() < 0.1:
        argv.insert(rng.randrange(len(argv) + 1), rng.choice(["--nope", "-x", "--", "--steps", "extra"]))
    if rng.random() < 0.05 and options:
        argv.append(rng.choice(rng.choice(options).option_strings))  # a flag without its value
    return argv


def test_cli_malformed_arguments(tmp_path, monkeypatch, capsys, export):
    import importlib

    from training import cli
    for module, name in HEAVY:
        def accept(*args, **kwargs):
            raise Accepted(f"{args} {kwargs}")
        monkeypatch.setattr(importlib.import_module(module), name, accept)
    monkeypatch.chdir(tmp_path)  # relative defaults (runs/, results/) land here
    a_file = tmp_path / "a_file"
    a_file.write_text("not what any command expects")
    (tmp_path / "a_dir").mkdir()
    paths = {"file": a_file, "dir": tmp_path / "a_dir", "missing": tmp_path / "missing", "export": export,
             "under_file": a_file / "sub", "new_dir": tmp_path / "new", "new_file": tmp_path / "new" / "out.json"}
    parser = cli.build_parser()
    commands = list(_commands(parser))
    rng = random.Random(SEED + 2)
    counts = {"accepted": 0, "exit 0": 0, "exit 1": 0, "exit 2": 0}
    for _ in range(400):
        argv = random_argv(rng, commands, paths)
        with deadline(30, str(argv)):
            try:
                rc = cli.run(parser.parse_args(argv))
            except Accepted:
                rc = "accepted"
            except SystemExit as exit_:
                rc = exit_.code
        out = capsys.readouterr()
        lines = [line for line in out.err.splitlines() if line.strip()]
        assert "Traceback" not in out.err, (argv, out.err)
        if rc == "accepted":
            counts["accepted"] += 1
            continue
        assert rc in (0, 1, 2), (argv, rc, out.err)
        assert rc == 0 or len(lines) <= 1, (argv, out.err)
        assert rc != 2 or len(lines) == 1, (argv, out.err)
        counts[f"exit {rc}"] += 1
    assert counts["accepted"] >= 50 and counts["exit 2"] >= 100, counts
