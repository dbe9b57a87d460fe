"""`lmtune serve` throughput and latency at 1 (one by one, the baseline), 8, 32 and 64 concurrent
clients: requests/s, generated tokens/s, time to first token and whole-answer latency (p50, p95).

    .venv/bin/python benchmarks/bench_serve.py [--hidden 256] [--layers 4] [--requests 64] [--new 64]

A random Llama (as in bench_generate.py) behind a live server on 127.0.0.1; each client sends
chat requests one after another through the official openai client (streamed, ignore_eos so that
every answer is exactly --new tokens); each level sends max(--requests, concurrency) requests.
The clients run in a process of their own, as real clients would (--same-process: in the server's
process and GIL, as in the first measurements). Results go in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
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


async def load(url: str, model: str, prompts: list[str], concurrency: int, new: int) -> dict:
    """Seconds for all prompts, and each request's time to first token and latency."""
    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    todo, first, whole = list(prompts), [], []

    async def one_client():
        while todo:
            sent = time.perf_counter()
            stream = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": todo.pop()}], max_tokens=new, temperature=0,
                stream=True, extra_body={"ignore_eos": True})
            seen = None
            async for chunk in stream:
                if seen is None and chunk.choices and chunk.choices[0].delta.content:
                    seen = time.perf_counter()
            done = time.perf_counter()
            first.append((seen or done) - sent)
            whole.append(done - sent)

    start = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    await client.close()
    return {"seconds": seconds, "requests": len(prompts), "ttft": first, "latency": whole}


def load_elsewhere(*args) -> dict:
    return asyncio.run(load(*args))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--new", type=int, default=64, help="tokens generated per answer")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--same-process", action="store_true", help="clients in the server's process")
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
        clients = multiprocessing.get_context("spawn").Pool(1)
        run = load_elsewhere if args.same_process else lambda *a: clients.apply(load_elsewhere, a)
        run(url, model, prompts[:4], 4, args.new)  # warm-up
        results = {c: run(url, model, (prompts * c)[: max(args.requests, c)], c, args.new) for c in (1, 8, 32, 64)}
        clients.terminate()
    where = "in the server's process" if args.same_process else "in a process of their own"
    print(f"CPU; hidden {args.hidden}, {args.layers} layers, {args.new} new tokens per answer, max batch 32, clients {where}")
    print("| concurrency | requests | requests/s | tokens/s | TTFT p50 | TTFT p95 | latency p50 | latency p95 |")
    print("|---|---|---|---|---|---|---|---|")
    rate = {}
    for concurrency, r in results.items():
        rate[concurrency] = r["requests"] * args.new / r["seconds"]
        name = "1 (one by one)" if concurrency == 1 else str(concurrency)
        print(f"| {name} | {r['requests']} | {r['requests'] / r['seconds']:.2f} | {rate[concurrency]:.0f} | "
              + " | ".join(f"{percentile(r[k], q):.2f} s" for k in ("ttft", "latency") for q in (0.5, 0.95)) + " |")
    print(f"tokens/s at 32 concurrent / one by one: {rate[32] / rate[1]:.1f}x")


if __name__ == "__main__":
    main()
