"""`lmtune demo`: the whole job on the bundled bilingual data, on CPU, in a few minutes.

A randomly initialised model cannot learn facts through LoRA alone (it stays near unigram loss),
so the demo does what real fine-tunes rely on: a short full-weight "pre-training" stage gives the
tiny model its knowledge as plain text, then LoRA SFT teaches it the Alpaca prompt format and to
stop with EOS. Asking it training questions afterwards proves that data, template, masking, EOS,
training, saving, loading and generation fit together: a mismatch anywhere breaks the answers.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lmtune.config import GenerateConfig, dump_yaml, load_config
from lmtune.data.readers import read_conversations
from lmtune.templates.template import builtin_templates
from lmtune.tiny import build_model, train_tokenizer

DATA_FILE = "demo_sft.json"
# Recipe measured on 2 CPU cores (see benchmarks/RESULTS.md for the timing).
PRETRAIN = {"max_steps": 700, "learning_rate": 3.0e-3, "per_device_train_batch_size": 16, "warmup_ratio": 0.02}
SFT = {"max_steps": 250, "learning_rate": 3.0e-3, "per_device_train_batch_size": 16, "warmup_ratio": 0.02}
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}


@dataclass
class DemoResult:
    rows: list[tuple[str, str, str]]  # question, expected, answer
    matches: int
    base_matches: int  # the same questions asked of the base model without the adapter
    seconds: float


def bundled_data() -> Path:
    return Path(str(resources.files("lmtune.assets").joinpath(DATA_FILE)))


def run_demo(out: Path, questions: int = 20, log=print) -> DemoResult:
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    records = json.loads(bundled_data().read_text(encoding="utf-8"))

    log(f"[1/4] tokenizer and a random 4-layer Llama in {out / 'init'}")
    init_dir = out / "init"
    # ChatML's tokens too, so the base model also takes the chatml and qwen3 templates (docs/reasoning.md).
    tokenizer = train_tokenizer(_corpus(records), init_dir, vocab_size=3000, special=["<|im_start|>", "<|im_end|>"])
    build_model(tokenizer, init_dir, arch="llama", hidden_size=128, layers=4, heads=4)

    log("[2/4] base stage: full training on the answers as plain text")
    texts = out / "pretrain.jsonl"
    texts.write_text("".join(json.dumps({"text": _plain(r)}, ensure_ascii=False) + "\n" for r in records), "utf-8")
    base = train_stage(out, "base", init_dir, texts, method={"method": "full"}, steps=PRETRAIN)

    log("[3/4] LoRA SFT with the alpaca template")
    sft = train_stage(out, "sft", base, bundled_data(), method={"method": "lora", "lora": LORA}, steps=SFT)

    log(f"[4/4] asking {questions} training questions")
    rows = _ask(base, sft, questions)
    without_adapter = _ask(base, None, questions)
    return DemoResult(rows, _matches(rows), _matches(without_adapter), time.perf_counter() - start)


def _matches(rows: list[tuple[str, str, str]]) -> int:
    return sum(answer == expected for _, expected, answer in rows)


def _corpus(records: list[dict]) -> list[str]:
    templates = builtin_templates()["alpaca"]
    fixed = [templates.default_system, templates.default_system_with_input, templates.user_with_input]
    return fixed + [r[key] for r in records for key in ("instruction", "input", "output") if r[key]]


def _plain(record: dict) -> str:
    return "\n".join(part for part in (record["instruction"], record["input"], record["output"]) if part)


def train_stage(
    out: Path, name: str, model: Path, data: Path, method: dict, steps: dict, template: str = "alpaca", cutoff_len: int = 256
) -> Path:
    """Write the stage's config next to the results (so `lmtune train` can rerun it) and train."""
    from lmtune.train.run import train

    config_path = out / f"{name}.yaml"
    config = {
        # Absolute paths: the config is rerun later from wherever the user stands.
        "model": {"path": str(Path(model).resolve())},
        "data": {"path": str(Path(data).resolve()), "template": template, "cutoff_len": cutoff_len},
        "finetune": method,
        # The demo's own folders: every run of it (and of these configs) replaces them.
        "train": {"output_dir": str((out / name).resolve()), "overwrite_output_dir": True, "logging_steps": 25, **steps},
        "generate": {"temperature": 0, "repetition_penalty": 1.0, "max_new_tokens": 64},
    }
    config_path.write_text(dump_yaml(config), encoding="utf-8")
    return train(load_config(config_path)).output_dir


def _ask(base: Path, adapter: Path | None, questions: int) -> list[tuple[str, str, str]]:
    from lmtune.infer.engine import load_engine

    pairs = [conv.without_last_answer() for conv, _ in read_conversations(bundled_data())]
    chosen = random.Random(0).sample(pairs, questions)
    greedy = GenerateConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=64)
    engine = load_engine(model=str(base), adapter=str(adapter) if adapter else None, template="alpaca", settings=greedy)
    replies = engine.generate([conv for conv, _ in chosen])
    return [
        (_question(conv), expected.strip(), reply.text) for (conv, expected), reply in zip(chosen, replies)
    ]


def _question(conv) -> str:
    turn = conv.turns[-1]
    return f"{turn.content} {turn.input}".strip()
