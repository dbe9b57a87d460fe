"""`lmtune export`: merge an adapter into its base and write a plain Hugging Face model folder:
safetensors shards small enough to load on modest RAM, the tokenizer with the chat template
written in, and the run's config and template, so `lmtune chat --model OUT` needs nothing else."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from lmtune.config import load_run_config
from lmtune.errors import LmtuneError, ModelError
from lmtune.files import read_json
from lmtune.model.adapters import load_adapter
from lmtune.model.hub import base_folder
from lmtune.model.load import DTYPES, check_model_dir, load_model, load_tokenizer
from lmtune.templates.jinja import to_jinja
from lmtune.templates.template import TEMPLATE_FILE, get_template


def export(out: Path, model: str | None = None, adapter: str | None = None, max_shard_size: str = "2GB",
           dtype: str = "float32", dequantize: bool = False) -> Path:
    run_dir = adapter or model
    run = load_run_config(run_dir) if run_dir else None
    base = model or (run.model.path if run else None)
    if base is None:
        raise LmtuneError("pass --model DIR (the adapter folder has no run.yaml naming its base model)")
    _check_shard_size(max_shard_size)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LmtuneError(f"--out {out}: already exists and is not an empty folder; choose a new folder for the merged model")
    base = base_folder(base, run.model if run else None)
    _refuse_quantized(check_model_dir(base), dequantize)
    merged = load_model(base, "float32")  # merge in fp32; cast once at the end
    if adapter:
        merged = _merge(load_adapter(merged, adapter), adapter)
    merged = merged.to(DTYPES[dtype])
    # Written beside the target and renamed at the end: a failure never leaves half a model at --out.
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        merged.save_pretrained(partial, max_shard_size=max_shard_size)
        _save_tokenizer_and_run(partial, adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else base, run_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()  # empty, checked above
    partial.rename(out)
    return out


def _check_shard_size(size: str) -> None:
    # The units huggingface_hub's save accepts; checked before the merge, not after it.
    if not re.fullmatch(r"\s*\d*\.?\d+\s*[KMGT]B\s*", size, re.IGNORECASE) or not float(re.sub(r"[^\d.]", "", size)) > 0:
        raise LmtuneError(f"--max-shard-size {size}: give a size in KB, MB, GB or TB, such as 500MB or 2GB")


def _merge(peft_model, adapter: str):
    if not hasattr(peft_model, "merge_and_unload"):
        raise LmtuneError(f"the adapter in {adapter} is prompt learning (ptuning/prefix/prompt), which has no weights to merge; serve it with --adapter")
    return peft_model.merge_and_unload()  # LoRA and DoRA fold into the base weights


def _refuse_quantized(base: Path, dequantize: bool) -> None:
    config = read_json(base / "config.json", ModelError)
    if "quantization_config" in config and not dequantize:
        raise LmtuneError(
            f"{base} is quantised ({config['quantization_config'].get('quant_method', 'unknown')}); merging into "
            "quantised weights loses the adapter's precision. Pass --dequantize to merge into a full-precision copy"
        )


def _save_tokenizer_and_run(out: Path, tokenizer_dir: str, run_dir: str | None) -> None:
    tokenizer = load_tokenizer(tokenizer_dir)
    for name in ("run.yaml", TEMPLATE_FILE):
        if run_dir and (Path(run_dir) / name).is_file():
            shutil.copy(Path(run_dir) / name, out / name)
    if (out / TEMPLATE_FILE).is_file():
        run = load_run_config(run_dir)
        tokenizer.chat_template = to_jinja(get_template(run.data.template, out / TEMPLATE_FILE))
    tokenizer.save_pretrained(out)
