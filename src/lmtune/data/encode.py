"""Conversation + template + tokenizer → input_ids and labels, exactly as training sees them.

Prompt tokens get label -100; every assistant response and the EOS after it are trained.
Each prompt and each response is tokenized on its own and the ids are joined; inference
builds its prompt with `prompt_ids`, the same code, so chat sees the training prefix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmtune.data.readers import read_conversations
from lmtune.data.records import Conversation
from lmtune.errors import DataError, ModelError
from lmtune.templates.template import Template, exchanges

IGNORE_INDEX = -100


@dataclass
class Sample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False  # some of the conversation did not fit in cutoff_len


Pieces = tuple[list[int], list[tuple[list[int], list[int] | None]]]  # prefix ids, (prompt, response) ids


class Encoder:
    def __init__(self, tokenizer, template: Template, cutoff_len: int):
        if tokenizer.eos_token_id is None:
            raise ModelError("the tokenizer has no EOS token; set eos_token in tokenizer_config.json")
        self.tokenizer = tokenizer
        self.template = template
        self.cutoff_len = cutoff_len
        self.eos_id = tokenizer.eos_token_id
        self.bos = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def pieces(self, conv: Conversation) -> Pieces:
        prefix = self.bos + self._ids(self.template.system_text(conv))
        pairs = []
        for prompt, response in self.template.pairs(conv):
            response_ids = None
            if response is not None:
                response_ids = self._ids(response)
                if not response_ids or response_ids[-1] != self.eos_id:
                    response_ids.append(self.eos_id)  # the model must learn to stop
            pairs.append((self._ids(prompt), response_ids))
        return prefix, pairs

    def encode(self, conv: Conversation) -> Sample:
        """Training sample; drops the oldest exchanges, then cuts the prompt, then the response."""
        prefix, pairs, too_long = self._fit_exchanges(conv)
        if any(response is None for _, response in pairs):
            raise DataError(f"{conv.source}: a user turn has no assistant answer after it")
        if len(pairs) == 1:
            prefix, pairs = self._cut_single(prefix, pairs[0])
        input_ids, labels = list(prefix), [IGNORE_INDEX] * len(prefix)
        for prompt, response in pairs:
            input_ids += prompt + response
            labels += [IGNORE_INDEX] * len(prompt) + response
        return Sample(input_ids, labels, truncated=too_long)

    def prompt_ids(self, conv: Conversation) -> list[int]:
        """Generation prompt for a conversation that ends with a user turn."""
        prefix, pairs = self.pieces(conv)
        ids = list(prefix)
        for prompt, response in pairs:
            ids += prompt + (response or [])
        return ids

    def _fit_exchanges(self, conv: Conversation) -> tuple[list[int], list, bool]:
        groups = exchanges(conv)
        for start in range(len(groups)):
            kept = Conversation([t for g in groups[start:] for t in g], conv.system, conv.source)
            prefix, pairs = self.pieces(kept)
            fits = _length(prefix, pairs) <= self.cutoff_len
            if fits:
                break
        return prefix, pairs, start > 0 or not fits

    def _cut_single(self, prefix: list[int], pair: tuple[list[int], list[int]]) -> Pieces:
        prompt, response = prefix + pair[0], pair[1]
        limit = self.cutoff_len
        if len(prompt) + len(response) <= limit:
            return prefix, [pair]
        # The prompt gives way first, but keeps at least half the budget when the response is long.
        prompt_budget = max(limit - len(response), min(len(prompt), limit // 2))
        if len(prompt) > prompt_budget:
            head = min(len(prefix), prompt_budget // 2)  # keep BOS + system, and the response header at the end
            prompt = prompt[:head] + prompt[len(prompt) - (prompt_budget - head) :]
        room = limit - len(prompt)
        if len(response) > room:
            response = response[: room - 1] + [self.eos_id]
        return [], [(prompt, response)]


def _length(prefix: list[int], pairs: list) -> int:
    return len(prefix) + sum(len(p) + len(r or []) for p, r in pairs)


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front by itself (Llama does, GPT-2/Qwen/Bloom don't)."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer.encode("a", add_special_tokens=True)
    return bool(ids) and ids[0] == tokenizer.bos_token_id


# ---------------------------------------------------------------- datasets


@dataclass
class LoadReport:
    read: dict[str, int] = field(default_factory=dict)
    dropped: list[dict] = field(default_factory=list)  # {"source", "reason", "record"}
    truncated: int = 0

    @property
    def kept(self) -> int:
        return sum(self.read.values()) - len(self.dropped)

    def summary(self) -> str:
        files = ", ".join(f"{Path(p).name}: {n}" for p, n in self.read.items())
        return (
            f"read {sum(self.read.values())} records ({files}); kept {self.kept}; "
            f"dropped {len(self.dropped)} with nothing to train on; truncated {self.truncated} to cutoff_len"
        )

    def write_dropped(self, path: Path) -> Path | None:
        if not self.dropped:
            return None
        with Path(path).open("w", encoding="utf-8") as f:
            for row in self.dropped:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        return Path(path)


def encode_files(paths: list[str], fmt: str, encoder: Encoder) -> tuple[list[Sample], LoadReport]:
    samples, report = [], LoadReport()
    for path in paths:
        report.read[path] = 0
        for conv, record in read_conversations(path, fmt):
            report.read[path] += 1
            sample = encoder.encode(conv)
            if not has_target(sample, encoder.eos_id):
                reason = "every answer is empty: only EOS would be trained"
                report.dropped.append({"source": conv.source, "reason": reason, "record": record})
                continue
            report.truncated += sample.truncated
            samples.append(sample)
    if not samples:
        raise DataError(f"no trainable records in {', '.join(paths)} ({len(report.dropped)} dropped, all empty)")
    return samples, report


def has_target(sample: Sample, eos_id: int) -> bool:
    """At least one trained token besides EOS: a sample of prompt + EOS teaches only to stay silent."""
    return any(label not in (IGNORE_INDEX, eos_id) for label in sample.labels)


# ---------------------------------------------------------------- batching


def pad_batch(samples: list[dict], pad_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """Pad to the longest sample. Padded labels are -100 and the attention mask marks padding,
    so a real EOS keeps its label even when pad_id == eos_id."""
    longest = max(len(s["input_ids"]) for s in samples)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for s in samples:
        n = len(s["input_ids"])
        fill = longest - n
        parts = {
            "input_ids": (s["input_ids"], [pad_id] * fill),
            "attention_mask": ([1] * n, [0] * fill),
            "labels": (s.get("labels", [IGNORE_INDEX] * n), [IGNORE_INDEX] * fill),
        }
        for key, (values, padding) in parts.items():
            batch[key].append(values + padding if side == "right" else padding + values)
    return {key: torch.tensor(rows, dtype=torch.long) for key, rows in batch.items()}


class Collator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        return pad_batch(samples, self.pad_id)
