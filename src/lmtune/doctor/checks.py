"""Checks of the machine: Python, torch, CUDA, the toolkit, the optional GPU libraries, launch settings.

Each returns a Check (or a list, one per finding). Presence is read with importlib.metadata and
find_spec; a package is imported only where the check is about importing it (bitsandbytes'
library, flash-attn's ABI, DeepSpeed's ops), and torch only where CUDA state is asked about.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata, util
from pathlib import Path, PurePosixPath

from lmtune.doctor.check import Check
from lmtune.doctor.gpu import GPU_HEALTH, nvml_cuda_version

# The newest Python each torch release shipped wheels for; a newer interpreter runs a build never tested
# with it (torchrun and torch.compile fail in odd ways). Releases after 2.4 cover the Pythons of their day.
TORCH_MAX_PYTHON = {(1, 12): (3, 10), (1, 13): (3, 10), (2, 0): (3, 11), (2, 1): (3, 11), (2, 2): (3, 12),
                    (2, 3): (3, 12), (2, 4): (3, 12)}
NCCL_VARS = ("NCCL_P2P_DISABLE", "NCCL_IB_DISABLE", "NCCL_DEBUG", "NCCL_SOCKET_IFNAME", "NCCL_P2P_LEVEL")
TORCH_INDEX = "pip install torch==VERSION --index-url https://download.pytorch.org/whl/cuXYZ (see pytorch.org/get-started/previous-versions)"


# ---------------------------------------------------------------- helpers


def version_of(dist: str) -> str | None:
    """An installed distribution's version, without importing it."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def has_module(name: str) -> bool:
    try:
        return util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that fails, or a module without __spec__
        return False


def run_tool(*cmd: str) -> str | None:
    """A command's stdout, or None when it is missing or fails (a hung driver must not hang the doctor)."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def numbers(text: str | None) -> tuple[int, ...]:
    match = re.match(r"(\d+(?:\.\d+)*)", text or "")
    return tuple(int(n) for n in match.group(1).split(".")) if match else ()


def torch_module():
    """torch, imported only by the checks that ask about CUDA; None when it is not installed."""
    return importlib.import_module("torch") if has_module("torch") else None


def torch_cuda() -> str | None:
    torch = torch_module()
    return torch.version.cuda if torch is not None else None


def driver_info() -> tuple[str | None, str | None]:
    """(driver version, newest CUDA the driver supports), from nvidia-smi's header, else NVML."""
    out = run_tool("nvidia-smi") if shutil.which("nvidia-smi") else None
    if out:
        driver = re.search(r"Driver Version:\s*([\d.]+)", out)
        cuda = re.search(r"CUDA Version:\s*([\d.]+)", out)
        return driver and driver.group(1), cuda and cuda.group(1)
    return None, nvml_cuda_version()


def gpus(torch) -> list[dict]:
    if torch is None or not torch.cuda.is_available():
        return []
    found = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        found.append({"index": i, "name": props.name, "memory_gib": props.total_memory / 2**30,
                      "capability": (props.major, props.minor), "bf16": props.major >= 8})  # bf16 arrived with Ampere (sm_80)
    return found


def fp16_only_gpus() -> list[dict]:
    return [g for g in gpus(torch_module()) if not g["bf16"]]


@contextlib.contextmanager
def quiet():
    """Libraries that print while being probed (bitsandbytes' CUDA setup, DeepSpeed's builders) print into the void."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


# ---------------------------------------------------------------- Python, torch, CUDA


def check_python() -> Check:
    found = sys.version_info[:3]
    text = ".".join(map(str, found))
    if found < (3, 10):
        return Check("python", "fail", f"Python {text}: lmtune needs 3.10 or newer", "create the venv with python3.10+")
    return Check("python", "ok", f"Python {text} ({sys.executable})")


def check_torch() -> Check:
    version = version_of("torch")
    if version is None:
        return Check("torch", "fail", "torch is not installed", "make setup (or pip install torch: the CUDA build on GPU machines)")
    cuda = torch_cuda()
    build = f"built for CUDA {cuda}" if cuda else "a CPU-only build"
    return Check("torch", "ok", f"torch {version}, {build}")


def check_cuda_versions() -> Check:
    """torch's CUDA runtime must not be newer than the driver allows, or torch.cuda.is_available() is False."""
    runtime = torch_cuda()
    driver, supported = driver_info()
    if supported is None:
        why = f"torch is built for CUDA {runtime}, but" if runtime else "a CPU build of torch, and"
        return Check("CUDA versions", "skip", f"{why} no NVIDIA driver was found (no nvidia-smi, no NVML): training runs on CPU",
                     "on a GPU machine, install the NVIDIA driver")
    shown = f"driver {driver or '?'} supports CUDA up to {supported}"
    if not runtime:
        return Check("CUDA versions", "warn", f"{shown}, but torch is a CPU-only build: the GPUs go unused",
                     f"install torch's CUDA build: {TORCH_INDEX}")
    if numbers(runtime)[:1] > numbers(supported)[:1]:
        return Check("CUDA versions", "fail", f"torch is built for CUDA {runtime}; {shown}: torch cannot use the GPU",
                     f"update the NVIDIA driver, or install a torch built for CUDA <= {supported}: {TORCH_INDEX}")
    if numbers(runtime)[:2] > numbers(supported)[:2]:  # CUDA's minor-version compatibility covers most, not PTX JIT
        return Check("CUDA versions", "warn", f"torch is built for CUDA {runtime}; {shown}: runs by minor-version "
                     "compatibility, but kernels compiled just in time (PTX) can fail", f"update the driver to one for CUDA {runtime}")
    return Check("CUDA versions", "ok", f"torch built for CUDA {runtime}; {shown}")


