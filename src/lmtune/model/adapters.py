"""What gets trained: LoRA/DoRA, P-tuning, prefix and prompt tuning through peft, or the last blocks
(freeze); then snapshot and verify what was saved (no more 443-byte adapters)."""

from __future__ import annotations

from pathlib import Path

import torch

from lmtune.config import FinetuneConfig, FreezeConfig, LoraConfig, PromptLearningConfig
from lmtune.errors import AdapterError
from lmtune.files import check_safetensors, read_json

ADAPTER_FILE = "adapter_model.safetensors"


def apply_method(model, cfg: FinetuneConfig):
    """The model to train and, for adapters, their initial tensors (for the check after saving)."""
    from peft import PeftModel

    if cfg.method == "full":
        return model, None
    if cfg.method == "freeze":
        freeze_all_but_last(model, cfg.freeze)
        return model, None
    if cfg.adapter:
        model = PeftModel.from_pretrained(model, load_adapter_dir(cfg.adapter), is_trainable=True)
    elif cfg.method in ("lora", "qlora"):
        model = attach_lora(model, cfg.lora)
    else:
        model = attach_prompt_learning(model, cfg.method, cfg.prompt)
    return model, adapter_state(model)


def attach_lora(model, cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target,  # "all-linear": every linear layer of the blocks, never lm_head
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
        modules_to_save=cfg.modules_to_save,
        # A reward model's score head is new: SEQ_CLS makes peft train and save it with the adapter.
        task_type="SEQ_CLS" if type(model).__name__.endswith("ForSequenceClassification") else "CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def attach_prompt_learning(model, method: str, cfg: PromptLearningConfig):
    """P-tuning (v2-style prompt encoder), prefix tuning or plain prompt tuning."""
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model

    common = {"task_type": "CAUSAL_LM", "num_virtual_tokens": cfg.num_virtual_tokens}
    peft_config = {
        "ptuning": lambda: PromptEncoderConfig(**common, encoder_hidden_size=cfg.encoder_hidden_size or model.config.hidden_size),
        "prefix": lambda: PrefixTuningConfig(**common),
        "prompt": lambda: PromptTuningConfig(**common),
    }[method]()
    return get_peft_model(model, peft_config)


def freeze_all_but_last(model, cfg: FreezeConfig) -> None:
    """Train the last N transformer blocks (and optionally the embeddings); freeze the rest."""
    blocks = transformer_blocks(model)
    if cfg.layers > len(blocks):
        raise AdapterError(f"finetune.freeze.layers={cfg.layers}, but the model has {len(blocks)} blocks")
    for param in model.parameters():
        param.requires_grad = False
    for block in list(blocks)[-cfg.layers :]:
        for param in block.parameters():
            param.requires_grad = True
    if cfg.train_embeddings:
        model.get_input_embeddings().weight.requires_grad = True


def transformer_blocks(model) -> torch.nn.ModuleList:
    """The model's stack of blocks: its longest ModuleList (model.layers in Llama, transformer.h in Bloom)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise AdapterError(f"cannot find the transformer blocks of {type(model).__name__} to freeze")
    return max(lists, key=len)


def load_adapter_dir(path: str) -> str:
    check_adapter_files(Path(path), "finetune.adapter: ")
    return path


def check_adapter_files(path: Path, what: str = "") -> None:
    """The folder exists, its adapter_config.json parses and its weights' header reads, so a
    damaged adapter is named before PEFT fails on it with a traceback."""
    if not path.is_dir():
        raise AdapterError(f"{what}adapter folder '{path}' does not exist")
    if not (path / "adapter_config.json").is_file():
        raise AdapterError(f"{what}'{path}' holds no adapter (adapter_config.json missing)")
    if not isinstance(read_json(path / "adapter_config.json", AdapterError), dict):
        raise AdapterError(f"{path / 'adapter_config.json'}: expected a JSON object (an adapter config)")
    if (path / ADAPTER_FILE).is_file():
        check_safetensors(path / ADAPTER_FILE, AdapterError)
    elif not (path / "adapter_model.bin").is_file():
        raise AdapterError(f"{what}'{path}' has adapter_config.json but no weights ({ADAPTER_FILE} missing); was the save interrupted?")


def adapter_state(model) -> dict[str, torch.Tensor]:
    """The adapter tensors under the names peft saves them with, copied to CPU."""
    from peft import get_peft_model_state_dict

    return {name: t.detach().to("cpu", copy=True) for name, t in get_peft_model_state_dict(model).items()}


def verify_adapter(adapter_dir: str | Path, initial: dict[str, torch.Tensor]) -> None:
    """Load the saved adapter back: every tensor present, non-empty, and changed by training (a LoRA
    pair counts as changed when its update B·A has)."""
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
    parts = _trained_parts(saved, initial) if not (missing or empty) else {}
    unchanged = sorted(name for name, changed in parts.items() if not changed)
    if not saved or missing or empty or unchanged:
        problems = []
        if not saved:
            problems.append("it holds no tensors")
        if missing:
            problems.append(f"{len(missing)} LoRA tensors missing (e.g. {missing[0]})")
        if empty:
            problems.append(f"{len(empty)} empty tensors (e.g. {empty[0]})")
        if unchanged:
            problems.append(f"{len(unchanged)} of {len(parts)} adapter parts unchanged from initialisation (e.g. {unchanged[0]})")
        raise AdapterError(
            f"adapter check failed for {path}: {'; '.join(problems)}. Training did not update the adapter: "
            "check that labels are not all -100, that learning_rate > 0, and that max_steps/epochs are not 0"
        )


LORA_PAIRS = {".lora_A": ".lora_B", ".lora_embedding_A": ".lora_embedding_B"}


def _trained_parts(saved: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> dict[str, bool]:
    """Whether training changed each part of the adapter: a LoRA pair as one part, judged by its
    update B·A, every other tensor (DoRA magnitudes, prompt embeddings, modules_to_save) by itself.
    Judging A and B apart fails honest short runs: warm-up gives step 1 a learning rate of 0, so
    after 2 steps only B has moved (A's gradient goes through B, still 0), yet B·A is nonzero."""
    parts, paired = {}, set()
    for a_name in saved:
        b_name = _partner(a_name)
        if b_name in saved and {a_name, b_name} <= initial.keys():
            module = a_name.rsplit(".lora_", 1)[0]
            parts[f"{module} (LoRA B·A)"] = _pair_changed(saved[a_name], saved[b_name], initial[a_name], initial[b_name])
            paired |= {a_name, b_name}
    for name, tensor in saved.items():
        if name in initial and name not in paired:
            parts[name] = not torch.equal(tensor.cpu(), initial[name])
    return parts


def _partner(name: str) -> str | None:
    """The lora_B tensor that goes with a lora_A one (None for anything else)."""
    for a_key, b_key in LORA_PAIRS.items():
        if a_key in name:
            return name.replace(a_key, b_key)
    return None


def _pair_changed(a: torch.Tensor, b: torch.Tensor, a0: torch.Tensor, b0: torch.Tensor) -> bool:
    """Did B·A change? Compared on a fixed random probe instead of as products: (B·A)x costs
    r·(in + out) where B·A costs in·out, and a changed product maps a random x to the same
    vector only by a measure-zero coincidence. An update A cannot make while B is 0 (weight
    decay alone) leaves B·A at 0 and so counts as unchanged, as it should."""
    a, b, a0, b0 = (t.detach().cpu().float() for t in (a, b, a0, b0))
    a, a0 = a.reshape(a.shape[0], -1), a0.reshape(a0.shape[0], -1)  # conv and embedding LoRA as matrices
    b, b0 = b.reshape(b.shape[0], -1), b0.reshape(b0.shape[0], -1)
    if b.shape[1] != a.shape[0]:
        return not (torch.equal(a, a0) and torch.equal(b, b0))
    probe = torch.randn(a.shape[1], generator=torch.Generator().manual_seed(0))
    return not torch.equal(b @ (a @ probe), b0 @ (a0 @ probe))


def load_adapter(model, adapter_dir: str | Path):
    from peft import PeftModel

    path = Path(adapter_dir)
    check_adapter_files(path)
    return PeftModel.from_pretrained(model, path)
