"""`lmtune eval` with a model: dev loss and perplexity, generation metrics against the dev set's
answers, and multiple-choice accuracy; for a fine-tune and, in the same table, for the model it
was trained from.

Dev loss uses the training encoder (template, train_on, cutoff_len), so it measures what the
training log's eval_loss measures; but every answer token weighs the same, where the Trainer
averages the means of its batches. Perplexity is exp of the mean loss per answer token.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lmtune.config import ModelConfig
from lmtune.data.encode import IGNORE_INDEX, Encoder, pad_batch
from lmtune.data.records import Conversation
from lmtune.evaluate.metrics import score
from lmtune.infer.engine import Engine
from lmtune.errors import LmtuneError
from lmtune.infer.generate import Item, generate_file, to_item

RESULTS_FILE = "results.json"


@dataclass
class DevSet:
    convs: list[Conversation]  # whole conversations, for the loss
    items: list[Item]  # their questions and reference answers, for generation
    name: str  # where it came from, for the report


@dataclass
class Suite:
    dev: DevSet | None
    choice: dict | None  # subject -> questions (lmtune.evaluate.choice.read_questions)
    shots: int
    batch_size: int
    cutoff_len: int
    train_on: str
    pairs: list | None = None  # preference pairs (lmtune.data.pref.Pair), for preference accuracy


Track = Callable[[str, int], Callable[[int], None]]  # (what, total) -> advance(n), e.g. a progress bar


def _holds_pairs(data: Path) -> bool:
    """Whether the file's first record is a preference pair (chosen and rejected)."""
    from lmtune.data.pref import is_pair
    from lmtune.data.readers import open_records

    first = next(open_records(data)[1], None)
    return bool(first and first.record and is_pair(first.record, None))


def build_suite(engine: Engine, run, data: Path | None, choice: Path | None, shots: int, limit: int | None) -> Suite:
    """The dev set (--data, else the split training held out) and the multiple-choice questions."""
    from lmtune.data.load import load_data
    from lmtune.data.pref import PAIR_STAGES
    from lmtune.data.readers import read_conversations

    dev = questions = None
    # A preference run is scored on pairs (its dev split, or --data's); so is any run given pairs, so
    # that the SFT model before DPO can be scored on the same pairs as after.
    if run and (run.data.stage in PAIR_STAGES or (data and _holds_pairs(data))):
        update = {"path": [str(data)], "dataset": [], "val_size": 0, "stage": "dpo"} if data else {}
        source = run.data.model_copy(update=update)
        loaded = load_data(source, engine.tokenizer, run.train.seed)
        pairs = (loaded.train if data else loaded.dev)[:limit]
        cutoff = run.data.cutoff_len
        return Suite(None, None, shots, engine.settings.batch_size, cutoff, run.data.train_on, pairs=pairs)
    if data:
        pairs = list(read_conversations(data))[:limit]
        dev = DevSet([c for c, _ in pairs], [to_item(c, r) for c, r in pairs], str(data))
    elif not choice:  # the run's own dev split, rebuilt with its seed
        held_out = load_data(run.data, engine.tokenizer, run.train.seed).dev[:limit]
        dev = DevSet(held_out, [to_item(c) for c in held_out], "the run's dev split")
    if dev is not None and not dev.convs:
        raise LmtuneError(f"nothing to evaluate: {dev.name} holds no records")
    if choice:
        from lmtune.evaluate.choice import read_questions

        questions = {subject: items[:limit] for subject, items in read_questions(choice).items()}
    cutoff, train_on = (run.data.cutoff_len, run.data.train_on) if run else (4096, "all_assistant")
    return Suite(dev, questions, shots, engine.settings.batch_size, cutoff, train_on)


def evaluate(engine: Engine, suite: Suite, out_dir: Path, label: str, track: Track = lambda what, total: lambda n: None) -> dict:
    """Every part of the suite on one model; predictions go to OUT_DIR/LABEL_predictions.jsonl."""
    result: dict = {}
    if suite.dev:
        convs, items = suite.dev.convs, suite.dev.items
        result["dev"] = dev_loss(engine, convs, suite.cutoff_len, suite.train_on, suite.batch_size, track(f"{label}: dev loss", len(convs)))
        predictions = out_dir / f"{label}_predictions.jsonl"
        predictions.unlink(missing_ok=True)  # an evaluation answers afresh; never reuse another model's answers
        generated = generate_file(engine, items, predictions, suite.batch_size, track(f"{label}: answering the dev set", len(items)))
        result["generation"] = {**score(generated.rows), "predictions": str(predictions)}
        result["dev"]["data"] = suite.dev.name
    if suite.pairs:
        from lmtune.evaluate.pref import preference_accuracy

        advance = track(f"{label}: preference pairs", len(suite.pairs))
        result["preference"] = preference_accuracy(engine, suite.pairs, suite.cutoff_len, suite.batch_size, advance)
    if suite.choice:
        from lmtune.evaluate.choice import score_choices

        advance = track(f"{label}: multiple choice, {suite.shots}-shot", sum(map(len, suite.choice.values())))
        result["choice"] = score_choices(engine, suite.choice, suite.shots, suite.batch_size, progress=advance)
    return result


