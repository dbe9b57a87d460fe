import json

import pytest
import torch

from lmtune.config import validate_config
from lmtune.errors import LmtuneError
from lmtune.model.export import export
from lmtune.train.run import train


def test_exported_model_gives_the_logits_of_base_plus_adapter(tmp_path, llama_dir, data_file):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = train(
        validate_config(
            {
                "model": {"path": str(llama_dir)},
                "data": {"path": str(data_file), "template": "alpaca", "cutoff_len": 96, "cache": False},
                "finetune": {"method": "lora", "lora": {"use_dora": True}},
                "train": {"output_dir": str(tmp_path / "adapter"), "max_steps": 4, "learning_rate": 1e-2, "per_device_train_batch_size": 2},
            }
        )
    ).output_dir
    out = export(tmp_path / "merged", adapter=str(adapter), max_shard_size="40KB")
    assert len(list(out.glob("model-*.safetensors"))) > 1 and (out / "model.safetensors.index.json").is_file()
    from transformers import AutoTokenizer

    assert (out / "template.yaml").is_file() and "### Response" in AutoTokenizer.from_pretrained(out).chat_template

    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    with torch.no_grad():
        expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir), adapter)(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(out)(ids).logits  # plain transformers, no lmtune, no peft
    assert torch.allclose(merged, expected, atol=1e-4)


def test_a_quantised_base_is_refused_without_dequantize(tmp_path, llama_dir):
    import shutil

    base = tmp_path / "quantised"
    shutil.copytree(llama_dir, base)
    config = json.loads((base / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config))
    with pytest.raises(LmtuneError, match=r"is quantised \(bitsandbytes\).*Pass --dequantize"):
        export(tmp_path / "out", model=str(base))
