"""lmtune doctor and lmtune env: each check against a simulated broken environment (fake packages and
dist-info on sys.path, fake nvidia-smi / nvcc / torchrun scripts on PATH, environment variables),
then the commands end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmtune.cli import app
from lmtune.doctor import checks, gpu, model as model_checks
from lmtune.doctor.check import Check, exit_status
from tests.conftest import RECORDS, lmtune, write_config, write_json


FAKED = ("bitsandbytes", "flash_attn", "xformers", "deepspeed", "cryptography", "pynvml")


@pytest.fixture(autouse=True)
def forget_fakes():
    """Modules a test imported from its fake packages must not outlive it (find_spec would still see them)."""
    yield
    for module in [m for m in sys.modules if m.split(".")[0] in FAKED]:
        del sys.modules[module]


def fake_package(root: Path, name: str, version: str, files: dict[str, str], monkeypatch) -> None:
    """A package and its dist-info on sys.path, found by find_spec, importlib.metadata and import."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    info = root / f"{name}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    monkeypatch.syspath_prepend(str(root))
    for module in [m for m in sys.modules if m.split(".")[0] == name.replace("-", "_")]:
        monkeypatch.delitem(sys.modules, module)


def fake_tool(folder: Path, name: str, output: str, monkeypatch, keep_path: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / name
    tool.write_text(f"#!/bin/sh\ncat <<'OUT'\n{output}\nOUT\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:/usr/bin:/bin" if not keep_path else f"{folder}:{__import__('os').environ['PATH']}")
    return tool


class FakeTorch:
    """torch as a CUDA build, for the version checks."""

    class version:
        cuda = "12.4"


SMI = "| NVIDIA-SMI 535.104.05   Driver Version: 535.104.05   CUDA Version: 12.2 |"


def test_driver_older_than_torch_cuda_fails(tmp_path, monkeypatch):
    fake_tool(tmp_path / "bin", "nvidia-smi", SMI, monkeypatch)
    monkeypatch.setattr(checks, "torch_module", lambda: FakeTorch)
    found = checks.check_cuda_versions()
    assert found.status == "warn" and "12.4" in found.message and "12.2" in found.message  # same major: minor compat
    FakeTorch.version.cuda = "13.0"
    try:
        found = checks.check_cuda_versions()
    finally:
        FakeTorch.version.cuda = "12.4"
    assert found.status == "fail" and "driver 535.104.05" in found.message and "update the NVIDIA driver" in found.fix


def test_cpu_torch_with_a_driver_warns(tmp_path, monkeypatch):
    fake_tool(tmp_path / "bin", "nvidia-smi", SMI, monkeypatch)
    found = checks.check_cuda_versions()  # the real torch here is a CPU build
    assert found.status == "warn" and "CPU-only" in found.message and "download.pytorch.org" in found.fix


def test_no_gpu_is_a_skip_not_a_failure(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert checks.check_cuda_versions().status == "skip"
    assert checks.check_gpus().status == "skip"


@pytest.mark.parametrize("value, status, says", [("-1", "warn", "hides every GPU"), ("0, 1", "warn", "' 1'"), ("0,1", "ok", "2 GPU")])
def test_cuda_visible_devices(monkeypatch, value, status, says):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    found = checks.check_visible_devices()
    assert found.status == status and says in found.message


def test_doubled_cuda_prefix_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CUDA_HOME", "/usr/usr/local/cuda-12.2")
    found = checks.check_cuda_toolkit()
    assert found.status == "fail" and "/usr/usr" in found.message and "CUDA_HOME=/usr/local/cuda" in found.fix
    assert checks.doubled_prefix("/usr/usr/local/cuda-12.2/bin/nvcc") == "/usr/usr"
    assert checks.doubled_prefix("/usr/local/cuda-12.2/bin/nvcc") is None


def test_cuda_home_and_nvcc_disagree(tmp_path, monkeypatch):
    home = tmp_path / "cuda-12.1"
    fake_tool(home / "bin", "nvcc", "Cuda compilation tools, release 12.1, V12.1.105", monkeypatch)
    fake_tool(tmp_path / "other" / "bin", "nvcc", "Cuda compilation tools, release 11.8", monkeypatch)
    monkeypatch.setenv("CUDA_HOME", str(home))
    found = checks.check_cuda_toolkit()
    assert found.status == "warn" and "other/bin/nvcc" in found.message and "PATH=$CUDA_HOME/bin" in found.fix
    monkeypatch.setenv("PATH", f"{home / 'bin'}:/usr/bin:/bin")
    monkeypatch.setattr(checks, "torch_module", lambda: FakeTorch)  # torch for CUDA 12.4, nvcc 12.1: same major
    assert checks.check_cuda_toolkit().status == "ok"


def test_bitsandbytes_cpu_library_is_named(tmp_path, monkeypatch):
    error = "/x/libbitsandbytes_cpu.so: undefined symbol: cget_col_row_stats"
    fake_package(tmp_path, "bitsandbytes", "0.37.0", {"bitsandbytes/__init__.py": f"raise AttributeError({error!r})"}, monkeypatch)
    found = checks.check_bitsandbytes()
    assert found.status == "fail" and "cget_col_row_stats" in found.message and "CPU one" in found.message
    assert "pip install -U bitsandbytes" in found.fix and "LD_LIBRARY_PATH" in found.fix
    assert checks.check_bnb_matmul().status == "skip"  # no GPU here


def test_flash_attn_1_and_its_names(tmp_path, monkeypatch):
    fake_package(tmp_path, "flash_attn", "1.0.9", {"flash_attn/__init__.py": ""}, monkeypatch)
    found = checks.check_flash_attn()
    assert found.status == "warn" and "flash_attn_unpadded_qkvpacked_func" in found.message
    fake_package(tmp_path / "v2", "flash_attn", "2.5.8", {"flash_attn/__init__.py": ""}, monkeypatch)
    assert checks.check_flash_attn().status == "ok"
    model = tmp_path / "model"
    model.mkdir()
    (model / "modeling_baichuan.py").write_text("from flash_attn.flash_attn_interface import flash_attn_unpadded_func\n")
    found = model_checks.check_model_code(model)
    assert found.status == "fail" and "modeling_baichuan.py" in found.message and "flash_attn_varlen" in found.fix


def test_xformers_is_reported_honestly(tmp_path, monkeypatch):
    fake_package(tmp_path, "xformers", "0.0.20", {"xformers/__init__.py": ""}, monkeypatch)
    monkeypatch.setattr(checks, "fp16_only_gpus", lambda: [{"name": "T4"}])
    found = checks.check_xformers()
    assert found.status == "warn" and "Chinese" in found.message and "no version range" in found.message


DS_BUILDERS = """
class Builder:
    def __init__(self, ok): self.ok = ok
    def is_compatible(self, verbose=False):
        print("noise a builder prints")
        return self.ok
ALL_OPS = {"cpu_adam": Builder(True), "async_io": Builder(False), "evoformer_attn": Builder(False)}
"""


def test_deepspeed_ops_report_and_async_io(tmp_path, monkeypatch):
    fake_package(tmp_path, "deepspeed", "0.14.0", {
        "deepspeed/__init__.py": "", "deepspeed/ops/__init__.py": "", "deepspeed/ops/op_builder/__init__.py": DS_BUILDERS,
        "deepspeed/git_version_info.py": "installed_ops = {'cpu_adam': False, 'async_io': False}\n"}, monkeypatch)
    found = checks.check_deepspeed()
    assert found.status == "ok" and "1/3 ops" in found.message and "cannot: async_io, evoformer_attn" in found.message
    assert "DS_BUILD_OPS=0" in found.fix
    found = checks.check_async_io()
    assert found.status == "warn" and "libaio" in found.message and "libaio-dev" in found.fix


def test_broken_deepspeed_install_fails_with_ds_build_ops(tmp_path, monkeypatch):
    fake_package(tmp_path, "deepspeed", "0.9.0", {"deepspeed/__init__.py": "raise ImportError('cannot import name X')"}, monkeypatch)
    found = checks.check_deepspeed()
    assert found.status == "fail" and "DS_BUILD_OPS=0" in found.fix


def test_openssl_legacy_provider(tmp_path, monkeypatch):
    monkeypatch.delenv("CRYPTOGRAPHY_OPENSSL_NO_LEGACY", raising=False)
    message = "OpenSSL 3.0's legacy provider failed to load. This is a fatal error by default"
    fake_package(tmp_path, "cryptography", "41.0.0", {
        "cryptography/__init__.py": "", "cryptography/hazmat/__init__.py": "", "cryptography/hazmat/bindings/__init__.py": "",
        "cryptography/hazmat/bindings/openssl/__init__.py": "",
        "cryptography/hazmat/bindings/openssl/binding.py": f"raise RuntimeError({message!r})"}, monkeypatch)
    found = checks.check_openssl()
    assert found.status == "fail" and "legacy provider" in found.message and found.fix.startswith("export CRYPTOGRAPHY_OPENSSL_NO_LEGACY=1")
    monkeypatch.setenv("CRYPTOGRAPHY_OPENSSL_NO_LEGACY", "1")
    assert checks.check_openssl().status == "ok"


def test_torchrun_of_another_python(tmp_path, monkeypatch):
    tool = tmp_path / "bin" / "torchrun"
    tool.parent.mkdir()
    tool.write_text("#!/opt/conda/bin/python3.8\nimport sys\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tool.parent))
    found = checks.check_torchrun()
    assert found.status == "warn" and "/opt/conda/bin/python3.8" in found.message and "torch.distributed.run" in found.fix
    monkeypatch.setattr(checks, "version_of", lambda dist: "2.1.0")
    monkeypatch.setattr(sys, "version_info", (3, 12, 1))
    found = checks.check_torchrun()
    assert found.status == "warn" and "up to 3.11" in found.message


def test_nccl_variables_and_ddp_timeout(monkeypatch):
    monkeypatch.setenv("NCCL_P2P_DISABLE", "1")
    monkeypatch.setenv("NCCL_IB_DISABLE", "1")
    found = checks.check_nccl()
    assert "NCCL_P2P_DISABLE=1" in found.message and "InfiniBand off" in found.message
    assert "NCCL_DEBUG=INFO" in found.fix and "train.ddp_timeout" in found.fix


PYNVML = """
import types
NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC = 1, 0
class NVMLError(Exception): pass
def nvmlInit(): pass
def nvmlSystemGetCudaDriverVersion(): return 12020
def nvmlDeviceGetCount(): return 2
def nvmlDeviceGetHandleByIndex(i): return i
def nvmlDeviceGetTotalEccErrors(h, kind, counter):
    if h == 1: raise NVMLError("Not Supported")
    return 3
def nvmlDeviceGetCurrentClocksThrottleReasons(h): return 0x40 if h == 0 else 0x1
def nvmlDeviceGetComputeRunningProcesses(h):
    return [types.SimpleNamespace(pid=4242, usedGpuMemory=10 * 2**30)] if h == 1 else []
"""


def test_gpu_health_through_nvml(tmp_path, monkeypatch):
    fake_package(tmp_path, "nvidia-ml-py", "12.535.0", {"pynvml.py": PYNVML}, monkeypatch)
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    ecc = gpu.check_gpu_ecc()
    assert ecc.status == "fail" and "GPU 0: 3" in ecc.message and "nvidia-smi -r" in ecc.fix
    throttle = gpu.check_gpu_throttling()
    assert throttle.status == "warn" and "GPU 0: hardware thermal slowdown" in throttle.message and "GPU 1" not in throttle.message
    procs = gpu.check_gpu_processes()
    assert procs.status == "warn" and "pid 4242 holds 10.0 GiB" in procs.message and "CUDA_VISIBLE_DEVICES" in procs.fix
    monkeypatch.setenv("PATH", "/nonexistent")
    assert checks.driver_info() == (None, "12.2")  # NVML stands in for a missing nvidia-smi


def test_shard_larger_than_free_ram(llama_dir, monkeypatch):
    monkeypatch.setattr(model_checks, "available_ram", lambda: 1000)
    found = model_checks.check_ram_for_loading(llama_dir)
    assert found.status == "fail" and "Killed" in found.message and "--max-shard-size" in found.fix


def test_eos_id_0_vs_2_trap(tmp_path, llama_dir, tokenizer):
    config = json.loads((llama_dir / "config.json").read_text())
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**config, "eos_token_id": tokenizer.eos_token_id + 1}))
    found = model_checks.check_special_tokens(tokenizer, folder)
    assert found.status == "fail" and "config.json says eos_token_id" in found.message and "tokenizer_config.json" in found.fix
    found = model_checks.check_special_tokens(tokenizer, llama_dir)
    assert found.status == "ok" and (tokenizer.pad_token_id != tokenizer.eos_token_id or "attention" in found.message)