def check_gpus() -> Check:
    torch = torch_module()
    found = gpus(torch)
    if not found:
        return Check("GPUs", "skip", "no CUDA GPU visible: lmtune trains, chats and serves on CPU (slowly)",
                     "on a GPU machine, see the CUDA versions and CUDA_VISIBLE_DEVICES checks")
    rows = "; ".join(f"{g['index']}: {g['name']} {g['memory_gib']:.0f} GiB sm_{g['capability'][0]}{g['capability'][1]} "
                     f"bf16 {'yes' if g['bf16'] else 'no'}" for g in found)
    if any(not g["bf16"] for g in found):
        return Check("GPUs", "warn", f"{rows}: fp16 only, so bf16-trained models (Llama, Qwen, Bloom) run in fp16, "
                     "whose range (65504) they can overflow into NaN", "model.dtype: float32 for a model that gives NaN in fp16, or use an Ampere+ card")
    return Check("GPUs", "ok", rows)


def check_visible_devices() -> Check:
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return Check("CUDA_VISIBLE_DEVICES", "ok", "not set: every GPU is visible")
    entries = [e for e in value.split(",")]
    if value.strip() in ("", "-1"):
        return Check("CUDA_VISIBLE_DEVICES", "warn", f"CUDA_VISIBLE_DEVICES={value!r} hides every GPU",
                     "unset CUDA_VISIBLE_DEVICES, or name the GPUs to use: export CUDA_VISIBLE_DEVICES=0,1")
    bad = [e for e in entries if not re.fullmatch(r"\d+|GPU-[0-9a-fA-F-]+|MIG-[\w/-]+", e)]
    if bad:  # CUDA silently stops at the first entry it cannot parse; the GPUs after it vanish
        return Check("CUDA_VISIBLE_DEVICES", "warn", f"CUDA_VISIBLE_DEVICES={value!r}: {bad[0]!r} is no GPU index or UUID, "
                     "and CUDA ignores it and every entry after it", "use indices or UUIDs separated by commas, no spaces: 0,1")
    return Check("CUDA_VISIBLE_DEVICES", "ok", f"CUDA_VISIBLE_DEVICES={value}: {len(entries)} GPU(s) selected")


