"""Tiny models built on the spot: a byte-level BPE tokenizer trained on local text and a randomly
initialised model from a config, saved as ordinary Hugging Face folders. The demo and the tests
use them because nothing can be downloaded; lmtune treats them like any other local model."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

BOS, EOS = "<s>", "</s>"


def train_tokenizer(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int = 2000, bos: bool = True, special: Iterable[str] = ()
):
    """Byte-level BPE (so Chinese never hits an unknown token). With bos=True it prepends BOS like
    Llama's tokenizer; with bos=False it behaves like GPT-2/Qwen. `special` adds special tokens such
    as a chat template's markers. It has no pad token on purpose: most base models ship without one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, *special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    if bos:
        core.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, core.token_to_id(BOS))]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, additional_special_tokens=list(special)
    )
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_model(
    tokenizer,
    out_dir: str | Path,
    arch: str = "llama",
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    intermediate_size: int | None = None,
    kv_heads: int | None = None,
):
    """A randomly initialised causal LM of the given family, saved with its tokenizer. Llama's MLP
    width defaults to twice the hidden size, its key/value heads to `heads` (no grouped-query attention)."""
    import torch
    from transformers import AutoModelForCausalLM, BloomConfig, LlamaConfig

    special = dict(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    if arch == "llama":
        config = LlamaConfig(
            hidden_size=hidden_size,
            intermediate_size=intermediate_size or hidden_size * 2,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads or heads,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            **special,
        )
    elif arch == "bloom":
        # Bloom normalises its embeddings (word_embeddings_layernorm) to unit scale; blocks drawn at Bloom's
        # default std of 0.02 would add ~0.005 to that, so a random Bloom predicts each token from itself alone,
        # and context, real or learned (ptuning, prefix, prompt), barely reaches the loss (gradients ~100x
        # smaller than a tiny Llama's). At 1/sqrt(width) its blocks write as much as they read, as trained ones do.
        config = BloomConfig(
            hidden_size=hidden_size, n_layer=layers, n_head=heads, initializer_range=hidden_size**-0.5, **special
        )
    else:
        raise ValueError(f"unknown tiny architecture '{arch}'")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model
