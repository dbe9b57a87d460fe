"""LoRA through peft: attach, snapshot, and verify what was saved (no more 443-byte adapters)."""

from __future__ import annotations

from pathlib import Path

import torch

from lmtune.config import LoraConfig
from lmtune.errors import AdapterError

ADAPTER_FILE = "adapter_model.safetensors"


def attach_lora(model, cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target,  # "all-linear": every linear layer of the blocks, never lm_head
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def adapter_state(model) -> dict[str, torch.Tensor]:
    """The adapter tensors under the names peft saves them with, copied to CPU."""
    from peft import get_peft_model_state_dict

    return {name: t.detach().to("cpu", copy=True) for name, t in get_peft_model_state_dict(model).items()}


def verify_adapter(adapter_dir: str | Path, initial: dict[str, torch.Tensor]) -> None:
    """Load the saved adapter back: every tensor present, non-empty, and changed by training."""
    from safetensors.torch import load_file

    path = Path(adapter_dir) / ADAPTER_FILE
    if not path.is_file():
        raise AdapterError(f"{path} was not written; training produced no adapter file")
    try:
        saved = load_file(path)
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise AdapterError(f"{path} cannot be read back ({exc}); the file is damaged") from exc
    missing = sorted(set(initial) - set(saved))
    empty = sorted(name for name, t in saved.items() if t.numel() == 0)
    unchanged = sorted(
        name for name, t in saved.items() if name in initial and t.numel() and torch.equal(t.cpu(), initial[name])
    )
    if not saved or missing or empty or unchanged:
        problems = []
        if not saved:
            problems.append("it holds no tensors")
        if missing:
            problems.append(f"{len(missing)} LoRA tensors missing (e.g. {missing[0]})")
        if empty:
            problems.append(f"{len(empty)} empty tensors (e.g. {empty[0]})")
        if unchanged:
            problems.append(f"{len(unchanged)} of {len(saved)} tensors unchanged from initialisation (e.g. {unchanged[0]})")
        raise AdapterError(
            f"adapter check failed for {path}: {'; '.join(problems)}. Training did not update the adapter: "
            "check that labels are not all -100, that learning_rate > 0, and that max_steps/epochs are not 0"
        )


def load_adapter(model, adapter_dir: str | Path):
    from peft import PeftModel

    path = Path(adapter_dir)
    if not (path / "adapter_config.json").is_file():
        raise AdapterError(f"'{path}' holds no adapter (adapter_config.json missing)")
    return PeftModel.from_pretrained(model, path)
