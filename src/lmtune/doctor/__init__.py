"""`lmtune doctor`: checks of the machine, a model folder and a run config, each ok / warn / fail / skip.

Every check is a small function returning a Check; `run_checks` collects them. A check imports only
what it inspects (find_spec and importlib.metadata for presence), so the environment checks finish
in seconds; the model and config checks load what they must.
"""

from __future__ import annotations

from pathlib import Path

from lmtune.doctor.check import Check, guarded


def run_checks(model: str | None = None, config: Path | None = None) -> list[Check]:
    from lmtune.doctor.checks import ENVIRONMENT
    from lmtune.doctor.vllm import check_vllm

    results = [c for check in (*ENVIRONMENT, check_vllm) for c in guarded(check)]
    if model:
        from lmtune.doctor.model import model_checks

        results += model_checks(model)
    if config:
        from lmtune.doctor.run import config_checks

        results += config_checks(config)
    return results
