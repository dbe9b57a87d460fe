"""`lmtune env`: the versions a bug report needs, read from package metadata (nothing heavy is imported
for a version); torch alone is imported, for its CUDA, cuDNN and NCCL builds and the GPUs."""

from __future__ import annotations

import platform
import sys

from lmtune.doctor.checks import driver_info, gpus, torch_module, version_of

PACKAGES = ("lmtune", "torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "deepspeed",
            "bitsandbytes", "flash-attn", "xformers", "vllm")


def environment() -> list[tuple[str, str]]:
    rows = [("Python", f"{sys.version.split()[0]} ({platform.python_implementation()}, {sys.executable})"),
            ("OS", platform.platform())]
    rows += [(name, version_of(name) or "not installed") for name in PACKAGES]
    return rows + _cuda_rows()


def _cuda_rows() -> list[tuple[str, str]]:
    torch = torch_module()
    if torch is None:
        return []
    driver, supported = driver_info()
    found = gpus(torch)
    return [
        ("torch CUDA", torch.version.cuda or "none (CPU build)"),
        ("cuDNN", str(torch.backends.cudnn.version() or "none")),
        ("NCCL", _nccl(torch)),
        ("NVIDIA driver", f"{driver} (CUDA {supported})" if supported else "none"),
        ("GPUs", "; ".join(f"{g['name']} {g['memory_gib']:.0f} GiB sm_{g['capability'][0]}{g['capability'][1]}" for g in found) or "none"),
    ]


def _nccl(torch) -> str:
    try:
        version = torch.cuda.nccl.version()
    except Exception:  # noqa: BLE001 - CPU builds have no NCCL and say so by raising
        return "none"
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def format_environment(rows: list[tuple[str, str]]) -> str:
    """Markdown list lines, ready to paste into an issue."""
    return "\n".join(f"- {name}: {value}" for name, value in rows)