def doubled_prefix(path: str) -> str | None:
    """'/usr/usr/local/cuda/bin/nvcc' → '/usr/usr': a prefix joined to a path that already had it."""
    parts = PurePosixPath(path).parts
    for size in range(1, len(parts) // 2 + 1):
        for i in range(1, len(parts) - 2 * size + 1):
            if parts[i:i + size] == parts[i + size:i + 2 * size] and (size > 1 or parts[i] in ("usr", "local", "opt", "cuda")):
                return "/" + "/".join(parts[1:i + 2 * size])
    return None


def check_cuda_toolkit() -> Check:
    """CUDA_HOME and nvcc matter only for compiling (DeepSpeed ops, flash-attn from source); they must agree."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = shutil.which("nvcc")
    if not home and not nvcc:
        return Check("CUDA toolkit", "skip", "no CUDA_HOME and no nvcc on PATH: nothing can be compiled for CUDA "
                     "(prebuilt wheels need neither)", "only to compile DeepSpeed ops or flash-attn: install the toolkit, export CUDA_HOME")
    for label, path in (("CUDA_HOME", home), ("nvcc", nvcc)):
        if path and (doubled := doubled_prefix(path)):
            return Check("CUDA toolkit", "fail", f"{label} is {path}: the prefix is doubled ({doubled}), so builds look for a "
                         "toolkit that is not there", "export CUDA_HOME=/usr/local/cuda-X.Y (absolute, once) and PATH=$CUDA_HOME/bin:$PATH")
    if home and not Path(home).is_absolute():
        return Check("CUDA toolkit", "fail", f"CUDA_HOME={home} is relative: build tools join it to their own prefix "
                     f"(/usr/{home}/bin/nvcc)", f"export CUDA_HOME=/{home.lstrip('./')}")
    if home and not (Path(home) / "bin" / "nvcc").is_file():
        return Check("CUDA toolkit", "fail", f"CUDA_HOME={home} has no bin/nvcc", "point CUDA_HOME at the toolkit folder holding bin/nvcc")
    return _toolkit_agrees(home, nvcc)


def _toolkit_agrees(home: str | None, nvcc: str | None) -> Check:
    if home and nvcc and os.path.realpath(Path(home) / "bin" / "nvcc") != os.path.realpath(nvcc):
        return Check("CUDA toolkit", "warn", f"CUDA_HOME={home} but the nvcc on PATH is {nvcc}: extensions build with one "
                     "toolkit and link against the other", "export PATH=$CUDA_HOME/bin:$PATH")
    compiler = nvcc or str(Path(home) / "bin" / "nvcc")
    release = re.search(r"release ([\d.]+)", run_tool(compiler, "--version") or "")
    runtime = torch_cuda()
    shown = f"nvcc {compiler}, CUDA {release.group(1) if release else '?'}"
    if release and runtime and numbers(release.group(1))[:1] != numbers(runtime)[:1]:
        return Check("CUDA toolkit", "warn", f"{shown}, but torch is built for CUDA {runtime}: torch refuses to compile "
                     "extensions across major versions", f"install CUDA toolkit {runtime} and point CUDA_HOME at it")
    return Check("CUDA toolkit", "ok", shown + (f" (CUDA_HOME={home})" if home else ""))


# ---------------------------------------------------------------- optional GPU libraries


def check_bitsandbytes() -> Check:
    version = version_of("bitsandbytes")
    if version is None:
        return Check("bitsandbytes", "skip", "not installed: needed only for finetune.method qlora and --quantize 4|8",
                     "pip install bitsandbytes (on a CUDA GPU machine)")
    try:
        with quiet():
            bnb = importlib.import_module("bitsandbytes")
    except Exception as exc:  # noqa: BLE001 - its import fails with OSError, AttributeError or RuntimeError
        return _bnb_failure(version, one_line(exc))
    if gpus(torch_module()) and not _bnb_has_cuda(bnb):
        return _bnb_failure(version, "loaded libbitsandbytes_cpu.so on a CUDA machine")
    return Check("bitsandbytes", "ok", f"bitsandbytes {version} imports")


def _bnb_has_cuda(bnb) -> bool:
    """Old releases say COMPILED_WITH_CUDA; 0.43+ name the loaded library's kind."""
    ext = getattr(bnb, "cextension", None)
    flag = getattr(ext, "COMPILED_WITH_CUDA", None)
    if flag is None:
        flag = getattr(getattr(ext, "lib", None), "compiled_with_cuda", True)
    return bool(flag)


def _bnb_failure(version: str, error: str) -> Check:
    if any(s in error for s in ("libbitsandbytes_cpu", "cget_col_row_stats", "undefined symbol")):
        return Check("bitsandbytes", "fail", f"bitsandbytes {version} found no library for this CUDA and fell back to its CPU "
                     f"one ({error})", "pip install -U bitsandbytes (0.43+ ships CUDA 11.8-12.x in one wheel); with an older "
                     "one, put the CUDA runtime's lib64 on LD_LIBRARY_PATH or set BNB_CUDA_VERSION to the torch CUDA (e.g. 121)")
    return Check("bitsandbytes", "fail", f"bitsandbytes {version} does not import: {error}", "pip install -U bitsandbytes")


def check_bnb_matmul() -> Check:
    """A 4-bit layer on the GPU against its own dequantised weights: the kernels QLoRA runs on."""
    if version_of("bitsandbytes") is None:
        return Check("bitsandbytes 4-bit", "skip", "bitsandbytes not installed")
    torch = torch_module()
    if not gpus(torch):
        return Check("bitsandbytes 4-bit", "skip", "no CUDA GPU: bitsandbytes' 4-bit kernels need one")
    with quiet():
        import bitsandbytes as bnb
    layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float16, quant_type="nf4").to("cuda")
    x = torch.randn(4, 64, dtype=torch.float16, device="cuda")
    weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    error = ((layer(x) - x @ weight.t()).abs().max() / (x @ weight.t()).abs().max()).item()
    if not error < 1e-2:
        return Check("bitsandbytes 4-bit", "fail", f"a 4-bit matmul differs from its weights by {error:.3g}",
                     "pip install -U bitsandbytes matching this torch and CUDA")
    return Check("bitsandbytes 4-bit", "ok", "a 4-bit (nf4) matmul runs on the GPU and matches its weights")


