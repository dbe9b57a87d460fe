"""Per-token cost of constrained decoding on CPU: xgrammar, llguidance and outlines-core, one JSON
schema, one row, walking a valid document token by token: compute the allowed-token mask, apply it to
a logits row, accept the token. Also each engine's compile time per schema (its
tokenizer set-up, paid once per tokenizer, not counted).

    .venv/bin/python benchmarks/bench_grammar_engines.py [--tokenizer DIR]...

Tokenizers: a 2,000-token byte-level BPE trained on the spot (the size of the test models) and the
local copies of real ones (default: Qwen2.5's 151,665 tokens, from shared/reference/tokenizers).
Results go in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}, "required": ["city", "zip"]},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "tags", "address", "active"],
    "additionalProperties": False,
}
DOCUMENT = {"name": "Ada Lovelace of London", "age": 36, "tags": ["math", "engine", "poetry", "notes"],
            "address": {"city": "London", "zip": "W1"}, "active": True}
TEXT = json.dumps(DOCUMENT)  # ", " and ": ", as the engines write JSON without free whitespace
DEFAULT_TOKENIZERS = [Path(__file__).parents[1] / "../shared/reference/tokenizers/qwen2.5"]


def walk(step, ids: list[int]) -> list[float]:
    """Seconds per token of step(token) over the document's tokens."""
    times = []
    for token in ids:
        start = time.perf_counter()
        step(token)
        times.append(time.perf_counter() - start)
    return times


def bench_xgrammar(tokenizer, ids: list[int], vocab: int) -> tuple[float, list[float]]:
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab, stop_token_ids=[tokenizer.eos_token_id])
    start = time.perf_counter()  # per schema; the tokenizer's part is paid once
    compiled = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False).compile_json_schema(json.dumps(SCHEMA), any_whitespace=False)
    compile_s = time.perf_counter() - start
    matcher, bitmask, logits = xgr.GrammarMatcher(compiled), xgr.allocate_token_bitmask(1, vocab), torch.zeros(1, vocab)

    def step(token):
        matcher.fill_next_token_bitmask(bitmask)
        xgr.apply_token_bitmask_inplace(logits, bitmask)
        assert matcher.accept_token(token), token

    return compile_s, walk(step, ids)


def bench_llguidance(tokenizer, ids: list[int], vocab: int) -> tuple[float, list[float]]:
    import llguidance
    import llguidance.hf
    import llguidance.torch

    lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
    start = time.perf_counter()  # per schema; the tokenizer's part is paid once
    grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA, defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "})
    matcher = llguidance.LLMatcher(lltok, grammar)
    compile_s = time.perf_counter() - start
    bitmask, logits = llguidance.torch.allocate_token_bitmask(1, vocab), torch.zeros(1, vocab)

    def step(token):
        llguidance.torch.fill_next_token_bitmask(matcher, bitmask, 0)
        llguidance.torch.apply_token_bitmask_inplace(logits, bitmask)
        assert matcher.consume_token(token), matcher.get_error()

    return compile_s, walk(step, ids)


def token_bytes(tokenizer) -> dict[bytes, list[int]]:
    """Each token's bytes (byte-level BPE's printable stand-ins decoded back), as outlines-core takes them."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    back = {c: b for b, c in bytes_to_unicode().items()}
    out: dict[bytes, list[int]] = {}
    special = set(tokenizer.all_special_ids)
    for token, index in tokenizer.get_vocab().items():
        if index not in special and all(c in back for c in token):
            out.setdefault(bytes(back[c] for c in token), []).append(index)
    return out


def bench_outlines(tokenizer, ids: list[int], vocab: int) -> tuple[float, list[float]]:
    import outlines_core

    vocabulary = outlines_core.Vocabulary(tokenizer.eos_token_id, token_bytes(tokenizer))
    start = time.perf_counter()  # per schema; the tokenizer's part is paid once
    regex = outlines_core.json_schema.build_regex_from_schema(json.dumps(SCHEMA))
    guide = outlines_core.Guide(outlines_core.Index(regex, vocabulary))
    compile_s = time.perf_counter() - start
    mask, logits = torch.zeros(1, (vocab + 31) // 32, dtype=torch.int32), torch.zeros(1, vocab)

    def step(token):
        guide.write_mask_into(mask.data_ptr(), mask.numel(), mask.element_size())
        bits = (mask[0, :, None] >> torch.arange(32, dtype=torch.int32)) & 1  # the same unpacking the others do in C
        logits.masked_fill_(bits.flatten()[:vocab][None] == 0, float("-inf"))
        guide.advance(token)

    return compile_s, walk(step, ids)


ENGINES = {"xgrammar": bench_xgrammar, "llguidance": bench_llguidance, "outlines-core": bench_outlines}


def tiny_tokenizer(folder: Path):
    from lmtune.tiny import train_tokenizer

    return train_tokenizer([TEXT, json.dumps(SCHEMA)] * 20 + [chr(c) * 3 for c in range(32, 127)], folder, vocab_size=2000, bos=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", action="append", type=Path, help="a local tokenizer folder (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizers = [("tiny byte-level BPE", tiny_tokenizer(Path(tmp)))]
        tokenizers += [(folder.resolve().name, AutoTokenizer.from_pretrained(folder)) for folder in args.tokenizer or DEFAULT_TOKENIZERS]
        print("| tokenizer | vocab | engine | schema compile | mask per token, median | p95 | tokens |")
        print("|---|---|---|---|---|---|---|")
        for name, tokenizer in tokenizers:
            vocab, ids = len(tokenizer), tokenizer.encode(TEXT, add_special_tokens=False)
            for engine, bench in ENGINES.items():
                bench(tokenizer, ids, vocab)  # warm-up: caches, lazy imports
                compile_s, times = bench(tokenizer, ids, vocab)
                p95 = sorted(times)[int(0.95 * (len(times) - 1))]
                print(f"| {name} | {vocab} | {engine} | {compile_s * 1000:.0f} ms | {statistics.median(times) * 1e6:.0f} µs | "
                      f"{p95 * 1e6:.0f} µs | {len(ids)} |")


if __name__ == "__main__":
    main()
