"""Conversation + template + tokenizer → input_ids and labels, exactly as training sees them.

Prompt tokens get label -100; every assistant response and the EOS after it are trained.
Each prompt and each response is tokenized on its own and the ids are joined; inference
builds its prompt with `prompt_ids`, the same code, so chat sees the training prefix.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

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

    def _ids_many(self, texts: list[str]) -> list[list[int]]:
        """Token ids of many texts: each distinct text once (system prompts repeat in every record),
        in one call to the Rust tokenizer when it gives exactly what `encode` gives."""
        distinct = list(dict.fromkeys(texts))
        if self._backend_is_exact:
            encoded = [e.ids for e in self.tokenizer.backend_tokenizer.encode_batch_fast(distinct, add_special_tokens=False)]
        else:
            encoded = self.tokenizer(distinct, add_special_tokens=False)["input_ids"] if distinct else []
        by_text = dict(zip(distinct, encoded))
        return [by_text[text] for text in texts]

    @functools.cached_property
    def _backend_is_exact(self) -> bool:
        """Some tokenizers add Python-side steps around the Rust one; then use the slower HF call."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None or not hasattr(backend, "encode_batch_fast"):
            return False
        probes = [self.template.system_text(Conversation([])), self.template.user, " Hello,  世界!\n", "a"]
        fast = [e.ids for e in backend.encode_batch_fast(probes, add_special_tokens=False)]
        return fast == [self._ids(p) for p in probes]

    def pieces(self, conv: Conversation) -> Pieces:
        system, pairs = self._render(conv)
        return self._pieces(self._ids(system), [(self._ids(p), None if r is None else self._ids(r)) for p, r in pairs])

    def _render(self, conv: Conversation) -> tuple[str, list[tuple[str, str | None]]]:
        return self.template.system_text(conv), self.template.pairs(conv)

    def _pieces(self, system_ids: list[int], pair_ids: list[tuple[list[int], list[int] | None]]) -> Pieces:
        pairs = []
        for prompt, response in pair_ids:
            if response is not None and (not response or response[-1] != self.eos_id):
                response = response + [self.eos_id]  # the model must learn to stop
            pairs.append((prompt, response))
        return self.bos + system_ids, pairs

    def encode(self, conv: Conversation) -> Sample:
        """Training sample; drops the oldest exchanges, then cuts the prompt, then the response."""
        prefix, pairs, too_long = self._fit_exchanges(conv)
        _check_answered(conv, pairs)
        if len(pairs) == 1:
            prefix, pairs = self._cut_single(prefix, pairs[0])
        return _sample(prefix, pairs, too_long)

    def encode_many(self, convs: list[Conversation]) -> list[Sample]:
        """Same samples as `encode`, with every text piece of the batch tokenized in one call to the
        fast tokenizer; the rare conversation over cutoff_len takes the slow path."""
        rendered = [self._render(conv) for conv in convs]
        texts = [t for system, pairs in rendered for t in [system, *(x for p, r in pairs for x in (p, r or ""))]]
        ids = iter(self._ids_many(texts))
        samples = []
        for conv, (_, pairs) in zip(convs, rendered):
            system_ids, pair_ids = next(ids), []
            for _, response in pairs:
                prompt_ids, response_ids = next(ids), next(ids)
                pair_ids.append((prompt_ids, None if response is None else response_ids))
            prefix, pieces = self._pieces(system_ids, pair_ids)
            if _length(prefix, pieces) > self.cutoff_len:
                samples.append(self.encode(conv))
            else:
                _check_answered(conv, pieces)
                samples.append(_sample(prefix, pieces, truncated=False))
        return samples

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


def _check_answered(conv: Conversation, pairs: list) -> None:
    if any(response is None for _, response in pairs):
        raise DataError(f"{conv.source}: a user turn has no assistant answer after it")


def _sample(prefix: list[int], pairs: list, truncated: bool) -> Sample:
    input_ids, labels = list(prefix), [IGNORE_INDEX] * len(prefix)
    for prompt, response in pairs:
        input_ids += prompt + response
        labels += [IGNORE_INDEX] * len(prompt) + response
    return Sample(input_ids, labels, truncated)


def _length(prefix: list[int], pairs: list) -> int:
    return len(prefix) + sum(len(p) + len(r or []) for p, r in pairs)


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front by itself (Llama does, GPT-2/Qwen/Bloom don't)."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer.encode("a", add_special_tokens=True)
    return bool(ids) and ids[0] == tokenizer.bos_token_id


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
