"""Options that several commands share, declared once: the model to load and how it samples."""

from __future__ import annotations

import functools
import inspect
from typing import List, Optional

import typer

MODEL = typer.Option(None, "--model", help="Base model folder or hub id ORG/NAME (default: the one the adapter was trained on).")
ADAPTER = typer.Option(None, "--adapter", help="Adapter folder written by `lmtune train`.")
TEMPLATE = typer.Option(None, "--template", help="Prompt template (default: the one used in training).")
QUANTIZE = typer.Option(None, "--quantize", help="Load the base in 4 or 8 bits (bitsandbytes; CUDA GPU only).")
BACKEND = typer.Option("hf", "--backend", help="hf (transformers) or vllm: generation on vLLM (installed by make vllm).")
KB_K = typer.Option(None, "--kb-k", help="Passages per answer (default: the knowledge base's top_k, 3).")
KB_THRESHOLD = typer.Option(None, "--kb-threshold", help="Use only passages at least this similar to the question (cosine, -1 to 1).")
ON_NO_HIT = typer.Option(None, "--on-no-hit", help="No passage passes the threshold: answer (without them, saying so) or refuse.")

# generate settings that every model command takes as flags: (type, flag, help)
SAMPLING = {
    "max_new_tokens": (int, "--max-new-tokens", "Most tokens per answer."),
    "temperature": (float, "--temperature", "0 = greedy decoding."),
    "top_p": (float, "--top-p", "Nucleus sampling mass."),
    "top_k": (int, "--top-k", "Sample among the k most likely tokens (0 = no limit)."),
    "repetition_penalty": (float, "--repetition-penalty", "1.0 = no penalty."),
    "no_repeat_ngram_size": (int, "--no-repeat-ngram-size", "Never repeat an n-gram of this many tokens."),
    "seed": (int, "--seed", "Seed for sampling, to reproduce an answer."),
    "stop": (List[str], "--stop", "Extra stop string (repeatable)."),
    "batch_size": (int, "--batch-size", "Records per batch."),
}


def sampling_options(command):
    """Adds the SAMPLING flags to a command; it receives the ones given as `sampling={name: value}`."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        given = {name: kwargs.pop(name) for name in SAMPLING}
        return command(*args, sampling={k: v for k, v in given.items() if v not in (None, [])}, **kwargs)

    own = [p for p in inspect.signature(command).parameters.values() if p.name != "sampling"]
    flags = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=typer.Option(None, flag, help=text), annotation=Optional[kind])
        for name, (kind, flag, text) in SAMPLING.items()
    ]
    wrapper.__signature__ = inspect.Signature(own + flags)
    return wrapper
