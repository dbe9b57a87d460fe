"""Conversation + template + tokenizer → input_ids and labels, exactly as training sees them.

The template renders the conversation to text marked in prompt and answer segments; the text is
tokenized in one piece (as the model's own chat template would be, so special tokens and the text
around them come out as the model knows them), and a token is trained when it overlaps an answer:
labels come from character spans, never from searching for token sequences. `train_on` chooses
every answer (default), the last one only, or everything. Inference builds its prompt with
`prompt_ids`, the same rendering, so chat sees the training prefix.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from lmtune.data.contexts import REWRITTEN_ANSWERS, answer_contexts
from lmtune.data.records import Conversation
from lmtune.errors import DataError, ModelError
from lmtune.templates.reasoning import opens_reasoning
from lmtune.templates.template import ANSWER_ROLES, Segment, Template, exchanges

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100
TRAIN_ON = ("all_assistant", "last_assistant", "all")
CHUNK = 1000  # conversations per tokenizer call in encode_stream: big enough to amortise, small enough to stay in cache


@dataclass
class Sample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False  # some of the conversation did not fit in cutoff_len


@dataclass
class Tokenized:
    ids: list[int]
    owner: np.ndarray  # per token: index of the answer it belongs to, or -1 for prompt
    eos_at: tuple[int, ...] = ()  # tokens trained to predict EOS instead of themselves (Segment.eos_label)
    spans: list[tuple[int, int]] | None = None  # [first, stop) of each answer's tokens, where known: labels without numpy


class Encoder:
    def __init__(self, tokenizer, template: Template, cutoff_len: int, train_on: str = "all_assistant",
                 rewritten_answers: str = "own_sample", train_reasoning: bool = True):
        """rewritten_answers and train_reasoning: see data.contexts and DataConfig."""
        if tokenizer.eos_token_id is None:
            raise ModelError("the tokenizer has no EOS token; set eos_token in tokenizer_config.json")
        if train_on not in TRAIN_ON or rewritten_answers not in REWRITTEN_ANSWERS:
            raise ValueError(f"train_on must be one of {TRAIN_ON}, rewritten_answers one of {REWRITTEN_ANSWERS}")
        self.tokenizer, self.template, self.cutoff_len, self.train_on = tokenizer, template, cutoff_len, train_on
        self.rewritten_answers, self.train_reasoning = rewritten_answers, train_reasoning
        self.eos_id = tokenizer.eos_token_id
        self.marks = {"bos": tokenizer.bos_token or "", "eos": tokenizer.eos_token}
        self.bos = [tokenizer.bos_token_id] if adds_bos(tokenizer) and not template.writes_bos() else []
        self._check_tokens()

    @classmethod
    def for_data(cls, tokenizer, template: Template, data) -> Encoder:
        """The encoder a DataConfig asks for."""
        return cls(tokenizer, template, data.cutoff_len, data.train_on, data.rewritten_answers, data.train_reasoning)

    def _check_tokens(self) -> None:
        """Template markers must be single tokens, or they would be trained as ordinary text."""
        for token in self.template.tokens:
            ids = self.tokenizer.encode(token, add_special_tokens=False)
            if len(ids) != 1:
                raise ModelError(
                    f"template '{self.template.name}' needs the special token {token!r}, which this tokenizer "
                    f"splits into {len(ids)} pieces; use the template of the model's own family "
                    "(`lmtune templates`), or add the token to the tokenizer and train its embedding"
                )

    # ------------------------------------------------------------ public

    def encode(self, conv: Conversation) -> Sample:
        """The sample of the whole conversation (the last of encode_many's, which may add samples
        for earlier answers in their own contexts)."""
        return self.encode_many([conv])[-1]

    def encode_many(self, convs: list[Conversation]) -> list[Sample]:
        """Training samples (one per conversation, or more where the template rewrites earlier
        answers: data.contexts); the whole batch goes through the tokenizer in one call."""
        convs = self.contexts(convs)
        return self._samples(convs, self._tokenize([self.render(c) for c in convs]))

    def contexts(self, convs: list[Conversation]) -> list[Conversation]:
        """The conversations as the samples that train every answer in its own context."""
        if self.train_on != "all_assistant":  # one answer trained (or all text): one sample
            return convs
        return [sample for conv in convs for sample in (answer_contexts(conv, self.render, self.rewritten_answers) if self._may_rewrite(conv) else [conv])]

    def _may_rewrite(self, conv: Conversation) -> bool:
        """Named templates show earlier answers otherwise only through reasoning and thinking switches."""
        return getattr(self.template, "thinking", None) != "" or any(turn.reasoning is not None for turn in conv.turns)

    def encode_stream(self, convs: list[Conversation], chunk: int = CHUNK) -> Iterator[Sample]:
        """encode_many, `chunk` conversations at a time and in order, so memory stays flat however
        many there are. While Python builds one chunk's labels, a second thread tokenizes the next:
        the Rust tokenizer runs without the GIL, so neither waits for the other."""
        parts = [convs[start : start + chunk] for start in range(0, len(convs), chunk)]
        if not (self._has_offsets and self._backend_is_exact):
            # The slow paths go through the Hugging Face call, which sets the backend's truncation
            # and padding on every call: one caller at a time.
            for part in parts:
                yield from self.encode_many(part)
            return
        with ThreadPoolExecutor(1) as tokenizer_thread:
            pending = None  # (conversations, rendered, encodings to come) of the chunk being tokenized
            for part in parts:
                part = self.contexts(part)
                rendered = [self.render(c) for c in part]
                ahead = part, rendered, tokenizer_thread.submit(self._encode_batch, rendered)
                if pending:
                    yield from self._labelled_samples(*pending)
                pending = ahead
            if pending:
                yield from self._labelled_samples(*pending)

    def _labelled_samples(self, convs: list[Conversation], rendered: list[list[Segment]], encodings: Future) -> list[Sample]:
        return self._samples(convs, _labelled(encodings.result(), rendered))

    def prompt_ids(self, conv: Conversation) -> list[int]:
        """Generation prompt for a conversation that ends with a user turn."""
        return self.bos + self._tokenize([self.render(conv)])[0].ids

    def opens_reasoning(self, conv: Conversation) -> bool:
        """Whether the generation prompt for conv ends inside an open think block (DeepSeek-R1's
        `<think>\n`): then the model's output starts with reasoning (`parse_output(…, opened=True)`)."""
        return opens_reasoning("".join(s.text for s in self.render(conv)))

    def render(self, conv: Conversation) -> list[Segment]:
        segments = self.template.render(conv, **self.marks)
        if self.train_reasoning or not any(s.reasoning for s in segments):
            return segments
        # The think block stays in the text, read but not trained: the answer after it is.
        return [part for s in segments for part in ((Segment(s.text[: s.reasoning], False), replace(s, text=s.text[s.reasoning :], reasoning=0)) if s.reasoning else (s,))]

    def tokenize(self, rendered: list[list[Segment]]) -> list[Tokenized]:
        """Ids, and for each the answer it belongs to: preference pairs are cut from these."""
        return self._tokenize(rendered)

    # ------------------------------------------------------------ tokenizing

    def _tokenize(self, rendered: list[list[Segment]]) -> list[Tokenized]:
        if not rendered:
            return []
        if not self._has_offsets:
            return [self._tokenize_by_segment(segments) for segments in rendered]
        if self._backend_is_exact:
            return _labelled(self._encode_batch(rendered), rendered)
        texts = ["".join(s.text for s in segments) for segments in rendered]
        out = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [_owners(ids, offsets, segments) for ids, offsets, segments in zip(out["input_ids"], out["offset_mapping"], rendered)]

    def _encode_batch(self, rendered: list[list[Segment]]) -> list:
        texts = ["".join(s.text for s in segments) for segments in rendered]
        return self.tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)

    def _tokenize_by_segment(self, segments: list[Segment]) -> Tokenized:
        """Slow tokenizers have no offsets: tokenize segment by segment instead."""
        ids, owner, eos_at, answer = [], [], [], 0
        for segment in segments:
            piece = self.tokenizer.encode(segment.text, add_special_tokens=False)
            ids += piece
            owner += [answer if segment.answer else -1] * len(piece)
            eos_at += [len(ids) - 1] if segment.eos_label and piece else []
            answer += segment.answer
        return Tokenized(ids, np.array(owner, dtype=np.int64), tuple(eos_at))

    @functools.cached_property
    def _has_offsets(self) -> bool:
        return bool(getattr(self.tokenizer, "is_fast", False))

    @functools.cached_property
    def _backend_is_exact(self) -> bool:
        """Some tokenizers add Python-side steps around the Rust one; then use the slower HF call."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return False
        probes = ["".join(s.text for s in self.render(Conversation([]))) or "a", " Hello,  世界!\n", "a"]
        fast = [e.ids for e in backend.encode_batch(probes, add_special_tokens=False)]
        return fast == [self.tokenizer.encode(p, add_special_tokens=False) for p in probes]

    # ------------------------------------------------------------ labels and truncation

    def _samples(self, convs: list[Conversation], tokenized: list[Tokenized]) -> list[Sample]:
        samples = []
        for conv, one in zip(convs, tokenized):
            _check_answered(conv)
            if len(self.bos) + len(one.ids) <= self.cutoff_len:
                samples.append(self._sample(one))
            else:
                samples.append(self._truncated(conv))
        return samples

    def _sample(self, tokenized: Tokenized, truncated: bool = False) -> Sample:
        ids, owner = tokenized.ids, tokenized.owner
        if self.train_on == "all_assistant" and tokenized.spans is not None:
            return self._sample_from_spans(tokenized, truncated)
        if self.train_on == "all":
            trained = np.ones(len(ids), dtype=bool)
        elif self.train_on == "last_assistant":
            trained = owner == owner.max() if len(owner) and owner.max() >= 0 else np.zeros(len(ids), dtype=bool)
        else:
            trained = owner >= 0
        targets = np.array(ids, dtype=np.int64)
        targets[list(tokenized.eos_at)] = self.eos_id
        labels = np.where(trained, targets, IGNORE_INDEX).tolist()
        return Sample(self.bos + list(ids), [IGNORE_INDEX] * len(self.bos) + labels, truncated)

    def _sample_from_spans(self, tokenized: Tokenized, truncated: bool) -> Sample:
        """_sample's labels for every answer, by list slices: the common case, several times faster."""
        ids = tokenized.ids
        labels = [IGNORE_INDEX] * (len(self.bos) + len(ids))
        at = len(self.bos)
        for first, stop in tokenized.spans:
            labels[at + first : at + stop] = ids[first:stop]
        for token in tokenized.eos_at:
            if labels[at + token] != IGNORE_INDEX:
                labels[at + token] = self.eos_id
        return Sample(self.bos + ids, labels, truncated)

    def _truncated(self, conv: Conversation) -> Sample:
        """Drop the oldest exchanges first (the system prompt stays); if one exchange is still too
        long, cut the prompt in the middle, then the answer, keeping the answer's end token."""
        groups = exchanges(conv)
        for start in range(1, len(groups)):
            kept = Conversation([t for g in groups[start:] for t in g], conv.system, conv.tools, conv.source, conv.origin)
            tokenized = self._tokenize([self.render(kept)])[0]
            if len(self.bos) + len(tokenized.ids) <= self.cutoff_len:
                return self._sample(tokenized, truncated=True)
        last = Conversation(groups[-1], conv.system, conv.tools, conv.source, conv.origin)
        return self._sample(self._cut(self._tokenize([self.render(last)])[0]), truncated=True)

    def _cut(self, tokenized: Tokenized) -> Tokenized:
        # One exchange ending the conversation: its answer ends with its own end token, never with
        # an EOS label on the next turn's token, so there is no eos_at to carry over. What a format
        # reads after that token (ChatML's newline) is dropped, so the end token stays last.
        end = max((i + 1 for i, o in enumerate(tokenized.owner.tolist()) if o >= 0), default=len(tokenized.ids))
        ids, owner = list(tokenized.ids[:end]), tokenized.owner[:end].tolist()
        first_answer = next((i for i, o in enumerate(owner) if o >= 0), len(ids))
        prompt, answer = ids[:first_answer], ids[first_answer:]
        limit = self.cutoff_len - len(self.bos)
        # The prompt gives way first, but keeps at least half the budget when the answer is long.
        budget = max(limit - len(answer), min(len(prompt), limit // 2))
        if len(prompt) > budget:
            head = budget // 2  # the start (system prompt, instruction) and the end (the answer header)
            prompt = prompt[:head] + prompt[len(prompt) - (budget - head) :]
        room = limit - len(prompt)
        if len(answer) > room:
            answer = answer[: room - 1] + answer[-1:]  # the end token: the model must learn to stop
        return Tokenized(prompt + answer, np.array([-1] * len(prompt) + [0] * len(answer), dtype=np.int64))


def _owners(ids: list[int], offsets, segments: list[Segment]) -> Tokenized:
    """Which answer each token belongs to: a token is trained when its characters overlap an
    answer segment (so a word piece that straddles the boundary is learned, not skipped)."""
    starts = np.array([o[0] for o in offsets], dtype=np.int64)
    ends = np.array([o[1] for o in offsets], dtype=np.int64)
    owner = np.full(len(ids), -1, dtype=np.int64)
    position, answer, eos_at = 0, 0, []
    for segment in segments:
        end = position + len(segment.text)
        if segment.answer:
            owner[(starts < end) & (ends > position) & (owner < 0)] = answer
            answer += 1
        if segment.eos_label:  # the segment's last token: the one that reaches its end
            eos_at += np.nonzero((starts < end) & (ends >= end))[0][:1].tolist()
        position = end
    return Tokenized(list(ids), owner, tuple(eos_at))


def _labelled(encodings: list, rendered: list[list[Segment]]) -> list[Tokenized]:
    return [_owners_at_bounds(e, segments) or _owners(e.ids, e.offsets, segments) for e, segments in zip(encodings, rendered)]


def _owners_at_bounds(encoding, segments: list[Segment]) -> Tokenized | None:
    """What _owners gives, from a few look-ups at the segment ends instead of every token's
    offsets: turning millions of offsets into Python tuples cost more than the tokenizing. It
    relies on offsets that never go back, as a tokenizer's do within one text; None where a
    boundary has no token of its own (an empty segment, a character a normalizer dropped), and
    the caller then takes the offsets."""
    ids = encoding.ids
    owner = np.full(len(ids), -1, dtype=np.int64)
    position, answer, eos_at, spans = 0, 0, [], []
    for segment in segments:
        end = position + len(segment.text)
        if segment.answer or segment.eos_label:
            span = _overlapping(encoding, position, end, len(ids))
            if span is None:
                return None
            if segment.answer:
                part = owner[span[0] : span[1]]
                part[part < 0] = answer
                answer += 1
                spans.append(span)
            if segment.eos_label:  # the segment's last token: the first one that reaches its end
                eos_at.append(encoding.char_to_token(end - 1))
        position = end
    return Tokenized(ids, owner, tuple(eos_at), spans)


def _overlapping(encoding, start: int, end: int, count: int) -> tuple[int, int] | None:
    """[first, stop): the tokens whose characters overlap [start, end), as _owners decides it."""
    if end <= start:
        return None
    first, last = encoding.char_to_token(start), encoding.char_to_token(end - 1)
    if first is None or last is None:
        return None
    # char_to_token gives the first token holding a character. Past `last` come the other pieces
    # of a character byte-level BPE split over several tokens, and a token running past the end.
    stop = last + 1
    while stop < count and (after := encoding.token_to_chars(stop)) and after[0] < end:
        stop += 1
    return first, stop


def _check_answered(conv: Conversation) -> None:
    if not conv.turns or conv.turns[-1].role not in ANSWER_ROLES:
        raise DataError(f"{conv.source}: the conversation must end with an answer to train on")


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
    import torch  # here, not at the top: reading and encoding data never needs it

    return {key: torch.tensor(rows, dtype=torch.long) for key, rows in batch.items()}


class Collator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.tokens = 0  # real (non-padding) tokens collated so far, for tokens/s
        self.slots = 0  # every position collated, padding included: 1 - tokens/slots is the padding share
        self.samples = 0  # samples collated so far: loss against samples seen compares packed and padded runs

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        self.tokens += sum(len(s["input_ids"]) for s in samples)
        self.samples += len(samples)
        batch = pad_batch(samples, self.pad_id)
        self.slots += batch["input_ids"].numel()
        return check_some_label(batch)


def check_some_label(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch whose every label is -100 has no loss to learn from (and gives NaN): stop and say so."""
    if "labels" in batch and not (batch["labels"] != IGNORE_INDEX).any():
        raise DataError(
            "a training batch has every label masked (-100): nothing to learn. Check data.train_on and the template "
            "with `lmtune data encode --show`, and that cutoff_len leaves room for the answers"
        )
    return batch
