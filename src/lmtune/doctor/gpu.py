"""GPU health through NVML (nvidia-ml-py, imported only when installed): ECC errors, throttling, other processes."""

from __future__ import annotations

import os
import shutil
from importlib import util

from lmtune.doctor.check import Check

# Throttle reasons that mean trouble; GPU idle, applications clocks and the software power cap are normal.
BAD_THROTTLE = {0x8: "hardware slowdown", 0x20: "software thermal slowdown", 0x40: "hardware thermal slowdown",
                0x80: "power brake (the power supply is asking for less)"}


def nvml():
    """pynvml, initialised, or None when it is not installed or finds no driver."""
    if util.find_spec("pynvml") is None:
        return None
    import pynvml

    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound / DriverNotLoaded: no driver here
        return None
    return pynvml


def nvml_cuda_version() -> str | None:
    """The newest CUDA the driver supports, e.g. 12020 → '12.2'."""
    nv = nvml()
    if nv is None:
        return None
    value = nv.nvmlSystemGetCudaDriverVersion()
    return f"{value // 1000}.{value % 1000 // 10}"


def _devices(name: str):
    """(pynvml, handles) or a skip Check saying why there is nothing to read."""
    if util.find_spec("pynvml") is None and shutil.which("nvidia-smi") is None:
        return Check(name, "skip", "no NVIDIA driver (no nvidia-smi), so no GPU health to read")
    if util.find_spec("pynvml") is None:
        return Check(name, "skip", "nvidia-ml-py is not installed, so GPU health is not read", "pip install nvidia-ml-py")
    nv = nvml()
    if nv is None:
        return Check(name, "skip", "no NVIDIA driver (NVML did not load)")
    return nv, [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]


def check_gpu_ecc() -> Check:
    found = _devices("GPU ECC")
    if isinstance(found, Check):
        return found
    nv, handles = found
    bad = {}
    for i, handle in enumerate(handles):
        try:
            count = nv.nvmlDeviceGetTotalEccErrors(handle, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC)
        except nv.NVMLError:  # consumer cards have no ECC
            continue
        if count:
            bad[i] = count
    if bad:
        listed = ", ".join(f"GPU {i}: {n}" for i, n in bad.items())
        return Check("GPU ECC", "fail", f"uncorrected ECC errors since boot ({listed}): results can be wrong and CUDA "
                     "aborts with 'uncorrectable ECC error encountered'", "reset the GPU (nvidia-smi -r) or reboot; if they come "
                     "back, have the card serviced (nvidia-smi -q -d PAGE_RETIREMENT); meanwhile exclude it with CUDA_VISIBLE_DEVICES")
    return Check("GPU ECC", "ok", f"no uncorrected ECC errors on {len(handles)} GPU(s)")


def check_gpu_throttling() -> Check:
    found = _devices("GPU throttling")
    if isinstance(found, Check):
        return found
    nv, handles = found
    read = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or nv.nvmlDeviceGetCurrentClocksThrottleReasons
    slowed = []
    for i, handle in enumerate(handles):
        reasons = read(handle)
        slowed += [f"GPU {i}: {what}" for bit, what in BAD_THROTTLE.items() if reasons & bit]
    if slowed:
        return Check("GPU throttling", "warn", "clocks held down: " + "; ".join(slowed),
                     "check cooling and power (nvidia-smi -q -d PERFORMANCE,TEMPERATURE,POWER); a throttled card slows every rank")
    return Check("GPU throttling", "ok", f"no thermal or power throttling on {len(handles)} GPU(s)")


def check_gpu_processes() -> Check:
    found = _devices("GPU processes")
    if isinstance(found, Check):
        return found
    nv, handles = found
    others = []
    for i, handle in enumerate(handles):
        for proc in nv.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid != os.getpid():
                others.append(f"GPU {i}: pid {proc.pid} holds {(proc.usedGpuMemory or 0) / 2**30:.1f} GiB")
    if others:
        return Check("GPU processes", "warn", "other processes hold GPU memory (" + "; ".join(others) + "): "
                     "'CUDA out of memory' comes sooner than the model's size says", "stop them, or pick free GPUs with CUDA_VISIBLE_DEVICES")
    return Check("GPU processes", "ok", f"no other process holds memory on {len(handles)} GPU(s)")


GPU_HEALTH = [check_gpu_ecc, check_gpu_throttling, check_gpu_processes]
