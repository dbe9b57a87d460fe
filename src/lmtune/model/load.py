"""Load a causal LM and its tokenizer from a local folder (model.hub turns hub ids into one): dtype, pad token, id checks."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from lmtune.errors import ConfigError, ModelError
from lmtune.files import check_model_files, read_json
from lmtune.model.gguf import dequantized, gguf_file

log = logging.getLogger(__name__)
# Per-shard loading bars say nothing on small models. Set here, where models are loaded, rather than
# at start-up: importing transformers takes half a second that `lmtune --help` or `templates` need not pay.
hf_logging.disable_progress_bar()

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """auto: fp32 on CPU (half precision is slow and lossy there), bf16 where the GPU has it, else fp16."""
    if name != "auto":
        return DTYPES[name]
    if not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def check_model_dir(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file():
        raise ModelError(f"model path '{path}' is a file; give the model's folder (config.json, weights and tokenizer)")
    if not path.is_dir():
        raise ModelError(f"model folder '{path}' does not exist")
    if not (path / "config.json").is_file():
        raise ModelError(
            f"model folder '{path}' has no config.json; give a Hugging Face model folder, or a hub id "
            "such as Qwen/Qwen2.5-0.5B-Instruct"
        )
    return path


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    gguf = gguf_file(path)  # a .gguf holds its tokenizer: read from the model's dequantized folder
    path = dequantized(gguf) if gguf else Path(path)
    if not (path / "tokenizer_config.json").is_file() and not (path / "tokenizer.json").is_file():
        raise ModelError(f"no tokenizer in '{path}' (tokenizer.json / tokenizer_config.json missing)")
    if (path / "config.json").is_file():
        read_json(path / "config.json", ModelError)  # transformers reads it too, and names neither line nor cause
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    except Exception as exc:  # the Rust tokenizers library raises bare Exceptions for a damaged tokenizer.json
        raise ModelError(f"could not load the tokenizer in '{path}': {' '.join(str(exc).split())[:300]}") from exc
    ensure_pad_token(tokenizer)
    return tokenizer


def ensure_pad_token(tokenizer) -> None:
    """Give a tokenizer without a pad token one it already has (unk, else eos), so the vocabulary
    and the embedding matrix keep their size. Padding is masked by the attention mask and by -100
    labels, never by comparing ids, so pad == eos is safe."""
    if tokenizer.pad_token_id is not None:
        return
    for candidate in ("unk_token", "eos_token"):
        if getattr(tokenizer, candidate) is not None:
            tokenizer.pad_token = getattr(tokenizer, candidate)
            log.info("tokenizer has no pad token; using %s %r", candidate, tokenizer.pad_token)
            return
    raise ModelError("the tokenizer has neither a pad, unk nor eos token; add one to tokenizer_config.json")


def quantization(q, what: str = "finetune.method: qlora", instead: str = "use method: lora (same adapters, unquantised base)"):
    """bitsandbytes settings (a QuantConfig) for QLoRA or quantised inference; its kernels need a CUDA GPU."""
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{what} quantises the model with bitsandbytes, whose 4/8-bit kernels need a CUDA GPU; "
            f"none is visible here, so {instead}"
        )
    from transformers import BitsAndBytesConfig

    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=resolve_dtype("auto"),
    )


def load_model(path: str | Path, dtype: str = "auto", trust_remote_code: bool = False, quantization_config=None,
               reward: bool = False):
    """The causal LM, or with reward=True the same base with a one-score head (data.stage: rm)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    path = check_model_dir(path)
    check_model_files(path)
    torch_dtype = resolve_dtype(dtype)
    auto, extra = (AutoModelForSequenceClassification, {"num_labels": 1}) if reward else (AutoModelForCausalLM, {})
    try:
        model = auto.from_pretrained(
            path,
            dtype=torch_dtype,
            trust_remote_code=trust_remote_code,
            local_files_only=True,
            quantization_config=quantization_config,
            **extra,
        )
    except (OSError, ValueError) as exc:
        kind = "reward model" if reward else "causal LM"
        raise ModelError(f"could not load a {kind} from '{path}': {' '.join(str(exc).split())}") from exc
    if torch.cuda.is_available() and quantization_config is None:  # quantised weights are placed on load
        model.to("cuda")
    return model


def align_special_tokens(model, tokenizer) -> None:
    """The model's config must know the pad/eos the tokenizer uses, or generate pads with the wrong id."""
    for config in (model.config, getattr(model, "generation_config", None)):  # a reward model has none
        if config is not None:
            config.pad_token_id = tokenizer.pad_token_id
            config.eos_token_id = tokenizer.eos_token_id


def check_token_ids(max_id: int, model, tokenizer) -> None:
    """Ids past the embedding table are the classic 'device-side assert triggered' on GPU."""
    rows = model.get_input_embeddings().weight.shape[0]
    if max_id >= rows:
        raise ModelError(
            f"token id {max_id} is outside the model's embedding table ({rows} rows); "
            f"the tokenizer ({len(tokenizer)} tokens) does not match this model: use the tokenizer "
            "saved with the model, or resize the embeddings after adding tokens"
        )
