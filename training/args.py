"""Argument checking for the `mamclap` command line: a parser whose errors are one line, a help formatter
that shows every default and choice, and argparse `type=` functions that refuse bad values at parse time.

A value is checked where it is parsed, so `--steps 0` stops before any data is read, with the flag, the
value and what was expected on one line. The same checks validate config dataclasses built from Python
(`check_fields`), so a config made in code cannot hold a value the command line would refuse.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import math
import os
import re
from pathlib import Path
from typing import Callable


DEVICE_HELP = "cpu, cuda, cuda:N or auto (cuda when one is visible, else cpu)"


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default and, where a metavar hides them, its choices."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.choices is not None and action.metavar is not None \
                and not all(str(c) in text for c in action.choices):
            text += f" (choices: {', '.join(map(str, action.choices))})"
        flag_only = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)  # store_true
        shown = action.default not in (None, argparse.SUPPRESS, [], ()) and not flag_only
        if shown and (action.option_strings or action.nargs in ("?", "*")) and "default" not in text.lower():
            value = action.default
            value = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            text += f" (default: {value.replace('%', '%%') or repr(value)})"
        return text


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (the flag, the value, what was expected) and whose help
    shows defaults; subcommand parsers made with add_parser are of this class too."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        # On every command, so `mamclap pretrain ... --debug` works; SUPPRESS: a subcommand's parser does not
        # reset the value the top level parsed.
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="show the traceback of an error (also: environment MAMCLAP_DEBUG=1)")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# ---- value types: str -> value, or argparse.ArgumentTypeError saying what was expected ----

def _named(fn: Callable, name: str) -> Callable:
    fn.__name__ = fn.__qualname__ = name
    return fn


def integer(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """A type for an integer in [lo, hi] (either bound may be None)."""
    what = "an integer" + (f" >= {lo}" if lo is not None and hi is None else "") + \
        (f" in [{lo}, {hi}]" if lo is not None and hi is not None else "") + \
        (f" <= {hi}" if lo is None and hi is not None else "")

    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return _named(parse, what.replace(" ", "_"))


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> Callable[[str], float]:
    """A type for a finite float in the interval from lo to hi (open or closed at each end)."""
    if lo is not None and hi is not None:
        what = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        what = f"a number {'>' if lo_open else '>='} {lo:g}"
    else:
        what = "a finite number"

    def parse(text: str) -> float:
        try:
            value = float(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or (lo is not None and (value <= lo if lo_open else value < lo)) or \
                (hi is not None and (value >= hi if hi_open else value > hi)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    return _named(parse, what.replace(" ", "_"))


positive_int = integer(1)
nonneg_int = integer(0)
seed = integer(0, 2**32 - 1)  # numpy's seed range; torch and Python accept it too
positive_float = number(0, lo_open=True)
nonneg_float = number(0)
fraction = number(0, 1, lo_open=True, hi_open=True)


def device(text: str) -> str:
    """A type for a torch device name this project runs on: auto, cpu, cuda or cuda:N."""
    if text in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"expected a device: {DEVICE_HELP}; got {text!r}")


def existing_path(text: str) -> Path:
    """A type for a file or folder that exists."""
    path = Path(text)
    if not text or not path.exists():
        raise argparse.ArgumentTypeError(f"no such file or folder: {text!r}")
    return path


def existing_file(text: str) -> Path:
    """A type for a file that exists."""
    path = Path(text)
    if not text or not path.exists():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a file, got the folder {text!r}")
    return path


def existing_dir(text: str) -> Path:
    """A type for a folder that exists."""
    path = Path(text)
    if not text or not path.exists():
        raise argparse.ArgumentTypeError(f"no such folder: {text!r}")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a folder, got the file {text!r}")
    return path


def _blocking_file(path: Path) -> Path | None:
    """The path itself or the nearest ancestor that exists, when that is not a folder."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def out_dir(text: str) -> Path:
    """A type for an output folder: one that exists, or one that can be made (no file in the way)."""
    path = Path(text)
    if not text:
        raise argparse.ArgumentTypeError("expected an output folder, got ''")
    blocking = _blocking_file(path)
    if blocking is not None:
        raise argparse.ArgumentTypeError(f"expected an output folder, but {str(blocking)!r} is a file")
    return path


def out_file(text: str) -> Path:
    """A type for a file to write: not a folder, and no file where its folder should be."""
    path = Path(text)
    if not text:
        raise argparse.ArgumentTypeError("expected an output file, got ''")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"expected an output file, got the folder {text!r}")
    blocking = _blocking_file(path.parent)
    if blocking is not None:
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: {str(blocking)!r} is a file, not a folder")
    return path


# ---- config dataclasses ----

@functools.lru_cache(maxsize=None)  # reading the source parses the whole module: once per class
def field_comments(cls) -> dict[str, str]:
    """The comment after each field of a dataclass (`name: type = default  # comment`), the help of its flag."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # no source (a frozen build): flags go without help text
        return {}
    found = {}
    for line in source.splitlines():
        m = re.match(r"\s+(\w+)\s*:[^=#]+=[^#]*#\s*(.+)$", line)
        if m:
            found[m.group(1)] = m.group(2).strip()
    return found


def check_fields(cfg, rules: dict[str, Callable]) -> None:
    """ValueError naming the field when a value of a config dataclass fails the type of its flag."""
    for name, rule in rules.items():
        try:
            rule(str(getattr(cfg, name)))
        except argparse.ArgumentTypeError as err:
            raise ValueError(f"{type(cfg).__name__}.{name}: {err}") from None



def add_config_arguments(parser: argparse.ArgumentParser, cls, rules: dict[str, Callable],
                         choices: dict[str, tuple] | None = None, skip: tuple[str, ...] = (),
                         default_none: bool = False, aliases: dict[str, list[str]] | None = None) -> None:
    """One flag per field of a config dataclass (--field-name), with the field's comment as help.

    aliases: other flags for a field (old names kept working), e.g. {"variant": ["--preset"]}.
    rules: the type of a field's flag (default: the type of its default value); choices: allowed values.
    default_none: every flag defaults to None (the config's default is shown in the help), so the command can
    tell the flags a user gave from those left alone.
    """
    comments, defaults, choices = field_comments(cls), cls(), choices or {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        value = getattr(defaults, f.name)
        flags = ["--" + f.name.replace("_", "-"), *(aliases or {}).get(f.name, [])]
        text = comments.get(f.name, f.name.replace("_", " "))
        if default_none:
            text += f" (default: {str(value).replace('%', '%%') if value != '' else 'none'})"
        kwargs = {"default": None if default_none else value, "help": text}
        if isinstance(value, bool):
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            parser.add_argument(*flags, type=rules.get(f.name, type(value)), choices=choices.get(f.name), **kwargs)


def given_fields(args: argparse.Namespace, cls, skip: tuple[str, ...] = ()) -> dict:
    """The fields of a config dataclass that were given on the command line (flags added with
    default_none=True)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if f.name not in skip and getattr(args, f.name, None) is not None}


def debug_enabled(args: argparse.Namespace | None = None) -> bool:
    """--debug given, or MAMCLAP_DEBUG=1 in the environment: errors show their traceback."""
    return getattr(args, "debug", False) or os.environ.get("MAMCLAP_DEBUG", "") not in ("", "0")
