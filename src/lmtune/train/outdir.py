"""The output folder belongs to one run at a time, and a finished run is never replaced unasked.

Two `lmtune train` runs into the same folder would overwrite each other's adapter and checkpoints
and interleave their metrics.jsonl while both report success. The lock is an advisory `flock` on
a file in the folder, held for the life of the process: the kernel releases it on exit and on a
crash alike, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lmtune.errors import ConfigError

LOCK_FILE = ".lmtune.lock"
# What a run leaves that a later run into the same folder would silently replace or mix with.
RESULTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")
RUN_FILES = (*RESULTS, "adapter_config.json", "config.json", "metrics.jsonl", "loss.png", "rejected.jsonl", "filtered.jsonl")

_held: dict[Path, int] = {}  # folder -> locked descriptor, kept open until the process ends


def claim(output_dir: Path, resume: str | None, overwrite: bool) -> None:
    """Lock the folder for this process; refuse a folder that holds another run's results."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"train.output_dir: {output_dir} is a file, not a folder; choose another output_dir")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        lock(output_dir)
    except PermissionError as exc:
        raise ConfigError(f"train.output_dir: cannot write to {output_dir} ({exc.strerror}); choose a folder you can write to") from None
    except OSError as exc:
        raise ConfigError(f"train.output_dir: cannot write to {output_dir} ({exc.strerror})") from None
    earlier = [name for name in RESULTS if (output_dir / name).exists()] + sorted(p.name for p in output_dir.glob("checkpoint-*"))
    if not earlier or resume:
        return
    if not overwrite:
        raise ConfigError(
            f"train.output_dir: {output_dir} already holds an earlier run ({', '.join(earlier[:3])}); "
            "pass --overwrite (or train.overwrite_output_dir: true) to replace it, train.resume=auto to continue it, "
            "or choose another output_dir"
        )
    for name in RUN_FILES:
        (output_dir / name).unlink(missing_ok=True)
    for checkpoint in output_dir.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)


def lock(folder: Path) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: no flock; runs there are not guarded
        return
    folder = folder.resolve()
    if folder in _held:
        return
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 100).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(
            f"train.output_dir: another lmtune train (process {holder}) is writing to {folder}; "
            "wait for it to finish, or choose another output_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _held[folder] = fd
