import pytest
import torch
from safetensors.torch import save_file

from lmtune.config import LoraConfig
from lmtune.errors import AdapterError
from lmtune.model.adapters import ADAPTER_FILE, adapter_state, attach_lora, verify_adapter
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
    with pytest.raises(AdapterError, match=rf"{len(initial)} of {len(initial)} tensors unchanged from initialisation"):
        verify_adapter(tmp_path, initial)


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
