import pytest
import torch
from safetensors.torch import load_file, save_file

from lmtune.config import LoraConfig
from lmtune.errors import AdapterError
from lmtune.model.adapters import ADAPTER_FILE, adapter_state, attach_lora, verify_adapter
from conftest import lmtune, write_config
from lmtune.model.load import load_model


@pytest.fixture
def lora_model(llama_dir):
    return attach_lora(load_model(llama_dir), LoraConfig(r=4))


def test_lora_targets_every_linear_layer_of_the_blocks_but_not_the_head(lora_model):
    names = set(adapter_state(lora_model))
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(f"layers.0.self_attn.{proj}.lora_A" in n or f"layers.0.mlp.{proj}.lora_A" in n for n in names), proj
    assert not any("lm_head" in n for n in names)


def test_planted_empty_adapter_is_caught(tmp_path, lora_model):
    initial = adapter_state(lora_model)
    save_file({name: torch.empty(0) for name in initial}, str(tmp_path / ADAPTER_FILE))
    with pytest.raises(AdapterError, match=rf"{len(initial)} empty tensors"):
        verify_adapter(tmp_path, initial)


def test_adapter_file_without_tensors_is_caught(tmp_path, lora_model):
    save_file({}, str(tmp_path / ADAPTER_FILE))  # the infamous few-hundred-byte adapter
    with pytest.raises(AdapterError, match=r"it holds no tensors; \d+ LoRA tensors missing"):
        verify_adapter(tmp_path, adapter_state(lora_model))


def test_untrained_adapter_is_caught(tmp_path, lora_model):
    initial = adapter_state(lora_model)
    lora_model.save_pretrained(tmp_path)
    pairs = len(initial) // 2  # each LoRA pair is judged as one part, by B·A
    with pytest.raises(AdapterError, match=rf"{pairs} of {pairs} adapter parts unchanged from initialisation \(e\.g\. .*\(LoRA B·A\)\)"):
        verify_adapter(tmp_path, initial)


def _nudge(model, which: str) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if which in name:
                param.add_(0.01)


def test_a_moved_b_alone_is_a_trained_pair(tmp_path, lora_model):
    """Two steps with warm-up: step 1 has learning rate 0, so only B moves at step 2 (A's gradient is 0 while B is)."""
    initial = adapter_state(lora_model)
    _nudge(lora_model, "lora_B")
    lora_model.save_pretrained(tmp_path)
    verify_adapter(tmp_path, initial)


def test_a_moved_alone_while_b_is_zero_changes_nothing_and_is_caught(tmp_path, lora_model):
    """Weight decay can move A while B stays 0: B·A is still 0, the adapter does nothing."""
    initial = adapter_state(lora_model)
    _nudge(lora_model, "lora_A")
    lora_model.save_pretrained(tmp_path)
    with pytest.raises(AdapterError, match="adapter parts unchanged from initialisation"):
        verify_adapter(tmp_path, initial)


def test_a_two_step_smoke_run_passes_the_check(tmp_path, llama_dir, data_file):
    """The first run many users try: max_steps 2 under the default warm-up used to end in 'adapter check failed'."""
    config = write_config(
        tmp_path / "run.yaml",
        model={"path": str(llama_dir)},
        data={"path": str(data_file), "template": "alpaca", "cutoff_len": 96, "cache": False},
        train={"output_dir": str(tmp_path / "out"), "max_steps": 2, "per_device_train_batch_size": 2},
    )
    result = lmtune("train", config)
    assert result.returncode == 0, result.stderr
    saved = load_file(str(tmp_path / "out" / ADAPTER_FILE))
    assert all(saved[n].abs().sum() > 0 for n in saved if "lora_B" in n)  # B moved at step 2


def test_trained_adapter_passes_and_missing_file_fails(tmp_path, lora_model):
    initial = adapter_state(lora_model)
    with pytest.raises(AdapterError, match="was not written"):
        verify_adapter(tmp_path, initial)
    with torch.no_grad():
        for name, param in lora_model.named_parameters():
            if "lora_" in name:
                param.add_(0.01)
    lora_model.save_pretrained(tmp_path)
    verify_adapter(tmp_path, initial)
