"""What llama.cpp needs to know of a Hugging Face model: which of its architectures runs it, the
hyper-parameters it reads (`<arch>.block_count`, `<arch>.attention.head_count` …), and each weight
under its GGUF name, in the layout its kernels expect.

Names come from the `gguf` package's own tensor map (the table llama.cpp's converter uses), so a
new family is a line in FAMILIES, not a list of names. The one change of layout: llama.cpp applies
rotary embeddings to Llama-family queries and keys pairwise (interleaved), transformers to their
two halves, so q_proj and k_proj rows are reordered into interleaved order (`permute`); Qwen2 and
Qwen3 run in llama.cpp's NEOX mode, which is transformers' order, and keep theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmtune.errors import LmtuneError

QUANTS = ("f32", "f16", "bf16", "q8_0")  # what the gguf package writes without llama.cpp
# Types only llama.cpp's compiled llama-quantize writes (k-quants and the i-quants use importance data).
LLAMA_QUANTIZE_ONLY = ("q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m",
                       "q5_k_s", "q5_k_m", "q6_k", "iq2_xxs", "iq2_xs", "iq3_xxs", "iq4_nl", "iq4_xs")


@dataclass(frozen=True)
class Family:
    arch: str  # gguf.MODEL_ARCH member name
    permute_qk: bool  # interleave q/k rows for llama.cpp's normal (non-NEOX) RoPE


FAMILIES = {
    "LlamaForCausalLM": Family("LLAMA", True),  # Llama 1-3, Yi, SmolLM2, TinyLlama, Chinese-LLaMA
    "MistralForCausalLM": Family("LLAMA", True),  # llama.cpp runs Mistral as llama (its converter does the same)
    "Qwen2ForCausalLM": Family("QWEN2", False),  # Qwen1.5, Qwen2, Qwen2.5
    "Qwen3ForCausalLM": Family("QWEN3", False),
}


def check_quant(quant: str) -> str:
    """The quant type, or one line that says what works (and how to get a k-quant)."""
    quant = quant.lower()
    if quant in QUANTS:
        return quant
    if quant in LLAMA_QUANTIZE_ONLY:
        raise LmtuneError(
            f"--quant {quant}: writing {quant.upper()} needs llama.cpp's compiled llama-quantize; export --quant f16 "
            f"(or f32, bf16, q8_0 here), then run: llama-quantize OUT/MODEL-f16.gguf OUT/MODEL-{quant}.gguf {quant.upper()}"
        )
    raise LmtuneError(f"--quant {quant}: choose one of {', '.join(QUANTS)} (others via llama.cpp's llama-quantize on the f16 file)")


def family_of(config) -> Family:
    """The family llama.cpp runs this model as, or one line naming the architectures that export."""
    archs = getattr(config, "architectures", None) or []
    family = next((FAMILIES[a] for a in archs if a in FAMILIES), None)
    if family is None:
        name = ", ".join(archs) or getattr(config, "model_type", "unknown")
        raise LmtuneError(f"GGUF export of {name} is not supported; it exports {', '.join(FAMILIES)} "
                          "(or export safetensors without --format gguf)")
    rope = _rope(config)
    if rope.get("rope_type", "default") not in ("default", "linear"):
        raise LmtuneError(f"GGUF export: rope_type {rope['rope_type']!r} is not written yet (default and linear are); "
                          "export safetensors without --format gguf")
    return family


def _rope(config) -> dict:
    # transformers 5 keeps RoPE in rope_parameters; older configs in rope_theta and rope_scaling
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return params


def write_hparams(writer, config) -> None:
    """The hyper-parameters llama.cpp reads for the Llama, Qwen2 and Qwen3 graphs."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = _rope(config)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    if rope.get("rope_type") == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))


def gguf_tensors(state: dict, config, family: Family):
    """(GGUF name, float32 array) for each weight of a merged model's state dict, in llama.cpp's layout."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[family.arch], config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in state.items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reads the output projection from token_embd when output.weight is absent
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise LmtuneError(f"GGUF export: weight {hf_name} has no llama.cpp name in {family.arch.lower()}; "
                              "export safetensors without --format gguf")
        yield name, reorder(hf_name, tensor.float().numpy(), config, family)


def reorder(hf_name: str, rows: np.ndarray, config, family: Family) -> np.ndarray:
    """q_proj and k_proj rows (weights, biases, or a LoRA B) in llama.cpp's interleaved RoPE order."""
    if not family.permute_qk:
        return rows
    heads = config.num_attention_heads
    if ".q_proj." in hf_name:
        return permute(rows, heads)
    if ".k_proj." in hf_name:
        return permute(rows, getattr(config, "num_key_value_heads", None) or heads)
    return rows


def permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """Per head, transformers' (first half, second half) rotary pairs become adjacent rows."""
    half = rows.shape[0] // heads // 2
    return rows.reshape(heads, 2, half, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def encode(name: str, array: np.ndarray, quant: str):
    """(data, raw ggml type) for the writer: 1-D tensors (norms, biases) stay f32, as llama.cpp
    wants; a matrix whose rows do not split into q8_0's 32-value blocks goes f16."""
    import gguf
    from gguf.quants import quantize

    types = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
    kind = types[quant] if array.ndim > 1 else types["f32"]
    if kind == types["q8_0"] and array.shape[-1] % gguf.GGML_QUANT_SIZES[kind][0]:
        kind = types["f16"]
    return quantize(np.ascontiguousarray(array, dtype=np.float32), kind), kind


def file_type(quant: str):
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]