def check_flash_attn() -> Check:
    version = version_of("flash_attn")
    if version is None:
        return Check("flash-attn", "skip", "not installed: optional; transformers' sdpa attention is used instead")
    if numbers(version)[:1] < (2,):
        return Check("flash-attn", "warn", f"flash-attn {version} is FlashAttention 1 (flash_attn_unpadded_qkvpacked_func): "
                     "attn_implementation=flash_attention_2 needs 2.x", "pip install -U flash-attn --no-build-isolation (Ampere+ GPU)")
    note = ("FlashAttention 2 renamed flash_attn_unpadded_* to flash_attn_varlen_*: model code written for 1.x fails "
            "(--model scans a model's code for those names)")
    if not gpus(torch_module()):
        return Check("flash-attn", "ok", f"flash-attn {version}, not imported (no GPU). {note}")
    try:
        importlib.import_module("flash_attn")
    except Exception as exc:  # noqa: BLE001 - an ABI mismatch with torch shows as ImportError or OSError
        return Check("flash-attn", "fail", f"flash-attn {version} does not import (built against another torch?): {one_line(exc)}",
                     f"pip install --force-reinstall --no-build-isolation flash-attn=={version}")
    return Check("flash-attn", "ok", f"flash-attn {version} imports. {note}")


def check_xformers() -> Check:
    version = version_of("xformers")
    if version is None:
        return Check("xformers", "ok", "not installed (lmtune does not use it)")
    message = (f"xformers {version} is installed. lmtune never calls it (attention is transformers' sdpa or eager), but "
               "users of other tools report its memory-efficient attention garbling Chinese output in fp16; no version "
               "range or root cause is established")
    fix = "if another tool garbles Chinese output, turn its xformers attention off or run it in bf16/fp32"
    status = "warn" if fp16_only_gpus() else "ok"  # the reports are of fp16 setups
    return Check("xformers", status, message, fix)


def check_deepspeed() -> Check:
    """ds_report's op table: which ops are prebuilt and which could be compiled here."""
    version = version_of("deepspeed")
    if version is None:
        return Check("DeepSpeed", "skip", "not installed: needed only for train.deepspeed", "pip install deepspeed")
    try:
        with quiet():
            builders = importlib.import_module("deepspeed.ops.op_builder").ALL_OPS
            prebuilt = getattr(importlib.import_module("deepspeed.git_version_info"), "installed_ops", {})
            usable = {name: bool(b.is_compatible(False)) for name, b in builders.items()}
    except Exception as exc:  # noqa: BLE001 - a broken build fails anywhere in its import chain
        return Check("DeepSpeed", "fail", f"deepspeed {version} does not import: {one_line(exc)}",
                     f"DS_BUILD_OPS=0 pip install --force-reinstall deepspeed=={version} (ops then compile on first use)")
    built = sorted(n for n, on in prebuilt.items() if on)
    cannot = sorted(n for n, ok in usable.items() if not ok)
    message = (f"deepspeed {version}: {len(usable) - len(cannot)}/{len(usable)} ops can be built here; prebuilt: "
               f"{', '.join(built) or 'none (compiled on first use)'}" + (f"; cannot: {', '.join(cannot)}" if cannot else ""))
    if not built and not shutil.which("nvcc") and gpus(torch_module()):
        return Check("DeepSpeed", "warn", message + "; no nvcc, so an op compiled on first use fails",
                     "the shipped zero2/zero3 need no op; for *_offload (cpu_adam) install the CUDA toolkit, or keep DS_BUILD_OPS=0")
    return Check("DeepSpeed", "ok", message, "where compiling fails, install with DS_BUILD_OPS=0 and use configs without custom ops")


