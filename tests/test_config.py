from pathlib import Path

import pytest

from lmtune.config import load_config, validate_config
from lmtune.errors import ConfigError

ISSUE_EXAMPLE = """\
model: {path: /path/to/local/model}          # a local Hugging Face folder
data: {path: data/train.json, template: alpaca, cutoff_len: 1024}   # path: a file, or a list of files
finetune: {method: lora}
train: {output_dir: runs/demo, max_steps: 100, learning_rate: 2.0e-4, per_device_train_batch_size: 8}
"""


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_the_documented_config_means_what_it_says(tmp_path):
    config = load_config(write(tmp_path, ISSUE_EXAMPLE))
    assert config.model.path == "/path/to/local/model"
    assert config.data.path == ["data/train.json"]
    assert (config.data.template, config.data.cutoff_len) == ("alpaca", 1024)
    assert config.finetune.method == "lora"
    args = config.train.training_arguments()
    assert args["max_steps"] == 100 and args["per_device_train_batch_size"] == 8
    assert args["learning_rate"] == 2.0e-4
    assert args["lr_scheduler_type"] == "cosine" and args["warmup_steps"] == 0.03


def test_dotted_overrides_and_plain_exponent_floats(tmp_path):
    config = load_config(
        write(tmp_path, ISSUE_EXAMPLE),
        ["train.learning_rate=1e-4", "data.path=[a.json, b.jsonl]", "train.gradient_accumulation_steps=4"],
    )
    assert config.train.learning_rate == 1e-4  # PyYAML alone would read "1e-4" as a string
    assert config.data.path == ["a.json", "b.jsonl"]
    assert config.train.training_arguments()["gradient_accumulation_steps"] == 4


def test_misspelt_keys_are_all_reported_with_the_closest_valid_key(tmp_path):
    text = ISSUE_EXAMPLE.replace("cutoff_len", "cutof_len").replace("max_steps", "max_step")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    message = str(err.value)
    assert "2 problem(s)" in message
    assert "data.cutof_len: unknown key; did you mean 'cutoff_len'?" in message
    assert "train.max_step: unknown key (not a TrainingArguments field); did you mean 'max_steps'?" in message


def test_bad_values_name_the_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, ISSUE_EXAMPLE), ["finetune.method=lore", "data.template=alpacca"])
    message = str(err.value)
    assert "finetune.method: 'lore' is not one of lora, qlora, full, freeze, ptuning, prefix, prompt; did you mean 'lora'?" in message
    assert "data.template: unknown template 'alpacca'; did you mean 'alpaca'?" in message


def test_missing_sections_and_files(tmp_path):
    with pytest.raises(ConfigError, match="model: required but missing"):
        validate_config({"data": {"path": "x.json"}, "train": {"output_dir": "o"}})
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        load_config("nope.yaml")
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(write(tmp_path, ISSUE_EXAMPLE), ["learning_rate"])


def test_json_configs_work_too(tmp_path):
    text = '{"model": {"path": "m"}, "data": {"path": "d.json"}, "train": {"output_dir": "o"}}'
    config = load_config(write(tmp_path, text, "run.json"))
    assert config.finetune.lora.target == "all-linear" and config.data.cutoff_len == 1024


def test_every_shipped_example_config_is_valid():
    examples = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        load_config(path)


def test_shipped_deepspeed_configs_leave_the_schedule_to_lmtune(tmp_path):
    import json

    from lmtune.config import DEEPSPEED_CONFIGS, TrainConfig

    for name in DEEPSPEED_CONFIGS:
        path = TrainConfig(output_dir="o", deepspeed=name).training_arguments()["deepspeed"]
        config = json.loads(Path(path).read_text())
        assert "optimizer" not in config and "scheduler" not in config
        assert config["train_micro_batch_size_per_gpu"] == "auto" and config["gradient_accumulation_steps"] == "auto"
        assert config["zero_optimization"]["stage"] == (3 if "zero3" in name else 2)
    own = tmp_path / "ds.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 2}, "scheduler": {"type": "WarmupLR"}}))
    with pytest.raises(ConfigError, match="brings its own 'scheduler'; it would fight lmtune's"):
        TrainConfig(output_dir="o", deepspeed=str(own)).training_arguments()
    with pytest.raises(ConfigError, match="'zero4' is neither zero2, zero2_offload, zero3, zero3_offload nor a JSON file"):
        TrainConfig(output_dir="o", deepspeed="zero4").training_arguments()