def test_exit_status_gates_on_fail_only():
    assert exit_status([Check("a", "ok", ""), Check("b", "warn", ""), Check("c", "skip", "")]) == 0
    assert exit_status([Check("a", "ok", ""), Check("b", "fail", "")]) == 1


def test_doctor_json_and_env_on_this_machine(llama_dir, tmp_path):
    result = lmtune("doctor", "--json", "--model", llama_dir)
    found = {c["name"]: c for c in json.loads(result.stdout)}
    failed = [c for c in found.values() if c["status"] == "fail"]
    assert result.returncode == (1 if failed else 0), failed
    assert found["GPUs"]["status"] == "skip" and found["python"]["status"] == "ok"  # no GPU here: skipped, not failed
    for name in ("special tokens", "tokenizer round trip", "RAM for loading", "disk space", "chat template", "model dtype"):
        assert found[name]["status"] in ("ok", "warn"), found[name]


def test_env_lists_versions():
    import torch

    env = CliRunner().invoke(app, ["env"])
    assert env.exit_code == 0 and f"- torch: {torch.__version__}" in env.stdout and "- transformers:" in env.stdout


def test_doctor_config_dry_run(llama_dir, tmp_path):
    data = write_json(tmp_path / "train.json", RECORDS)
    config = write_config(tmp_path / "run.yaml", model={"path": str(llama_dir)},
                          data={"path": str(data), "template": "alpaca", "cutoff_len": 64},
                          train={"output_dir": str(tmp_path / "out")})
    result = CliRunner().invoke(app, ["doctor", "--json", "--config", str(config)])
    found = {c["name"]: c for c in json.loads(result.stdout)}
    assert found["config"]["status"] == "ok" and found["config"]["detail"]["data"]["cutoff_len"] == 64
    assert found["data files"]["status"] == "ok" and found["template"]["status"] == "ok"
    assert found["dry run"]["status"] == "ok" and "4 samples encoded" in found["dry run"]["message"], found["dry run"]
    (tmp_path / "train.json").unlink()
    broken = CliRunner().invoke(app, ["doctor", "--json", "--config", str(config)])
    data = {c["name"]: c for c in json.loads(broken.stdout)}["data files"]
    assert broken.exit_code == 1 and data["status"] == "fail" and "train.json" in data["message"]
    table = CliRunner().invoke(app, ["doctor", "--config", str(config)])
    assert table.exit_code == 1 and "2 fail" in table.stdout
