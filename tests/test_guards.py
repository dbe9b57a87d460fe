"""Each guard fires on its provoked failure, with a message that says what to do."""

import pytest
import torch
from transformers import TrainerState, TrainingArguments

from lmtune.config import validate_config
from lmtune.tiny import build_model
from lmtune.train.guards import Guards, TrainingStopped
from lmtune.train.run import train


def run_config(model_dir, data_file, out, **train_settings):
    return validate_config(
        {
            "model": {"path": str(model_dir)},
            "data": {"path": str(data_file), "template": "alpaca", "cutoff_len": 96, "cache": False},
            "finetune": {"method": "full"},
            "train": {"output_dir": str(out), "max_steps": 6, "per_device_train_batch_size": 2, "logging_steps": 1, **train_settings},
        }
    )


def test_warm_up_longer_than_the_run_stops_before_training(llama_dir, data_file, tmp_path):
    with pytest.raises(TrainingStopped, match="warm-up takes 10 steps but the run has only 6"):
        train(run_config(llama_dir, data_file, tmp_path / "out", warmup_steps=10))


def test_nan_loss_stops_the_run(tmp_path, tokenizer, data_file):
    broken = tmp_path / "nan-model"
    model = build_model(tokenizer, broken, hidden_size=32, layers=1, heads=2)
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("nan"))  # e.g. a checkpoint damaged by an fp16 overflow
    model.save_pretrained(broken)
    with pytest.raises(TrainingStopped, match=r"loss is nan for 3 logged steps in a row \(step 3\): the weights or the data hold NaN"):
        train(run_config(broken, data_file, tmp_path / "out"))


def state(step, max_steps=100):
    s = TrainerState()
    s.global_step, s.max_steps = step, max_steps
    return s


def test_learning_rate_zero_mid_run_is_a_scheduler_fight(tmp_path):
    guards, args = Guards(), TrainingArguments(output_dir=str(tmp_path), report_to="none")
    guards.warmup = 5
    guards.on_log(args, state(3), None, logs={"loss": 1.0, "learning_rate": 0.0})  # a warm-up starts from 0
    guards.on_log(args, state(99), None, logs={"loss": 1.0, "learning_rate": 0.0})  # the end of a decay is fine
    with pytest.raises(TrainingStopped, match="the learning rate is 0 at step 10 of 100.*DeepSpeed config with its own 'scheduler'"):
        guards.on_log(args, state(10), None, logs={"loss": 1.0, "learning_rate": 0.0})


def test_zero_loss_and_fp16_overflow_are_told_apart(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    guards = Guards()
    for step in (1, 2):
        guards.on_log(args, state(step), None, logs={"loss": 0.0, "learning_rate": 1e-4})
    with pytest.raises(TrainingStopped, match="loss is exactly 0 for 3 logged steps.*every label is masked"):
        guards.on_log(args, state(3), None, logs={"loss": 0.0, "learning_rate": 1e-4})
    fp16 = Guards(half_precision="fp16")
    for step in (1, 2):
        fp16.on_log(args, state(step), None, logs={"loss": float("inf"), "learning_rate": 1e-4})
    with pytest.raises(TrainingStopped, match="fp16 overflow: train with bf16"):
        fp16.on_log(args, state(3), None, logs={"loss": float("inf"), "learning_rate": 1e-4})


def test_a_batch_with_every_label_masked_stops_with_advice(tokenizer):
    from lmtune.data.encode import Collator
    from lmtune.errors import DataError

    with pytest.raises(DataError, match="a training batch has every label masked"):
        Collator(tokenizer.pad_token_id)([{"input_ids": [5, 6, 7], "labels": [-100, -100, -100]}])


def test_liger_needs_a_gpu(llama_dir, data_file, tmp_path):
    from lmtune.errors import ConfigError

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(ConfigError, match="train.liger: Liger's kernels are Triton GPU kernels and need a CUDA GPU"):
        train(run_config(llama_dir, data_file, tmp_path / "out", liger=True))


def test_gradient_checkpointing_trains_lora(llama_dir, data_file, tmp_path):
    config = run_config(llama_dir, data_file, tmp_path / "out", gradient_checkpointing=True)
    config.finetune.method = "lora"
    result = train(config)  # verify_adapter: every LoRA tensor changed, so gradients flowed through checkpoints
    assert result.final_loss > 0
