"""A doctor check's result, and the guard that turns a crashing check into a warning."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

STATUSES = ("ok", "warn", "fail", "skip")


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail | skip
    message: str
    fix: str = ""
    detail: Any = field(default=None, repr=False)  # e.g. the resolved config, for --json

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def guarded(check: Callable, *args) -> list[Check]:
    """Run one check; a check that crashes is reported as a warning, never as a doctor traceback."""
    from lmtune.errors import LmtuneError

    name = getattr(check, "__name__", "check").removeprefix("check_").replace("_", " ")
    try:
        result = check(*args)
    except LmtuneError as exc:
        return [Check(name, "fail", str(exc), "fix what the message names and run lmtune doctor again")]
    except Exception as exc:  # noqa: BLE001 - a probe of a broken environment may raise anything
        return [Check(name, "warn", f"the check itself failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
                      "run with --debug for the traceback")]
    return result if isinstance(result, list) else [result]


def exit_status(checks: list[Check]) -> int:
    """0 when nothing failed (warnings and skips pass), 1 otherwise: a launch script can gate on it."""
    return int(any(c.status == "fail" for c in checks))
