"""`lmtune export --format gguf`: the merged model (or, with --adapter-only, the LoRA adapter) as one
GGUF file for llama.cpp and Ollama, written in Python with the `gguf` package: no compiler, no
llama.cpp checkout. Beside the model, `ollama/Modelfile` (model/ollama.py).

The file carries what llama.cpp needs to answer as the fine-tune does: the weights in its layout
(model/gguf_arch.py), the tokenizer (model/gguf_vocab.py), the chat template the run trained with
(as Jinja, which llama.cpp renders), and the token that ends an answer as its end-of-turn token.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from lmtune.errors import LmtuneError
from lmtune.model import gguf_arch
from lmtune.model.gguf_vocab import token_id, write_vocab

ADAPTER_PREFIX = "base_model.model."  # where peft puts the wrapped model's modules


@dataclass(frozen=True)
class GgufExport:
    file: Path  # the .gguf written
    modelfile: Path | None  # ollama/Modelfile, when one could be written
    ollama_create: str | None  # the command that makes it an Ollama model
    note: str = ""  # why there is no Modelfile (or what it leaves out)


def export_gguf(out: Path, model: str | None, adapter: str | None, quant: str = "f16", adapter_only: bool = False,
                dequantize: bool = False) -> GgufExport:
    """Write OUT/model-QUANT.gguf (or OUT/adapter-QUANT.gguf) and the Ollama Modelfile beside it."""
    from lmtune.model.export import prepare_export

    quant = gguf_arch.check_quant(quant)
    if adapter_only and not adapter:
        raise LmtuneError("--adapter-only needs --adapter DIR (the LoRA adapter to write as GGUF)")
    job = prepare_export(out, model, adapter, dequantize)
    family = gguf_arch.family_of(job.config)
    file = out / (f"adapter-{quant}.gguf" if adapter_only else f"model-{quant}.gguf")
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        if adapter_only:
            _write_adapter(partial / file.name, job, family, quant)
        else:
            _write_model(partial / file.name, job, family, quant)
        from lmtune.model.ollama import write_modelfile

        modelfile, note = write_modelfile(partial, file.name, job, adapter_only)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()  # empty, checked by prepare_export
    partial.rename(out)
    made = out / "ollama" / "Modelfile" if modelfile else None
    return GgufExport(file, made, f"ollama create {_ollama_name(job.name)} -f {made}" if made else None, note)


def _ollama_name(name: str) -> str:
    """Ollama model names take letters, digits, '.', '-' and '_'."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-.") or "model"


def _write_model(path: Path, job, family, quant: str) -> None:
    import gguf

    merged = job.merged_model()
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[family.arch]])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(job.name)
    gguf_arch.write_hparams(writer, job.config)
    writer.add_file_type(gguf_arch.file_type(quant))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_vocab(writer, job.tokenizer, job.tokenizer_dir, job.config.vocab_size, job.source_gguf, job.adds_bos)
    write_chat_keys(writer, job)
    for name, array in gguf_arch.gguf_tensors(merged.state_dict(), job.config, family):
        data, kind = gguf_arch.encode(name, array, quant)
        writer.add_tensor(name, data, raw_dtype=kind)
    _finish(writer)


def write_chat_keys(writer, job) -> None:
    """The run's chat template (Jinja, as llama.cpp renders it) and the token that ends an answer,
    where that is not EOS (ChatML's <|im_end|> on a base whose EOS is <|endoftext|>)."""
    if job.chat_template is None:
        return  # a model folder without a run or a chat template: llama.cpp completes plain text
    writer.add_chat_template(job.chat_template)
    ends = [token_id(job.tokenizer, end) for end in job.end_tokens if end != job.tokenizer.eos_token]
    ends = [i for i in ends if i is not None]
    if ends:
        writer.add_eot_token_id(ends[0])


def _write_adapter(path: Path, job, family, quant: str) -> None:
    """The LoRA's A and B for llama.cpp's --lora: B carries the scaling (alpha/r, or rsLoRA's
    alpha/sqrt(r), per module as peft computed it), so llama.cpp applies it at scale 1."""
    import gguf

    pairs = lora_pairs(job.adapter_model(), job.adapter)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[family.arch], job.config.num_hidden_layers)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[family.arch]])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    ranks = {a.shape[0] for _, a, _ in pairs}
    # llama.cpp scales by alpha/rank; with the scaling inside B that must be 1 (alpha 0 means 1 for mixed ranks).
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(ranks.pop()) if len(ranks) == 1 else 0.0)
    writer.add_name(job.name)
    for hf_name, a, b in pairs:
        name = names.get_name(hf_name + ".weight", try_suffixes=(".weight",))
        if name is None:
            raise LmtuneError(f"GGUF export: the adapter's {hf_name} has no llama.cpp name; export the merged model (drop --adapter-only)")
        b = gguf_arch.reorder(hf_name + ".weight", b, job.config, family)
        for suffix, array in ((".lora_a", a), (".lora_b", b)):
            data, kind = gguf_arch.encode(name + suffix, array, quant)
            writer.add_tensor(name + suffix, data, raw_dtype=kind)
    _finish(writer)


def lora_pairs(peft_model, adapter: str) -> list[tuple[str, "object", "object"]]:
    """(module name, A, scaled B) as float32 arrays for every LoRA layer; what llama.cpp cannot
    apply (DoRA's magnitudes, fully trained modules, embedding LoRA) is refused by name."""
    from peft.tuners.lora import LoraLayer

    config = next(iter(peft_model.peft_config.values()))
    if getattr(config, "use_dora", False) or getattr(config, "modules_to_save", None):
        what = "DoRA magnitudes" if getattr(config, "use_dora", False) else f"fully trained {', '.join(config.modules_to_save)}"
        raise LmtuneError(f"{adapter}: llama.cpp's --lora cannot apply {what}; export the merged model instead (drop --adapter-only)")
    pairs = []
    for module_name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or not module.lora_A:
            continue
        if module.lora_embedding_A:
            raise LmtuneError(f"{adapter}: llama.cpp's --lora cannot apply an embedding LoRA ({module_name}); export the merged model")
        key = next(iter(module.lora_A))
        a = module.lora_A[key].weight.detach().float().numpy()
        b = module.lora_B[key].weight.detach().float().numpy() * module.scaling[key]
        pairs.append((module_name.removeprefix(ADAPTER_PREFIX), a, b))
    if not pairs:
        raise LmtuneError(f"{adapter}: no LoRA layers to write (a prompt-learning adapter has no weights for llama.cpp)")
    return pairs


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