def dev_loss(
    engine: Engine, convs: list[Conversation], cutoff_len: int, train_on: str, batch_size: int,
    progress: Callable[[int], None] = lambda n: None,
) -> dict:
    """Mean cross-entropy per trained token, summed over the whole set (not averaged per batch)."""
    encoder = Encoder(engine.tokenizer, engine.template, cutoff_len, train_on)
    samples = sorted(encoder.encode_many(convs), key=lambda s: len(s.input_ids))
    model, total, tokens = engine.model, 0.0, 0
    for start in range(0, len(samples), batch_size):
        rows = [{"input_ids": s.input_ids, "labels": s.labels} for s in samples[start : start + batch_size]]
        batch = {k: v.to(model.device) for k, v in pad_batch(rows, engine.tokenizer.pad_token_id).items()}
        with torch.inference_mode():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = logits[:, -batch["input_ids"].shape[1] :].float()  # prompt tuning prepends virtual tokens
        labels = batch["labels"][:, 1:]
        total += F.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum").item()
        tokens += int((labels != IGNORE_INDEX).sum())
        progress(len(rows))
    if not tokens:  # every answer cut away: there is no loss to report, and 0.00 would read as perfect
        return {"loss": None, "perplexity": None, "tokens": 0}
    mean = total / tokens
    return {"loss": mean, "perplexity": math.exp(min(mean, 700)), "tokens": tokens}


@contextmanager
def base_of(engine: Engine, trained: ModelConfig) -> Iterator[Engine]:
    """The model a fine-tune started from, prompted the same way: the adapter switched off, or
    (for a full fine-tune) the base weights loaded beside it."""
    if hasattr(engine.model, "disable_adapter"):
        lora = getattr(engine, "lora", None)  # a vLLM engine (serve/vllm.py) answers with its LoRA by name: off too
        with engine.model.disable_adapter():
            engine.lora = None
            try:
                yield engine
            finally:
                engine.lora = lora
        return
    if getattr(engine, "runner", None):
        raise LmtuneError("--with-base on a full fine-tune with --backend vllm would load a second model into vLLM; "
                          "evaluate the base on its own (lmtune eval --model BASE --backend vllm), or use --backend hf")
    from lmtune.model.hub import base_folder
    from lmtune.model.load import align_special_tokens, load_model

    model = load_model(base_folder(trained.path, trained), "auto")
    align_special_tokens(model, engine.tokenizer)
    yield Engine(model, engine.tokenizer, engine.template, engine.settings)


def write_results(out_dir: Path, results: dict) -> Path:
    path = out_dir / RESULTS_FILE
    path.write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the table

# (name, where in a result, higher is better)
METRICS = [
    ("dev loss", ("dev", "loss"), False),
    ("perplexity", ("dev", "perplexity"), False),
    ("BLEU-4", ("generation", "bleu-4"), True),
    ("ROUGE-1", ("generation", "rouge-1"), True),
    ("ROUGE-2", ("generation", "rouge-2"), True),
    ("ROUGE-L", ("generation", "rouge-l"), True),
    ("hit max_new_tokens %", ("generation", "hit_max_new_tokens"), False),
    ("repetition loop %", ("generation", "repetition_loop"), False),
    ("think block never closed %", ("generation", "reasoning_unclosed"), False),  # only where some output reasoned
    ("choice accuracy %", ("choice", "overall", "accuracy"), True),
    ("preference accuracy %", ("preference", "accuracy"), True),
    ("preference margin", ("preference", "margin"), True),
]


def table_rows(results: dict[str, dict]) -> list[tuple[str, list[float | None], bool]]:
    """(metric, value per model, higher is better) for every metric some model has, per-subject
    accuracy included."""
    metrics = list(METRICS)
    subjects = sorted({s for r in results.values() for s in r.get("choice", {}).get("subjects", {})})
    metrics += [(f"  {s} %", ("choice", "subjects", s, "accuracy"), True) for s in subjects]
    rows = []
    for name, path, higher in metrics:
        values = [_get(r, path) for r in results.values()]
        if any(v is not None for v in values):
            scale = 100 if name.endswith("%") else 1
            rows.append((name, [None if v is None else v * scale for v in values], higher))
    return rows


def _get(result: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result
