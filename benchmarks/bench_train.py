"""LoRA training throughput with and without packing, on a random Llama and long-tailed data.

    .venv/bin/python benchmarks/bench_train.py [--hidden 256] [--layers 4] [--steps 30] [--records 2000] [--sigma 0.9]

Trains the same synthetic instruction data twice through `lmtune train` (padded batches, then
data.packing: true) and prints non-padding tokens/s, samples/s and peak memory (RSS on CPU,
torch.cuda.max_memory_allocated on GPU). Results go in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

import torch

from lmtune.config import validate_config
from lmtune.tiny import build_model, train_tokenizer
from lmtune.train.run import train

WORDS = "the model learns to answer questions about data training tokens language city water time".split()


def records(n: int, seed: int = 0, sigma: float = 0.9) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        answer = int(rng.lognormvariate(3.2, sigma)) + 2  # long-tailed: most short, a few very long
        out.append({"instruction": " ".join(rng.choices(WORDS, k=rng.randint(5, 25))), "output": " ".join(rng.choices(WORDS, k=answer))})
    return out


def run(folder: Path, model_dir: Path, data: Path, packing: bool, steps: int, batch: int, cutoff: int) -> dict:
    config = validate_config(
        {
            "model": {"path": str(model_dir)},
            "data": {"path": str(data), "template": "alpaca", "cutoff_len": cutoff, "packing": packing, "cache": False},
            "finetune": {"method": "lora"},
            "train": {"output_dir": str(folder / ("packed" if packing else "padded")), "max_steps": steps,
                      "per_device_train_batch_size": batch, "logging_steps": 1, "seed": 0},
        }
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows[2:] if "tokens_per_second" in r]  # skip warm-up steps
    speeds = [r["tokens_per_second"] for r in steps]
    padding = sum(r["padding_share"] for r in steps) / len(steps)
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tokens/s": sum(speeds) / len(speeds), "padding": padding, "seconds": seconds, "peak MiB": peak}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--cutoff", type=int, default=512)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--sigma", type=float, default=0.9, help="spread of the answer lengths (lognormal)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = folder / "data.jsonl"
        rows = records(args.records, sigma=args.sigma)
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        tokenizer = train_tokenizer([r["instruction"] + " " + r["output"] for r in rows[:500]], folder / "model", vocab_size=2000)
        build_model(tokenizer, folder / "model", hidden_size=args.hidden, layers=args.layers, heads=max(2, args.hidden // 64))
        padded = run(folder, folder / "model", data, False, args.steps, args.batch, args.cutoff)
        packed = run(folder, folder / "model", data, True, args.steps, args.batch, args.cutoff)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"device {device}; hidden {args.hidden}, {args.layers} layers, batch {args.batch}, cutoff {args.cutoff}, "
          f"{args.steps} steps, answer-length sigma {args.sigma}")
    for name, r in (("padded", padded), ("packed", packed)):
        print(f"{name:>7}: {r['tokens/s']:10.0f} non-padding tokens/s  padding {r['padding']:5.1%}  {r['seconds']:6.1f} s  peak {r['peak MiB']:7.0f} MiB")
    # Removing padding can at best turn the padded positions into real ones.
    bound = (1 - packed["padding"]) / (1 - padded["padding"])
    print(f"packing speed-up: {packed['tokens/s'] / padded['tokens/s']:.2f}x (padding removed alone would give {bound:.2f}x)")


if __name__ == "__main__":
    main()
