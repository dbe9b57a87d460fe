"""`lmtune doctor`: checks of the machine, a model folder and a run config, each ok / warn / fail / skip.

Every check is a small function returning a Check; `run_checks` collects them. A check imports only
what it inspects (find_spec and importlib.metadata for presence), so the environment checks finish
in seconds; the model and config checks load what they must.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
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


def run_checks(model: str | None = None, config: Path | None = None) -> list[Check]:
    from lmtune.doctor.checks import ENVIRONMENT

    results = [c for check in ENVIRONMENT for c in guarded(check)]
    if model:
        from lmtune.doctor.model import model_checks

        results += model_checks(model)
    if config:
        from lmtune.doctor.run import config_checks

        results += config_checks(config)
    return results


def exit_status(checks: list[Check]) -> int:
    """0 when nothing failed (warnings and skips pass), 1 otherwise: a launch script can gate on it."""
    return int(any(c.status == "fail" for c in checks))
