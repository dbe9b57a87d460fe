"""`lmtune doctor` and `lmtune env`: what is wrong with this machine, model or config, and the versions for a bug report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

STYLE = {"ok": "green", "warn": "yellow", "fail": "red", "skip": "dim"}


def doctor(
    model: Optional[str] = typer.Option(None, "--model", help="Also check a model folder (or hub id): RAM, disk, dtype, tokenizer."),
    config: Optional[Path] = typer.Option(None, "--config", help="Also check a run config: resolved, data readable, one dry-run step."),
    as_json: bool = typer.Option(False, "--json", help="Print every check as JSON (status, message, fix)."),
):
    """Check the machine (and a model or config) for what breaks fine-tuning; exit 1 when a check fails."""
    from lmtune.doctor import run_checks
    from lmtune.doctor.check import exit_status

    checks = run_checks(model, config)
    if as_json:
        print(json.dumps([c.to_dict() for c in checks], ensure_ascii=False, indent=1))
    else:
        _print_table(checks)
    raise typer.Exit(exit_status(checks))


def _print_table(checks) -> None:
    table = Table("check", "status", "finding", "fix")
    for column in table.columns[2:]:
        column.overflow = "fold"
    for c in checks:
        table.add_row(escape(c.name), f"[{STYLE[c.status]}]{c.status}[/]", escape(c.message), escape(c.fix))
    out = Console(soft_wrap=False)
    out.print(table)
    counts = {s: sum(c.status == s for c in checks) for s in STYLE}
    out.print(", ".join(f"{n} {s}" for s, n in counts.items() if n))


def env():
    """Print the versions a bug report needs (Python, OS, torch with CUDA/cuDNN/NCCL, the libraries, GPUs)."""
    from lmtune.doctor.env import environment, format_environment

    print(format_environment(environment()))
