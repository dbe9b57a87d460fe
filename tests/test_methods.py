"""Each fine-tuning method trains a tiny Llama and a tiny Bloom on CPU: what should change does,
what should stay frozen does not."""

import json

import pytest
import torch
from safetensors.torch import load_file

from lmtune.config import validate_config
from lmtune.errors import ConfigError
from lmtune.tiny import build_model
from lmtune.train.run import train


@pytest.fixture(scope="module", params=["llama", "bloom"])
def model_dir(request, tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp(request.param)
    build_model(tokenizer, path, arch=request.param, hidden_size=32, layers=3, heads=2)
    return path


def run(model_dir, data_file, out, train_settings=None, **finetune):
    return train(
        validate_config(
            {
                "model": {"path": str(model_dir)},
                "data": {"path": str(data_file), "template": "alpaca", "cutoff_len": 96, "cache": False},
                "finetune": finetune,
                "train": {"output_dir": str(out), "max_steps": 3, "learning_rate": 1e-2, "per_device_train_batch_size": 2}
                | (train_settings or {}),
            }
        )
    )


def base_weights(model_dir):
    return load_file(str(model_dir / "model.safetensors"))


@pytest.mark.parametrize(
    "finetune",
    [
        {"method": "lora", "lora": {"use_dora": True, "use_rslora": True, "r": 4}},
        {"method": "ptuning", "prompt": {"num_virtual_tokens": 4}},
        {"method": "prefix", "prompt": {"num_virtual_tokens": 4}},
        {"method": "prompt", "prompt": {"num_virtual_tokens": 4}},
    ],
    ids=["dora+rslora", "ptuning", "prefix", "prompt"],
)
def test_adapter_methods_train_the_adapter_and_leave_the_base_alone(model_dir, data_file, tmp_path, finetune):
    before = base_weights(model_dir)
    result = run(model_dir, data_file, tmp_path / "out", **finetune)  # verify_adapter checked every tensor changed
    adapter = load_file(str(result.output_dir / "adapter_model.safetensors"))
    assert adapter and all(t.numel() for t in adapter.values())
    after = base_weights(model_dir)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_freeze_trains_only_the_last_blocks(model_dir, data_file, tmp_path):
    before = base_weights(model_dir)
    result = run(model_dir, data_file, tmp_path / "out", method="freeze", freeze={"layers": 1})
    after = load_file(str(result.output_dir / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    last = "layers.2." if any("layers." in k for k in before) else "h.2."
    assert changed and all(last in k for k in changed)
    assert any(last in k and "weight" in k for k in changed)


def test_continue_training_an_existing_adapter(model_dir, data_file, tmp_path):
    first = run(model_dir, data_file, tmp_path / "round1", method="lora")
    second = run(model_dir, data_file, tmp_path / "round2", method="lora", adapter=str(first.output_dir))
    one = load_file(str(first.output_dir / "adapter_model.safetensors"))
    two = load_file(str(second.output_dir / "adapter_model.safetensors"))
    assert one.keys() == two.keys() and any(not torch.equal(one[k], two[k]) for k in one)


def test_qlora_without_a_gpu_says_why(model_dir, data_file, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU, where QLoRA runs")
    with pytest.raises(ConfigError, match="qlora .* need a CUDA GPU; none is visible here, so use method: lora"):
        run(model_dir, data_file, tmp_path / "out", method="qlora")


# Batches of the whole data set at a constant learning rate: each logged loss is the loss over all records.
STEADY = {"per_device_train_batch_size": 4, "logging_steps": 1, "warmup_ratio": 0, "lr_scheduler_type": "constant"}

# Finetune section and learning rate; prompt learning wants a high one, as in its papers. A random model
# attends almost evenly, so a learned prompt pulls in proportion to its share of the context: 64 tokens.
METHODS = {
    "lora": ({"method": "lora"}, 1e-2),
    "dora": ({"method": "lora", "lora": {"use_dora": True}}, 1e-2),
    "full": ({"method": "full"}, 1e-2),
    "freeze": ({"method": "freeze", "freeze": {"layers": 1}}, 1e-2),
    "ptuning": ({"method": "ptuning", "prompt": {"num_virtual_tokens": 64}}, 3e-2),
    "prefix": ({"method": "prefix"}, 1e-1),
    "prompt": ({"method": "prompt", "prompt": {"num_virtual_tokens": 64}}, 3e-1),
}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_lowers_the_loss(model_dir, data_file, tmp_path, method):
    """Not only that parameters change: the loss falls, on Llama and on Bloom alike (P-tuning on a tiny
    Bloom once stayed flat, its gradient norm 100x below Llama's). The batch is the whole data set, so the
    first logged loss is the loss before training and the last one the loss after 9 updates."""
    finetune, lr = METHODS[method]
    result = run(model_dir, data_file, tmp_path / "out", train_settings=STEADY | {"max_steps": 10, "learning_rate": lr}, **finetune)
    losses = [json.loads(line)["loss"] for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] - 0.02, losses
