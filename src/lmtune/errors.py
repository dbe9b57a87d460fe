"""Errors meant for users: the CLI prints their message on one line and exits with status 2."""

from __future__ import annotations


class LmtuneError(Exception):
    """A problem the user can fix; the message says what was wrong, where, and what to do."""


class ConfigError(LmtuneError):
    pass


class DataError(LmtuneError):
    pass


class RecordError(DataError):
    """One record is unusable; the message is the reason alone, the loader adds file and line."""


class ModelError(LmtuneError):
    pass


class AdapterError(LmtuneError):
    pass


class BadRecordError(DataError):
    """A bad record stopped the run (on_error: raise). The message ends with how to set such records
    aside: the config key by default; a command with its own --on-error flag names the flag instead."""

    def __init__(self, problem: str, aside: str, fix: str = "set data.on_error: skip"):
        self.problem, self.aside = problem, aside
        super().__init__(f"{problem} ({fix} {aside})")

    def with_fix(self, fix: str) -> BadRecordError:
        return BadRecordError(self.problem, self.aside, fix)


def first_line(exc: BaseException) -> str:
    """A library's error in one line: its first (libraries put the cause there, then advice or a dump)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class KbError(LmtuneError):
    """A knowledge base is missing, built differently, or was given something it cannot read."""
