"""More than one process: `lmtune train` re-launches itself under torchrun, which starts one
process per device (or per --nproc) and sets up the process group; the Trainer then runs DDP
(gloo on CPU, NCCL on GPUs). Multi-node settings are torchrun's own: NNODES, NODE_RANK,
MASTER_ADDR, MASTER_PORT."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch


def inside_launcher() -> bool:
    return "LOCAL_RANK" in os.environ


def processes_wanted(nproc: int | None) -> int:
    """How many processes to launch from here: 0 when this already is a launched one or one will do."""
    if inside_launcher():
        return 0
    count = nproc if nproc is not None else torch.cuda.device_count()
    return count if count > 1 or os.environ.get("NNODES", "1") != "1" else 0


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
