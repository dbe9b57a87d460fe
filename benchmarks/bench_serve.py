"""`lmtune serve` throughput: requests/s and generated tokens/s at 1, 8 and 32 concurrent clients.

    .venv/bin/python benchmarks/bench_serve.py [--hidden 256] [--layers 4] [--requests 64] [--new 64]

A random Llama (as in bench_generate.py) behind a live server on 127.0.0.1; each client sends
chat requests one after another through the official openai client (streamed, ignore_eos so that
every answer is exactly --new tokens). The same work with the engine's batched generate (what
`lmtune generate` does, batch 32) is printed as the yardstick. Results go in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from pathlib import Path

import openai
import uvicorn
from bench_generate import questions
from transformers.utils import logging as hf_logging

from lmtune.config import ServeConfig
from lmtune.serve.app import Serving, create_app
from lmtune.serve.server import served_models, start_backend
from lmtune.tiny import build_model, train_tokenizer


def serve(config: ServeConfig) -> Serving:
    serving = Serving(list(served_models(config)), None)
    server = uvicorn.Server(uvicorn.Config(create_app(serving), host="127.0.0.1", port=config.port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    serving.backend = start_backend(config)
    return serving


async def load(url: str, model: str, prompts: list[str], concurrency: int, new: int) -> float:
    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    todo = list(prompts)

    async def one_client():
        while todo:
            stream = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": todo.pop()}], max_tokens=new, temperature=0,
                stream=True, extra_body={"ignore_eos": True})
            async for _ in stream:
                pass

    start = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--new", type=int, default=64, help="tokens generated per answer")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    prompts = [c.turns[0].content for c in questions(args.requests)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        tokenizer = train_tokenizer(prompts, folder, vocab_size=2000)
        build_model(tokenizer, folder, hidden_size=args.hidden, layers=args.layers, heads=max(2, args.hidden // 64))
        config = ServeConfig(model=str(folder), template="alpaca", port=args.port, max_batch=32)
        serving = serve(config)
        url, model = f"http://127.0.0.1:{args.port}/v1", serving.models[0]
        asyncio.run(load(url, model, prompts[:4], 4, args.new))  # warm-up
        results = {c: asyncio.run(load(url, model, prompts, c, args.new)) for c in (1, 8, 32)}
    print(f"CPU; hidden {args.hidden}, {args.layers} layers, {args.requests} requests, {args.new} new tokens each")
    for concurrency, seconds in results.items():
        print(f"concurrency {concurrency:>2}: {args.requests / seconds:6.2f} requests/s  {args.requests * args.new / seconds:7.0f} tokens/s  {seconds:6.1f} s")


if __name__ == "__main__":
    main()
