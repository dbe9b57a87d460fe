"""`lmtune serve` with and without a JSON schema (response_format json_schema, constrained decoding by
llguidance): generated tokens/s at 1 (one by one) and 32 concurrent clients.

    .venv/bin/python benchmarks/bench_structured.py [--hidden 256] [--layers 4] [--requests 32] [--new 64] [--tokenizer DIR]

A random Llama behind a live server on 127.0.0.1 (bench_serve.py's set-up); the clients (openai,
in a process of their own) send chat requests of at most --new tokens: free ones with ignore_eos,
constrained ones under a schema (at least 40 short strings) that cannot be finished in --new
tokens, so both write exactly --new tokens; tokens are counted from usage. --tokenizer
DIR: a real tokenizer's vocabulary (e.g. shared/reference/tokenizers/qwen2.5, 151,665 tokens), where
the per-token mask costs most; default: a 2,000-token BPE trained on the prompts.
Results go in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import tempfile
import time
from pathlib import Path

import openai
from bench_generate import questions
from bench_serve import serve
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

from lmtune.config import ServeConfig
from lmtune.tiny import build_model, train_tokenizer

SCHEMA = {"type": "object", "properties": {"words": {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 40}},
          "required": ["words"], "additionalProperties": False}


async def load(url: str, model: str, prompts: list[str], concurrency: int, new: int, constrained: bool) -> dict:
    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    todo, tokens = list(prompts), []
    fields = ({"response_format": {"type": "json_schema", "json_schema": {"name": "words", "schema": SCHEMA}}} if constrained
              else {"extra_body": {"ignore_eos": True}})

    async def one_client():
        while todo:
            answer = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": todo.pop()}],
                                                          max_tokens=new, temperature=0, **fields)
            tokens.append(answer.usage.completion_tokens)

    start = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    await client.close()
    return {"seconds": seconds, "requests": len(prompts), "tokens": sum(tokens)}


def load_elsewhere(*args) -> dict:
    return asyncio.run(load(*args))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--new", type=int, default=64, help="most tokens per answer")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--tokenizer", type=Path, help="a local tokenizer folder (default: a 2,000-token BPE)")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    prompts = [c.turns[0].content for c in questions(args.requests)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        if args.tokenizer:
            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
            tokenizer.save_pretrained(folder)
        else:
            tokenizer = train_tokenizer(prompts, folder, vocab_size=2000, special=["<|im_start|>", "<|im_end|>"])
        build_model(tokenizer, folder, hidden_size=args.hidden, layers=args.layers, heads=max(2, args.hidden // 64))
        serving = serve(ServeConfig(model=str(folder), template="qwen2.5", port=args.port, max_batch=32))
        url, model = f"http://127.0.0.1:{args.port}/v1", serving.models[0]
        clients = multiprocessing.get_context("spawn").Pool(1)
        run = lambda *a: clients.apply(load_elsewhere, a)  # noqa: E731
        for constrained in (False, True):
            run(url, model, prompts[:4], 4, args.new, constrained)  # warm-up (and the schema's one compile)
        results = {(c, k): run(url, model, (prompts * c)[: max(args.requests, c)], c, args.new, k) for c in (1, 32) for k in (False, True)}
        clients.terminate()
    print(f"CPU; vocabulary {len(tokenizer)}, hidden {args.hidden}, {args.layers} layers, at most {args.new} tokens per answer, max batch 32")
    print("| concurrency | answer | requests | tokens | tokens/s | vs free |")
    print("|---|---|---|---|---|---|")
    for (concurrency, constrained), r in results.items():
        rate, free = r["tokens"] / r["seconds"], results[(concurrency, False)]
        ratio = rate / (free["tokens"] / free["seconds"])
        print(f"| {concurrency} | {'JSON schema' if constrained else 'free'} | {r['requests']} | {r['tokens']} | {rate:.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
