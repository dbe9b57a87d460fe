"""Bad input: one clear line on stderr, exit status 2, no traceback (unless --debug)."""


import pytest
import torch

from tests.conftest import lmtune


@pytest.fixture
def project(tmp_path, llama_dir):
    (tmp_path / "good.json").write_text('[{"instruction": "a", "output": "b"}]', encoding="utf-8")
    (tmp_path / "bad.json").write_text('[{"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}]', encoding="utf-8")
    (tmp_path / "noout.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', encoding="utf-8")
    (tmp_path / "run.yaml").write_text(
        f"model: {{path: {llama_dir}}}\ndata: {{path: good.json, template: alpaca}}\n"
        "train: {output_dir: out, max_steps: 1}\n",
        encoding="utf-8",
    )
    return tmp_path


CASES = [
    (["data.path=missing.json"], "error: data file not found: {dir}/missing.json"),
    (["data.path=bad.json"], "error: {dir}/bad.json:2:22: malformed JSON: Expecting ',' delimiter"),
    (
        ["data.path=noout.jsonl"],
        "error: {dir}/noout.jsonl:2: record has no 'output' field; alpaca records need 'instruction' and 'output' "
        "(set data.on_error: skip to set bad records aside in rejected.jsonl)",
    ),
    (["model.path=nowhere"], "error: model folder 'nowhere' does not exist"),
    (["train.report_to=wandb"], "error: train.report_to: wandb needs the wandb package: pip install wandb"),
    pytest.param(
        ["train.optim=paged_adamw_8bit"],
        "error: train.optim: paged_adamw_8bit is a bitsandbytes optimizer and needs a CUDA GPU; use adamw_torch here",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="bitsandbytes optimizers run on CUDA GPUs"),
    ),
    pytest.param(
        ["train.fsdp=full_shard"],
        "error: train.fsdp: accelerate shards with FSDP on GPUs only; on this CPU machine it would quietly run plain "
        "DDP instead. Drop train.fsdp (`--nproc N` alone gives DDP), or run on CUDA GPUs",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="FSDP runs on CUDA GPUs"),
    ),
]


@pytest.mark.parametrize("overrides, expected", CASES)
def test_bad_input_gets_one_line_and_exit_2(project, overrides, expected):
    result = lmtune("train", "run.yaml", *overrides, cwd=project)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == expected.format(dir=project)
    assert "Traceback" not in result.stderr


def test_unknown_template_and_key_are_config_errors(project):
    result = lmtune("train", "run.yaml", "data.template=alpacca", "train.lerning_rate=1", cwd=project)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "error: run.yaml: 2 problem(s):",
        "  - data.template: unknown template 'alpacca'; did you mean 'alpaca'?",
        "  - train.lerning_rate: unknown key (not a TrainingArguments field); did you mean 'learning_rate'?",
    ]


def test_debug_shows_the_traceback(project):
    result = lmtune("--debug", "train", "run.yaml", "data.path=missing.json", cwd=project)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "DataError: data file not found" in result.stderr


def test_chat_needs_a_model_and_knows_its_template(project, llama_dir):
    result = lmtune("chat", cwd=project)
    assert result.returncode == 2 and "pass --model DIR, --adapter DIR, or both" in result.stderr
    result = lmtune("chat", "--model", llama_dir, cwd=project)
    assert result.returncode == 2
    assert "no template: the model folder has no run.yaml; pass --template NAME" in result.stderr


def test_deepspeed_without_the_package_fails_before_loading_anything(project):
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    result = lmtune("train", "run.yaml", "train.deepspeed=zero3", cwd=project)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: train.deepspeed needs the deepspeed package: pip install deepspeed"]


def test_model_commands_check_their_flags_in_one_line(project, llama_dir):
    model = ["--model", llama_dir, "--template", "alpaca"]
    bad_setting = lmtune("generate", *model, "--data", "good.json", "--out", "p.jsonl", "--temperature", "-1", cwd=project)
    assert bad_setting.returncode == 2 and "Traceback" not in bad_setting.stderr
    assert bad_setting.stderr.strip().splitlines()[-1] == "error: --temperature must be ≥ 0.0 (got -1.0)"
    bad_format = lmtune("generate", *model, "--data", "good.json", "--out", "p.jsonl", "--as-dataset", "csv", cwd=project)
    assert bad_format.stderr.strip().splitlines() == ["error: --as-dataset csv: choose one of alpaca, sharegpt, messages"]
    if not torch.cuda.is_available():
        quantized = lmtune("chat", *model, "--quantize", "4", cwd=project)
        assert quantized.returncode == 2 and "Traceback" not in quantized.stderr
        assert "--quantize 4bit quantises the model with bitsandbytes, whose 4/8-bit kernels need a CUDA GPU" in quantized.stderr
    compare = lmtune("eval", "compare", "good.json", "good.json", cwd=project)
    assert compare.returncode == 2 and "good.json:1: needs string fields 'prediction'" in compare.stderr
