"""Checkpoints that resume can trust.

The Trainer writes checkpoint-STEP/ piece by piece (weights, optimizer, RNG, trainer state); a
process killed in the middle leaves a folder that looks like a checkpoint but is not. After the
Trainer has finished one, a COMPLETE marker is written atomically (temporary file + rename), and
`resume: auto` only ever picks a folder that has it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from transformers import TrainerCallback

from lmtune.errors import ConfigError

MARKER = "COMPLETE"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)$")


class MarkComplete(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if not args.should_save:
            return
        mark_complete(Path(args.output_dir) / f"checkpoint-{state.global_step}", state.global_step)


def mark_complete(folder: Path, step: int) -> None:
    tmp = folder / f".{MARKER}.tmp"
    tmp.write_text(f"{step}\n", encoding="utf-8")
    os.replace(tmp, folder / MARKER)  # atomic: the marker is there whole, or not at all


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folders = [p for p in Path(output_dir).glob("checkpoint-*") if _CHECKPOINT.search(p.name) and (p / MARKER).is_file()]
    return sorted(folders, key=lambda p: int(_CHECKPOINT.search(p.name).group(1)))


def resume_point(output_dir: str | Path, resume: str | None) -> Path | None:
    """The checkpoint to continue from: none, the newest complete one (auto), or the one named."""
    if not resume:
        return None
    if resume == "auto":
        found = complete_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / MARKER).is_file():
        raise ConfigError(f"train.resume: {path} is not a complete checkpoint (no {MARKER} marker); use resume: auto")
    return path


def step_of(checkpoint: Path) -> int:
    return int(_CHECKPOINT.search(checkpoint.name).group(1))
