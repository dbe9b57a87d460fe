"""More than one process: `lmtune train` re-launches itself under torchrun, which starts one
process per device (or per --nproc) and sets up the process group; the Trainer then runs DDP
(gloo on CPU, NCCL on GPUs). Multi-node settings are torchrun's own: NNODES, NODE_RANK,
MASTER_ADDR, MASTER_PORT."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from lmtune.config import RunConfig, load_config, resolve_paths
from lmtune.data.fingerprints import read_before
from lmtune.data.load import ReadData, read_data
from lmtune.data.pref import TRL_STAGES


def inside_launcher() -> bool:
    return "LOCAL_RANK" in os.environ


def checked_run(path: Path, overrides: list[str]) -> tuple[RunConfig, ReadData | None]:
    """The config and every data record, checked before torch is imported, so a mistake costs a
    second; the records read are handed on to training. None when there is nothing to check:
    under torchrun the launching process has checked them, and records the cache holds encoded
    were read (and checked) by an earlier run."""
    config = resolve_paths(load_config(path, overrides))
    if inside_launcher() or (config.data.cache and config.data.stage not in TRL_STAGES and read_before(config.data, config.train.seed)):
        return config, None
    return config, read_data(config.data)


def processes_wanted(nproc: int | None) -> int:
    """How many processes to launch from here: 0 when this already is a launched one or one will do."""
    if inside_launcher():
        return 0
    if nproc is None:
        import torch  # only here: counting the GPUs is the first thing that needs it

        nproc = torch.cuda.device_count()
    return nproc if nproc > 1 or os.environ.get("NNODES", "1") != "1" else 0


def relaunch(nproc: int, lmtune_args: list[str]) -> int:
    """Run `lmtune <lmtune_args>` under torchrun with nproc processes per node; its exit status."""
    command = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--nnodes={os.environ.get('NNODES', '1')}",
        f"--node_rank={os.environ.get('NODE_RANK', '0')}",
        f"--master_addr={os.environ.get('MASTER_ADDR', '127.0.0.1')}",
        f"--master_port={os.environ.get('MASTER_PORT') or _free_port()}",
        "-m", "lmtune", *lmtune_args,
    ]
    return subprocess.run(command).returncode


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
