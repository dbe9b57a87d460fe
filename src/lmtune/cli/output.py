"""Where the command line writes: messages and errors to stderr, results to stdout, and the one
place a failure becomes its message and exit status 2.

Both consoles and the log handler look up sys.stdout / sys.stderr when they write, not when they
are made, so a command run in-process (lmtune.cli.main([...]) in the tests) is captured like a
subprocess's output."""

from __future__ import annotations

import logging
import sys
import warnings

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from lmtune.errors import LmtuneError

_SETTINGS = ({"stderr": True, "soft_wrap": True}, {"soft_wrap": True})
console = Console(**_SETTINGS[0])  # progress, messages, errors
out_console = Console(**_SETTINGS[1])  # tables and text a user may pipe
_state = {"debug": False}


def debugging() -> bool:
    return _state["debug"]


def setup(debug: bool) -> None:
    """Each command's start. --debug: tracebacks instead of one-line errors, and lmtune's debug log."""
    _state["debug"] = debug
    for made, settings in zip((console, out_console), _SETTINGS):
        made.__init__(**settings)  # the terminal's width and colours (COLUMNS, NO_COLOR) as they are now, not at import
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    logging.getLogger("lmtune").setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*pin_memory.*")


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever sys.stderr is at the time of each record."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


class Commands(TyperGroup):
    """The root command group: an LmtuneError from any command is printed as one line, exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LmtuneError as exc:
            if _state["debug"]:
                raise
            console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
