"""`lmtune env`: the versions a bug report needs, read from package metadata (nothing heavy is imported
for a version). torch's CUDA build is read from its version.py; only a CUDA build of torch is
imported, to report the cuDNN, NCCL and GPUs it sees. On a CPU build there are none to see."""

from __future__ import annotations

import ast
import platform
import sys
from importlib import util
from pathlib import Path

from lmtune.doctor.checks import driver_info, gpus, torch_module, version_of

PACKAGES = ("lmtune", "torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "deepspeed",
            "bitsandbytes", "flash-attn", "xformers", "vllm")


def environment() -> list[tuple[str, str]]:
    rows = [("Python", f"{sys.version.split()[0]} ({platform.python_implementation()}, {sys.executable})"),
            ("OS", platform.platform())]
    rows += [(name, version_of(name) or "not installed") for name in PACKAGES]
    return rows + _cuda_rows()


def torch_build() -> dict[str, object]:
    """torch/version.py's values (cuda, hip …), read without importing torch; {} without torch."""
    spec = util.find_spec("torch")
    try:
        tree = ast.parse((Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text(encoding="utf-8"))
    except (AttributeError, TypeError, StopIteration, OSError, SyntaxError):
        return {}
    values = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Constant):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                values[getattr(target, "id", "")] = node.value.value
    return values


def _cuda_rows() -> list[tuple[str, str]]:
    build = torch_build()
    if not build:
        return []
    driver, supported = driver_info()
    if not (build.get("cuda") or build.get("hip")):  # ROCm builds see their GPUs through torch.cuda too
        return [("torch CUDA", "none (CPU build)"), ("cuDNN", "none"), ("NCCL", "none"),
                ("NVIDIA driver", f"{driver} (CUDA {supported})" if supported else "none"), ("GPUs", "none (a CPU build of torch uses none)")]
    torch = torch_module()
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