def check_async_io() -> Check:
    if version_of("deepspeed") is None:
        return Check("DeepSpeed async_io", "skip", "deepspeed not installed")
    with quiet():
        builder = importlib.import_module("deepspeed.ops.op_builder").ALL_OPS.get("async_io")
        usable = builder is not None and builder.is_compatible(False)
    if not usable:
        return Check("DeepSpeed async_io", "warn", "async_io is unavailable (libaio missing): ZeRO offload to NVMe fails; "
                     "offload to CPU (zero2_offload, zero3_offload) is unaffected", "apt install libaio-dev, then reinstall deepspeed")
    return Check("DeepSpeed async_io", "ok", "async_io available: ZeRO can offload to NVMe")


# ---------------------------------------------------------------- launching


def check_torchrun() -> Check:
    torch_version = numbers(version_of("torch"))[:2]
    newest = TORCH_MAX_PYTHON.get(torch_version)
    if newest and sys.version_info[:2] > newest:
        return Check("torchrun", "warn", f"torch {'.'.join(map(str, torch_version))} was released for Python up to "
                     f"{'.'.join(map(str, newest))}; this is {sys.version.split()[0]}: torchrun and torch.compile are untested on it",
                     "use a newer torch, or a venv with an older Python")
    script = shutil.which("torchrun")
    interpreter = _shebang(script) if script else None
    if interpreter and os.path.realpath(interpreter) != os.path.realpath(sys.executable):
        return Check("torchrun", "warn", f"the torchrun on PATH ({script}) runs {interpreter}, not this Python "
                     f"({sys.executable}): a run launched with it trains in another environment",
                     "activate this venv, or launch with python -m torch.distributed.run (as lmtune train --nproc does)")
    return Check("torchrun", "ok", f"lmtune launches python -m torch.distributed.run with {sys.executable}")


def _shebang(script: str) -> str | None:
    try:
        first = Path(script).read_bytes()[:300].split(b"\n", 1)[0].decode()
    except (OSError, UnicodeDecodeError):
        return None
    words = first[2:].split() if first.startswith("#!") else []
    return words[0] if words and "/env" not in words[0] else None  # "#!/usr/bin/env python" follows PATH


def check_openssl() -> Check:
    """cryptography (pulled in by hub and cloud clients) aborts at import when OpenSSL 3's legacy provider is missing."""
    if os.environ.get("CRYPTOGRAPHY_OPENSSL_NO_LEGACY"):
        return Check("OpenSSL", "ok", "CRYPTOGRAPHY_OPENSSL_NO_LEGACY is set: cryptography skips OpenSSL 3's legacy provider")
    if not has_module("cryptography"):
        return Check("OpenSSL", "skip", "cryptography is not installed")
    try:
        importlib.import_module("cryptography.hazmat.bindings.openssl.binding")
    except Exception as exc:  # noqa: BLE001 - it raises a bare RuntimeError
        if "legacy provider" in str(exc):
            return Check("OpenSSL", "fail", "OpenSSL 3.0's legacy provider failed to load: importing cryptography aborts",
                         "export CRYPTOGRAPHY_OPENSSL_NO_LEGACY=1 (no training needs the legacy algorithms)")
        return Check("OpenSSL", "fail", f"cryptography does not load: {one_line(exc)}", "pip install -U cryptography")
    return Check("OpenSSL", "ok", f"cryptography {version_of('cryptography')} loads OpenSSL")


def check_nccl() -> Check:
    found = {k: os.environ[k] for k in NCCL_VARS if k in os.environ}
    notes = []
    if found.get("NCCL_P2P_DISABLE") == "1":
        notes.append("P2P off: GPUs exchange through host memory (slower; needed on cards whose P2P hangs, e.g. RTX 40xx)")
    if found.get("NCCL_IB_DISABLE") == "1":
        notes.append("InfiniBand off: multi-node traffic goes over TCP")
    shown = ", ".join(f"{k}={v}" for k, v in found.items()) or "no NCCL variables set"
    fix = ("a hanging multi-GPU run: NCCL_DEBUG=INFO names the failing link; rank 0 encodes the data while the others "
           "wait, so for a dataset that takes over 30 minutes to encode raise train.ddp_timeout (seconds, default 1800)")
    return Check("NCCL", "ok", "; ".join([shown, *notes]), fix)


ENVIRONMENT = [check_python, check_torch, check_cuda_versions, check_gpus, check_visible_devices, check_cuda_toolkit,
               check_bitsandbytes, check_bnb_matmul, check_flash_attn, check_xformers, check_deepspeed, check_async_io,
               check_torchrun, check_openssl, check_nccl, *GPU_HEALTH]
