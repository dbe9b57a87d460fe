import pytest

from lmtune.config import validate_config
from lmtune.errors import ModelError
from lmtune.tiny import build_model
from lmtune.train.callbacks import smoothed
from lmtune.train.run import train


def config(model_dir, data_file, out, **train):
    return validate_config(
        {
            "model": {"path": str(model_dir)},
            "data": {"path": str(data_file), "template": "chatml", "cutoff_len": 64},
            "train": {"output_dir": str(out), "max_steps": 3, "per_device_train_batch_size": 2, "logging_steps": 1, **train},
        }
    )


def test_lora_on_a_tiny_bloom(tmp_path, tokenizer, data_file):
    bloom = tmp_path / "bloom"
    build_model(tokenizer, bloom, arch="bloom", hidden_size=32, layers=2, heads=2)
    result = train(config(bloom, data_file, tmp_path / "out"))
    assert (result.output_dir / "adapter_model.safetensors").is_file()  # verify_adapter ran and passed
    assert result.report.kept == 4


def test_token_ids_beyond_the_embedding_table_stop_the_run(tmp_path, tokenizer, data_file):
    small = tmp_path / "small"
    model = build_model(tokenizer, small, hidden_size=32, layers=1, heads=2)
    model.resize_token_embeddings(100)  # a tokenizer/model mismatch, as after adding tokens carelessly
    model.save_pretrained(small)
    with pytest.raises(ModelError, match=r"token id \d+ is outside the model's embedding table \(100 rows\)"):
        train(config(small, data_file, tmp_path / "out"))


def test_smoothed_loss_has_no_start_up_bias():
    assert smoothed([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])
    assert smoothed([1.0, 3.0], 0.0) == [1.0, 3.0]
