"""Training speed: one LoRA SFT job through lmtune (its defaults, then each lever) and, with --peer,
through LLaMA-Factory, each as a whole process timed from start to exit.

    .venv/bin/python benchmarks/bench_train.py [--sigma 0.9] [--cutoff 512] [--records 2000]
        [--levers default,no-packing,...] [--peer /tmp/lf-venv/bin/llamafactory-cli] [--profile]
        [--model SmolLM2-135M-Instruct.Q4_1.gguf --peer-template smollm2]

The job (issue 15): one epoch of LoRA SFT on every linear layer (r 8, alpha 16, lr 1e-3, batch 8)
over --records long-tailed synthetic alpaca samples, on a random Llama (hidden 256, intermediate
688, 4 layers, 8 heads / 4 key-value heads) with a tokenizer trained on the data. Every run writes
a fresh output folder, with no data cache to reuse. Per run: whole-process seconds, samples/s,
non-padding tokens/s over the whole process, peak RSS of the process (os.wait4), the training
loss averaged over the epoch, and the dev loss after it: the same `lmtune eval` over 200 held-out
records for every run, LLaMA-Factory's adapter included, so that runs with different numbers of
steps (packing) are compared on what they learned from the same samples.

--profile runs torch.profiler over steps 3-10 of the default job in this process and prints where
the CPU time went (self time of each operator, grouped). Results go in benchmarks/RESULTS.md.

--model runs the same comparison on a real model (issue 23): a Hugging Face folder or a .gguf file
(dequantized once by lmtune; both tools then read that folder), with its own chat template
(lmtune `template: auto`, LLaMA-Factory --peer-template), over real instruction data instead of
the synthetic records: LLaMA-Factory's alpaca_en_demo and alpaca_zh_demo from
../shared/reference/llamafactory-data (60 + 60 records, interleaved; the last --dev of them held out, the first --records of the rest trained on).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from lmtune.config import apply_override

WORDS = "the model learns to answer questions about data training tokens language city water time".split()
LMTUNE = str(Path(sys.executable).parent / "lmtune")

# What each lever changes in the lmtune config of the default job (section.key: value).
LEVERS = {
    "default": {},
    "packing": {"data.packing": True},
    "group-by-length": {"train.train_sampling_strategy": "group_by_length"},
    "random-order": {"train.train_sampling_strategy": "random"},
    "lora-dropout-0": {"finetune.lora.dropout": 0.0},
    "lora-dropout-0.05": {"finetune.lora.dropout": 0.05},
    "checkpointing": {"train.gradient_checkpointing": True},
    "bf16-autocast": {"train.bf16": True},
    "checkpointing+bf16": {"train.gradient_checkpointing": True, "train.bf16": True},
    "compile": {"train.torch_compile": True},
    # LLaMA-Factory's schedule: linear decay, no warm-up (lmtune's default is cosine after 3% warm-up,
    # which in a job of a few steps is one step at learning rate 0)
    "peer-schedule": {"train.lr_scheduler_type": "linear", "train.warmup_ratio": 0.0},
}
# LLaMA-Factory as it comes, and without the gradient checkpointing it turns on by default.
PEERS = {"LLaMA-Factory": {}, "LLaMA-Factory, no checkpointing": {"disable_gradient_checkpointing": True}}


def records(n: int, seed: int = 0, sigma: float = 0.9) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        answer = int(rng.lognormvariate(3.2, sigma)) + 2  # long-tailed: most short, a few very long
        out.append({"instruction": " ".join(rng.choices(WORDS, k=rng.randint(5, 25))), "input": "", "output": " ".join(rng.choices(WORDS, k=answer))})
    return out


def make_job(work: Path, n: int, sigma: float, hidden: int = 256, layers: int = 4) -> tuple[Path, Path, Path, int]:
    """Training data, held-out dev data, the model folder, and the non-padding tokens of the epoch."""
    from lmtune.model.load import load_tokenizer
    from lmtune.templates.template import get_template
    from lmtune.tiny import build_model, train_tokenizer

    rows, dev = records(n, 0, sigma), records(200, 1, sigma)
    data, dev_file, model = work / "train.jsonl", work / "dev.jsonl", work / "model"
    for path, part in ((data, rows), (dev_file, dev)):
        path.write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    tokenizer = train_tokenizer([r["instruction"] + " " + r["output"] for r in rows[:500]], model, vocab_size=2000)
    # The shape at 256 wide (intermediate 688, 8 heads of 32, 4 KV heads), scaled with --hidden
    heads = max(2, hidden // 32)
    build_model(tokenizer, model, hidden_size=hidden, layers=layers, heads=heads, kv_heads=max(1, heads // 2),
                intermediate_size=hidden * 688 // 256)
    from lmtune.data.encode import Encoder
    from lmtune.data.records import ASSISTANT, USER, Conversation, Turn

    encoder = Encoder(load_tokenizer(str(model)), get_template("alpaca"), CUTOFF, "all_assistant")
    tokens = sum(len(encoder.encode(Conversation([Turn(USER, r["instruction"]), Turn(ASSISTANT, r["output"])])).input_ids) for r in rows)
    return data, dev_file, model, tokens


def timed(command: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system: what moves less when the machine is shared) and
    peak RSS (MiB) of one process, its output kept in cwd/log.txt."""
    start = time.perf_counter()
    with open(cwd / "log.txt", "w") as log:
        process = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if status:
        sys.exit(f"{' '.join(command)} failed; see {cwd / 'log.txt'}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def real_job(work: Path, model: str, n: int, dev_count: int) -> tuple[Path, Path, Path, int]:
    """The real-model job: LLaMA-Factory's English and Chinese alpaca demos, the model's own template."""
    from lmtune.data.encode import Encoder
    from lmtune.data.records import ASSISTANT, USER, Conversation, Turn
    from lmtune.model.hub import resolve_model
    from lmtune.model.load import load_tokenizer
    from lmtune.templates.hf import template_for

    if not REFERENCE_DATA.is_dir():
        sys.exit(f"--model needs LLaMA-Factory's demo data at {REFERENCE_DATA}")
    english, chinese = (json.loads((REFERENCE_DATA / f"alpaca_{lang}_demo.json").read_text(encoding="utf-8")) for lang in ("en", "zh"))
    rows = [r for pair in zip(english, chinese) for r in pair]
    train_rows, dev_rows = rows[:-dev_count][:n], rows[-dev_count:]
    data, dev_file = work / "train.jsonl", work / "dev.jsonl"
    for path, part in ((data, train_rows), (dev_file, dev_rows)):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    folder = resolve_model(model)[0]  # a .gguf is dequantized once
    tokenizer = load_tokenizer(str(folder))
    encoder = Encoder(tokenizer, template_for(TEMPLATE, tokenizer), CUTOFF, "all_assistant")
    def conversation(r: dict) -> Conversation:
        return Conversation([Turn(USER, "\n".join(filter(None, (r["instruction"], r["input"])))), Turn(ASSISTANT, r["output"])])
    tokens = sum(len(encoder.encode(conversation(r)).input_ids) for r in train_rows)
    return data, dev_file, folder, tokens


def lmtune_config(data: Path, model: Path, out: Path, changes: dict) -> dict:
    config = {
        "model": {"path": str(model)},
        "data": {"path": str(data), "template": TEMPLATE, "cutoff_len": CUTOFF, "cache": False},
        "finetune": {"method": "lora", "lora": {"r": 8, "alpha": 16, "target": "all-linear"}},
        "train": {"output_dir": str(out), "num_train_epochs": 1, "learning_rate": 1e-3,
                  "per_device_train_batch_size": 8, "logging_steps": LOGGING_STEPS, "seed": 0},
    }
    for key, value in changes.items():
        apply_override(config, f"{key}={json.dumps(value)}")  # as `lmtune train … key=value` would (JSON is YAML)
    return config


def run_lmtune(work: Path, data: Path, model: Path, name: str) -> dict:
    folder = work / f"lmtune-{name}"
    folder.mkdir()
    (folder / "config.yaml").write_text(json.dumps(lmtune_config(data, model, folder / "out", LEVERS[name])))
    seconds, cpu, peak = timed([LMTUNE, "train", "config.yaml"], folder)
    lines = [json.loads(line) for line in (folder / "out" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if "loss" in r]
    return {"seconds": seconds, "cpu": cpu, "peak": peak, "train loss": sum(losses) / len(losses), "out": folder / "out"}


def run_peer(cli: str, work: Path, data: Path, model: Path, name: str) -> dict:
    """The same job through LLaMA-Factory with its defaults (lora_dropout 0, no packing, gradient
    checkpointing, one preprocessing process) and PEERS[name], from a fresh datasets cache."""
    folder = work / name.replace(" ", "").replace(",", "-")
    folder.mkdir()
    (folder / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": str(data)}}))
    config = {
        "model_name_or_path": str(model), "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "lora_target": "all", "lora_rank": 8, "lora_alpha": 16, "dataset": "bench", "dataset_dir": str(folder),
        "template": PEER_TEMPLATE, "cutoff_len": CUTOFF, "overwrite_cache": True, "output_dir": str(folder / "out"),
        "per_device_train_batch_size": 8, "learning_rate": 1e-3, "num_train_epochs": 1, "logging_steps": LOGGING_STEPS,
        "report_to": "none", "seed": 0, **PEERS[name],
    }
    (folder / "config.yaml").write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in config.items()))
    env = {**os.environ, "HF_DATASETS_CACHE": str(folder / "hf-cache"), "HF_HUB_OFFLINE": "1",
           "DISABLE_VERSION_CHECK": "1", "CUDA_VISIBLE_DEVICES": ""}
    seconds, cpu, peak = timed([cli, "train", "config.yaml"], folder, env)
    state = json.loads((folder / "out" / "trainer_state.json").read_text())
    losses = [r["loss"] for r in state["log_history"] if "loss" in r]
    return {"seconds": seconds, "cpu": cpu, "peak": peak, "train loss": sum(losses) / len(losses), "out": folder / "out"}


def dev_loss(model: Path, adapter: Path, dev: Path) -> float:
    """The same evaluation for every run: lmtune eval's dev loss over the held-out records (one
    generated token each: the generation metrics are not wanted here)."""
    out = subprocess.run([LMTUNE, "eval", "--model", str(model), "--adapter", str(adapter), "--template", TEMPLATE,
                          "--data", str(dev), "--max-new-tokens", "1", "--json"], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"lmtune eval failed on {adapter}:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])["model"]["dev"]["loss"]


def profile(data: Path, model: Path, work: Path) -> None:
    """Self CPU time per operator over steps 3-10 of the default job, grouped by what it is for."""
    import torch
    from transformers import TrainerCallback

    import lmtune.train.run as run
    from lmtune.config import validate_config

    schedule = torch.profiler.schedule(wait=2, warmup=1, active=8, repeat=1)
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], schedule=schedule)

    class Step(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            profiler.step()

    build = run._build_trainer

    def with_profiler(*args, **kwargs):
        trainer = build(*args, **kwargs)
        collate = trainer.data_collator
        trainer.data_collator = lambda rows: _labelled("data collation", collate, rows)
        for callback in trainer.callback_handler.callbacks:  # lmtune's own per-step work
            for hook in ("on_step_end", "on_log", "on_step_begin"):
                if type(callback).__module__.startswith("lmtune") and hasattr(callback, hook):
                    setattr(callback, hook, _labelled_hook(type(callback).__name__, getattr(callback, hook)))
        trainer.add_callback(Step())
        return trainer

    run._build_trainer = with_profiler
    config = validate_config(lmtune_config(data, model, work / "profiled", {"train.max_steps": 11, "train.logging_steps": 1}))
    with profiler:
        run.train(config)
    totals: dict[str, float] = defaultdict(float)
    for event in profiler.key_averages():
        totals[_category(event.key)] += event.self_cpu_time_total
    whole = sum(totals.values())
    print("\nprofile, steps 3-10 of the default job: self CPU time by category")
    for name, micros in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {name:<42} {micros / 1e6:7.2f} s  {micros / whole:6.1%}")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def _labelled(label, function, *args, **kwargs):
    import torch

    with torch.profiler.record_function(label):
        return function(*args, **kwargs)


def _labelled_hook(name, hook):
    return lambda *args, **kwargs: _labelled(f"lmtune callback {name}", hook, *args, **kwargs)


CATEGORIES = [  # first match wins; names are torch operators (aten::) and the labels above
    ("data collation", r"^data collation"),
    ("lmtune callbacks, logging", r"^lmtune callback"),
    ("optimizer", r"Optimizer|_foreach|adam|^aten::(addcdiv|addcmul|lerp|sqrt)"),
    ("loss (cross-entropy)", r"cross_entropy|nll_loss|log_softmax"),
    ("attention (sdpa, softmax, mask)", r"scaled_dot_product|_flash|attention|softmax|^aten::(where|masked_fill|tril|triu)"),
    ("matmuls (base and LoRA)", r"^aten::(mm|addmm|bmm|matmul|linear)$"),
    ("dropout", r"dropout|bernoulli"),
    ("norms, activations, rotary (elementwise)", r"^aten::(mul|add|sub|div|pow|rsqrt|mean|silu|neg|cat|sum|exp|cos|sin|_to_copy|copy_|fill_|zero_|clone|contiguous|sigmoid|silu_backward|threshold|rsub)"),
    ("embedding", r"embedding"),
    ("host syncs (.item, to cpu)", r"^aten::(item|_local_scalar_dense)"),
]


def _category(name: str) -> str:
    return next((label for label, pattern in CATEGORIES if re.search(pattern, name)), "other")


def main() -> None:
    global CUTOFF, TEMPLATE, PEER_TEMPLATE, LOGGING_STEPS
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--sigma", type=float, default=0.9, help="spread of the answer lengths (lognormal)")
    parser.add_argument("--cutoff", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=256, help="model width (1024 with --layers 24 on a GPU)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--levers", default="default,checkpointing", help=f"comma-separated, of: {', '.join(LEVERS)}")
    parser.add_argument("--peer", help="llamafactory-cli of a LLaMA-Factory install, to run the same job through it")
    parser.add_argument("--profile", action="store_true", help="profile steps 3-10 of the default job instead")
    parser.add_argument("--work", help="keep the runs in this folder (default: a temporary one)")
    parser.add_argument("--model", help="a real model (folder or .gguf) on real data instead of the random Llama")
    parser.add_argument("--peer-template", default="alpaca", help="LLaMA-Factory's name for the model's template (with --model)")
    parser.add_argument("--dev", type=int, default=20, help="held-out records with --model")
    args = parser.parse_args()
    CUTOFF, TEMPLATE, PEER_TEMPLATE = args.cutoff, "auto" if args.model else "alpaca", args.peer_template
    LOGGING_STEPS = 1 if args.model else 10
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.model:
            data, dev, model, tokens = real_job(work, args.model, args.records, args.dev)
        else:
            data, dev, model, tokens = make_job(work, args.records, args.sigma, args.hidden, args.layers)
        samples = sum(1 for _ in data.open(encoding="utf-8"))
        if args.profile:
            return profile(data, model, work)
        results = {}
        for name in PEERS if args.peer else ():
            results[name] = run_peer(args.peer, work, data, model, name)
        for name in args.levers.split(","):
            results[f"lmtune {name}"] = run_lmtune(work, data, model, name)
        for result in results.values():
            result["dev loss"] = dev_loss(model, result["out"], dev)
    shape = f"model {args.model}" if args.model else f"hidden {args.hidden}, {args.layers} layers, answer-length sigma {args.sigma}"
    print(f"job: {samples} records, cutoff {args.cutoff}, {tokens:,} tokens; "
          f"LoRA r 8 on all linear layers, batch 8, lr 1e-3, one epoch; {shape}")
    print("| run | whole process | CPU s | samples/s | tokens/s | peak RSS | train loss (epoch mean) | dev loss after |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['seconds']:.1f} s | {r['cpu']:.0f} | {samples / r['seconds']:.1f} | {tokens / r['seconds']:,.0f} | "
              f"{r['peak']:,.0f} MiB | {r['train loss']:.3f} | {r['dev loss']:.3f} |")
    if "LLaMA-Factory" in results and "lmtune default" in results:
        print(f"LLaMA-Factory / lmtune default, whole process: {results['LLaMA-Factory']['seconds'] / results['lmtune default']['seconds']:.2f}x")


CUTOFF = 512
TEMPLATE = PEER_TEMPLATE = "alpaca"
LOGGING_STEPS = 10  # 1 with --model: its job is a few steps long
REFERENCE_DATA = Path(__file__).resolve().parents[2] / "shared" / "reference" / "llamafactory-data"

if __name__ == "__main__":
    main()
