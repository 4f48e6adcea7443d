"""The two exceptions the command line treats as expected outcomes rather than bugs.

`UserError` is a mistake in what the user gave (an argument, a file): its message alone, naming the argument
or file and what was expected, is the whole report, so `mamclap` prints it as one line and exits 2 (a
traceback only with --debug). It is a ValueError, so code that already catches ValueError for bad input
keeps working. `Interrupted` is a run stopped by a signal after it saved what it could; the command exits
128 + the signal number, as a shell reports a process killed by that signal.
"""
from __future__ import annotations

import signal


class UserError(ValueError):
    """A bad argument or input file; the message names it and says what was expected."""


class Interrupted(Exception):
    """A run stopped cleanly on SIGINT or SIGTERM; the message says what was saved and how to go on."""

    def __init__(self, signum: int, message: str = "") -> None:
        self.signum = int(signum)
        super().__init__(message or f"interrupted by {signal.Signals(self.signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
