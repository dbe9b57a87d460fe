"""Batch prediction throughput: tokens/s with batch sizes 1, 8 and 32, and the share of padding.

    .venv/bin/python benchmarks/bench_generate.py [--hidden 256] [--layers 4] [--records 64] [--new 64]
    .venv-vllm/bin/python benchmarks/bench_generate.py --backend hf,vllm

--backend: the engines behind `lmtune generate`, one after the other on the same model and prompts
(hf: transformers' generate; vllm: `generate --backend vllm`, which hands each batch to vLLM at once).

A random Llama answers synthetic alpaca questions of varied length through the engine behind
`lmtune generate` (length-sorted batches, left padding). Greedy decoding with EOS switched off,
so every answer is exactly --new tokens and the figures compare like with like. Padding share:
the prompt positions that are padding, over all prompt positions. Results go in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from lmtune.config import GenerateConfig
from lmtune.data.records import USER, Conversation, Turn
from lmtune.infer.engine import Engine
from lmtune.model.load import load_model, load_tokenizer
from lmtune.templates.template import get_template
from lmtune.tiny import build_model, train_tokenizer

WORDS = "the model learns to answer questions about data training tokens language city water time".split()


def questions(n: int, seed: int = 0) -> list[Conversation]:
    rng = random.Random(seed)
    return [Conversation([Turn(USER, " ".join(rng.choices(WORDS, k=int(rng.lognormvariate(3.0, 0.8)) + 3)))]) for _ in range(n)]


def run(engine: Engine, convs: list[Conversation], batch_size: int) -> dict:
    order = sorted(convs, key=lambda c: len(engine.encoder.prompt_ids(c)), reverse=True)  # as generate_file does
    real = slots = produced = 0
    start = time.perf_counter()
    for i in range(0, len(order), batch_size):
        batch = order[i : i + batch_size]
        lengths = [len(engine.encoder.prompt_ids(c)) for c in batch]
        real, slots = real + sum(lengths), slots + max(lengths) * len(lengths)
        produced += sum(r.new_tokens for r in engine.generate(batch))
    seconds = time.perf_counter() - start
    return {"tokens/s": produced / seconds, "seconds": seconds, "padding": 1 - real / slots}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--new", type=int, default=64, help="tokens generated per answer")
    parser.add_argument("--backend", default="hf", help="engines, comma-separated: hf, vllm")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()  # EOS is switched off on purpose; no need to warn 64 times
    convs = questions(args.records)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tokenizer = train_tokenizer([c.turns[0].content for c in convs], folder, vocab_size=2000)
        build_model(tokenizer, folder, hidden_size=args.hidden, layers=args.layers, heads=max(2, args.hidden // 64))
        settings = GenerateConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=args.new)
        results = {}
        for backend in args.backend.split(","):
            engine = hf_engine(folder, settings) if backend == "hf" else vllm_engine(folder, settings)
            run(engine, convs[:4], 4)  # warm-up
            results[backend] = {size: run(engine, convs, size) for size in (1, 8, 32)}
            if backend == "vllm":
                engine.runner.shutdown()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"device {device}; hidden {args.hidden}, {args.layers} layers, {args.records} prompts, {args.new} new tokens each")
    for backend, sizes in results.items():
        for size, r in sizes.items():
            print(f"{backend:>4} batch {size:>2}: {r['tokens/s']:8.0f} generated tokens/s  {r['seconds']:6.1f} s  prompt padding {r['padding']:5.1%}")


def hf_engine(folder: Path, settings: GenerateConfig) -> Engine:
    model = load_model(str(folder), "auto").to("cuda" if torch.cuda.is_available() else "cpu")
    engine = Engine(model, load_tokenizer(str(folder)), get_template("alpaca"), settings)
    engine.stop_ids, engine.stops = [-1], ()  # a random model may stop at any time; make every answer full length
    return engine


def vllm_engine(folder: Path, settings: GenerateConfig):
    """`generate --backend vllm`'s engine, every answer full length (ignore_eos)."""
    from dataclasses import replace

    from lmtune.serve.vllm import VllmEngine, load_vllm_engine

    engine = load_vllm_engine(str(folder), None, "alpaca", settings=settings)
    engine._sampling = lambda: replace(VllmEngine._sampling(engine), ignore_eos=True)
    engine.stops = ()
    return engine


if __name__ == "__main__":
    main()
