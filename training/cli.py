"""`mamclap`: one command line for the project's jobs.

Each area registers its own subcommands with a ``register(subparsers)`` function, so this file stays a
table of contents: ``mamclap data ...`` (the offline sound kit), and later ``teacher``, ``pretrain``,
``hear``, ``superb`` and ``tables``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# (module, help) for each top-level subcommand; the module defines register(subparsers).
COMMANDS = [
    ("training.kit.cli", "data"),
    ("training.pretrain.train", "pretrain"),
    ("training.pretrain.feature_cache", "precompute"),
    ("training.pretrain.clap_train", "teacher"),
    ("training.eval.superb", "superb"),
    ("training.eval.hear", "hear"),
    ("training.demo", "demo"),
    ("training.eval.tables", "tables"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mamclap", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module, _name in COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
