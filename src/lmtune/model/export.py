"""`lmtune export`: merge an adapter into its base and write a plain Hugging Face model folder:
safetensors shards small enough to load on modest RAM, the tokenizer with the chat template
written in, and the run's config and template, so `lmtune chat --model OUT` needs nothing else.
`prepare_export` is where every format starts (GGUF too: model/gguf_export.py)."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from lmtune.config import load_run_config
from lmtune.data.encode import adds_bos
from lmtune.errors import LmtuneError, ModelError
from lmtune.files import read_json
from lmtune.model.adapters import load_adapter
from lmtune.model.gguf import gguf_file
from lmtune.model.hub import base_folder, is_hub_id
from lmtune.model.load import DTYPES, check_model_dir, load_model, load_tokenizer
from lmtune.templates.hf import AUTO, TokenizerChatTemplate, choose_template
from lmtune.templates.jinja import to_jinja
from lmtune.templates.template import TEMPLATE_FILE, get_template


def export(out: Path, model: str | None = None, adapter: str | None = None, max_shard_size: str = "2GB",
           dtype: str = "float32", dequantize: bool = False) -> Path:
    _check_shard_size(max_shard_size)
    job = prepare_export(out, model, adapter, dequantize)
    merged = job.merged_model().to(DTYPES[dtype])
    # Written beside the target and renamed at the end: a failure never leaves half a model at --out.
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        merged.save_pretrained(partial, max_shard_size=max_shard_size)
        _save_tokenizer_and_run(partial, job.tokenizer_dir, job.run_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()  # empty, checked above
    partial.rename(out)
    return out


@dataclass
class ExportJob:
    """What every export format starts from: the run, its base model folder and the tokenizer and
    template the run trained with; the merged model is made on demand, once."""

    run_dir: str | None
    run: object
    base: Path
    adapter: str | None
    tokenizer_dir: Path
    source_gguf: Path | None  # the .gguf file the base was read from, if it was one

    @cached_property
    def config(self):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.base)

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.tokenizer_dir)

    @cached_property
    def template(self):
        """The run's template, or the tokenizer's own chat template for a model folder without a run; None without either."""
        if self.run is None and not getattr(self.tokenizer, "chat_template", None):
            return None
        return choose_template(None if self.run else AUTO, self.run, self.run_dir, self.tokenizer)

    @property
    def name(self) -> str:
        """The run's folder name (or a model file's stem): the GGUF's general.name and the Ollama model's name."""
        path = Path(self.run_dir or self.base).resolve()
        return path.stem if path.is_file() else path.name

    @property
    def chat_template(self) -> str | None:
        if self.template is None:
            return None
        return self.tokenizer.chat_template if isinstance(self.template, TokenizerChatTemplate) else to_jinja(self.template)

    @property
    def end_tokens(self) -> list[str]:
        """The tokens that end an answer, as text ({eos} as the tokenizer's EOS)."""
        ends = self.template.end_tokens() if self.template is not None else ("{eos}",)
        return [self.tokenizer.eos_token if end == "{eos}" else end for end in ends]

    @property
    def adds_bos(self) -> bool:
        """BOS in front of a prompt, as lmtune's encoder puts it: by the tokenizer, unless the template writes it."""
        return adds_bos(self.tokenizer) and not (self.template is not None and self.template.writes_bos())

    def adapter_model(self):
        base = load_model(self.base, "float32")
        if not self.adapter:
            return base
        return load_adapter(base, self.adapter)

    def merged_model(self):
        """Base and adapter merged in fp32 (cast once at the end by the caller)."""
        model = self.adapter_model()
        return _merge(model, self.adapter) if self.adapter else model


def prepare_export(out: Path, model: str | None, adapter: str | None, dequantize: bool) -> ExportJob:
    """The checks every export makes before loading anything heavy, and the job they describe."""
    run_dir = adapter or model
    run = load_run_config(run_dir) if run_dir else None
    base = model or (run.model.path if run else None)
    if base is None:
        raise LmtuneError("pass --model DIR (the adapter folder has no run.yaml naming its base model)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LmtuneError(f"--out {out}: already exists and is not an empty folder; choose a new folder for the export")
    source = gguf_file(base) if not is_hub_id(base) else None
    folder = base_folder(base, run.model if run else None)
    _refuse_quantized(check_model_dir(folder), dequantize)
    tokenizer_dir = Path(adapter) if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else folder
    return ExportJob(run_dir, run, folder, adapter, tokenizer_dir, source)


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
