"""`mamclap`: one command line for the project's jobs.

Each area registers its own subcommands with a ``register(subparsers)`` function, so this file stays a
table of contents: ``data`` (the offline sound kit), ``pretrain``, ``teacher`` (CLAP teacher training),
``superb`` and ``hear`` (the evaluation harnesses), ``demo`` (the whole pipeline on the tiny kit),
``tables``, ``diagnose`` (the losses' trivial floors), ``convert`` (AudioMAE/timm checkpoints) and
``export`` (an export with a model card, and the repository's release in results/models/).

Errors. A user's mistake (a bad argument, a missing or unreadable file: UserError, ValueError, the
FileNotFoundError family) is reported on one line naming the argument or file, exit status 2; `--debug` or
MAMCLAP_DEBUG=1 adds the traceback. SIGTERM stops a command like Ctrl-C does (its `with` blocks and
`finally` clauses run, so worker pools and temporary files go with it), exit status 128 + the signal.
Anything else is a bug and shows its traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
import traceback

from hear_mamclap.errors import Interrupted, UserError
from training.args import Parser, debug_enabled

# (module, help) for each top-level subcommand; the module defines register(subparsers).
COMMANDS = [
    ("training.kit.cli", "data"),
    ("training.pretrain.train", "pretrain"),
    ("training.pretrain.feature_cache", "precompute"),
    ("training.pretrain.clap_train", "teacher"),
    ("training.eval.superb", "superb"),
    ("training.eval.hear", "hear"),
    ("training.eval.finetune", "finetune"),
    ("training.demo", "demo"),
    ("training.eval.tables", "tables"),
    ("training.eval.floors", "diagnose"),
    ("training.convert", "convert"),
    ("training.release", "export"),
]


# Exceptions that mean the input was wrong, not the code: reported in one line.
USER_ERRORS = (UserError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError,
               PermissionError)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mamclap", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module, _name in COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


@contextlib.contextmanager
def sigterm_raises():
    """While active, SIGTERM raises Interrupted in the main thread (by default it ends the process at once,
    leaving worker processes and temporary files behind)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """`mamclap ARGV`; its exit status (argparse's own for --help and for arguments it refuses)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # the parser has printed its one line (or the help)
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 2
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Run a parsed command through the error path above; its exit status."""
    where = "mamclap " + args.command
    debug = debug_enabled(args)
    try:
        with sigterm_raises():
            return int(args.func(args) or 0)
    except Interrupted as err:
        if debug:
            traceback.print_exc()
        print(f"{where}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{where}: interrupted (SIGINT)", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if debug:
            traceback.print_exc()
        print(f"{where}: error: {err}" + ("" if debug else "  [--debug shows the traceback]"), file=sys.stderr)
        return 2
    except SystemExit as err:  # raise SystemExit("message"): a command refusing bad input in one line
        if isinstance(err.code, str):
            print(err.code, file=sys.stderr)
            err.code = 2  # exit status 2 like every other refusal; str(err) keeps the message
        raise


if __name__ == "__main__":
    sys.exit(main())
