"""One batch of answers decoded step by step over a shared KV cache, each row with its own
sampling settings, seed, penalties and stop strings.

`model.generate` takes one GenerationConfig for the whole batch, but every request brings its own
temperature, penalties and seed, so the server runs its own loop: one prefill of the left-padded
prompts, then one forward pass per token for every row still going. A row that finishes, or whose
client went away, leaves the batch at once (the cache drops its row), so it costs nothing more.
Every row's token is picked in one batched pass (serve/sampler.py), and rows that arrive while the
batch runs join it between steps (their own prefill, left-padded to the batch's width, then
concatenated into its cache).

Two things keep the CPU busy with useful work (benchmarks/RESULTS.md, issue 12): prompts are
prefilled sorted by length in groups of about PREFILL_TOKENS padded tokens, not as one block padded
to the longest, and the KV cache is written in place into room kept at its end (_GrowingLayer)
instead of being copied whole by torch.cat at every step.

Text reaches each client through the engine's TextStream: never half a UTF-8 character, never the
start of a stop string.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from lmtune.data.encode import pad_batch
from lmtune.infer.engine import Engine, TextStream
from lmtune.serve.sampler import Sampler
from lmtune.serve.scoring import score_rows, token_entry

# Padded prompt tokens per prefill forward pass. On the 2-core CPU, 32 prompts of 120-183 tokens took
# 0.27 s as one padded block, 0.18 s one by one and 0.16 s in length-sorted groups of 512-1024
# tokens; larger blocks lose to padding and memory traffic. A GPU would take larger blocks, but
# prefill is rarely its bottleneck at this size either.
PREFILL_TOKENS = 1024


@dataclass
class Sampling:
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    no_repeat_ngram_size: int
    presence_penalty: float
    frequency_penalty: float
    max_tokens: int
    seed: int | None
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False
    echo: bool = False  # the prompt's text (and, with logprobs, its logprobs) first: serve/scoring.py


@dataclass
class Row:
    """One answer being written: the prompt, its settings, and where its text goes."""

    prompt: list[int]
    sampling: Sampling
    stops: tuple[str, ...]
    on_text: Callable[[str, list], None]  # (new text, logprobs of the tokens behind it)
    on_done: Callable[[str, str, int, list], None]  # (text, finish_reason, completion tokens, all logprobs)
    cancelled: Callable[[], bool] = lambda: False
    ids: list[int] = field(default_factory=list)
    logprobs: list[dict] = field(default_factory=list)
    finished: bool = False
    echo: str = ""  # the prompt's text, before the answer's (echo)
    constraint: object = None  # infer/grammar.py's Matcher: the grammar the answer follows (serve/sampler.py applies it)


def decode(engine: Engine, rows: list[Row], more: Callable[[int], list[Row]] | None = None) -> None:
    """Write every row's answer, calling its on_text as text becomes safe to show and on_done once.

    more(live rows) is asked between steps for further rows (the batcher's queue): they are
    prefilled on their own and join the running batch (continuous batching), so a request that
    arrives mid-batch starts at once instead of waiting for the whole batch to end."""
    joinable = _joinable(engine.model.config)
    joining = more if more and joinable else (lambda live: [])
    with torch.inference_mode():
        rows = score_rows(engine, rows)  # echo: the prompt's logprobs; rows with max_tokens 0 end here
        if not rows:
            return
        batch = _prefilled(engine, rows, joinable)
        while True:
            batch.step()
            newcomers = score_rows(engine, joining(len(batch.runs)))
            if newcomers:
                arrived = _prefilled(engine, newcomers, joinable)
                arrived.step()
                batch = batch.join(arrived)
            if not batch.runs:
                return
            batch.advance()


def _prefilled(engine: Engine, rows: list[Row], joinable: bool) -> _Batch:
    """One batch of these rows, their prompts prefilled shortest first in groups of at most
    PREFILL_TOKENS padded tokens, then joined (or all in one block when caches cannot be joined)."""
    if not joinable:
        return _Batch(engine, rows)
    groups, group = [], []
    for row in sorted(rows, key=lambda row: len(row.prompt)):
        if group and len(row.prompt) * (len(group) + 1) > PREFILL_TOKENS:
            groups.append(group)
            group = []
        group.append(row)
    return functools.reduce(_Batch.join, (_Batch(engine, group) for group in groups + [group]))


def _new_cache(config) -> DynamicCache:
    """transformers' cache for this model, its plain layers replaced by ones that grow in place."""
    cache = DynamicCache(config=config)
    cache.layers = [_GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def _joinable(config) -> bool:
    """Whether batches' caches can be joined: growing layers only (a sliding-window layer keeps more
    state than keys and values)."""
    return all(isinstance(layer, _GrowingLayer) for layer in _new_cache(config).layers)


class _GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views of larger buffers ("rooms"): a new token is
    written into the room kept at their end instead of torch.cat copying the whole cache at every
    step. Rows leaving or joining cost one copy into fresh rooms."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._lay_out([], 0, key_states)
        had, new = self.get_seq_length(), key_states.shape[-2]
        if had + new > self._rooms[0].shape[-2]:
            self._lay_out([(self.keys, self.values)], had, key_states, coming=new)
        for room, states in zip(self._rooms, (key_states, value_states)):
            room[:, :, had : had + new] = states
        self._show(had + new)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Rows leaving: one copy of the rest (DynamicLayer's would be copied again at the next update)."""
        if length := self.get_seq_length():
            self._rooms = tuple(room[indices] for room in self._rooms)
            self._show(length)

    def join(self, other: _GrowingLayer, width: int) -> None:
        """other's rows after these, both left-padded to width."""
        self._lay_out([(self.keys, self.values), (other.keys, other.values)], width, self.keys)

    def _lay_out(self, parts: list[tuple[torch.Tensor, torch.Tensor]], width: int, like: torch.Tensor, coming: int = 0) -> None:
        """Fresh rooms holding the parts' rows one after another, each part's keys and values ending
        at `width`, the left padding zeroed (masked, but never garbage: 0 × NaN would still be NaN),
        with room for `coming` tokens and more."""
        rows = sum(len(keys) for keys, _ in parts) or len(like)
        spare = max(64, (width + coming) // 4)  # a long answer moves a few times, not at every step
        shape = (rows, like.shape[1], width + coming + spare, like.shape[-1])
        self._rooms = (like.new_zeros(shape), like.new_zeros(shape))
        first = 0
        for keys, values in parts:
            for room, part in zip(self._rooms, (keys, values)):
                room[first : first + len(part), :, width - part.shape[-2] : width] = part
            first += len(keys)
        self._show(width)

    def _show(self, length: int) -> None:
        self.keys, self.values = (room[:, :, :length] for room in self._rooms)


class _Batch:
    """Rows decoding together: their shared KV cache, attention mask, sampler and next tokens."""

    def __init__(self, engine: Engine, rows: list[Row]):
        """Prefill: one forward pass over the left-padded prompts, each row's first token picked."""
        device = engine.model.device
        self.engine, self.runs = engine, [_Run(engine, row) for row in rows]
        padded = pad_batch([{"input_ids": row.prompt} for row in rows], engine.tokenizer.pad_token_id, side="left")
        self.mask = padded["attention_mask"].to(device)
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each row counts from its own first token
        self.cache = _new_cache(engine.model.config)
        self.sampler: Sampler | None = None
        self._forward(padded["input_ids"].to(device))

    def _forward(self, ids: torch.Tensor) -> None:
        out = self.engine.model(input_ids=ids, attention_mask=self.mask, position_ids=self.positions,
                                past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.logits = out.logits[:, -1].float()
        if self.sampler is None:
            self.sampler = Sampler(self.runs, self.logits.shape[-1], self.logits.device)
        self.tokens = self.sampler.pick(self.logits)

    def step(self) -> None:
        """Hand each row its token; finished rows leave the batch and its cache."""
        for run, token, logits in zip(self.runs, self.tokens, self.logits, strict=True):
            run.step(logits, token)
        keep = [j for j, run in enumerate(self.runs) if not run.row.finished]
        if len(keep) < len(self.runs):
            if keep:
                index = torch.tensor(keep, device=self.mask.device)
                self.cache.batch_select_indices(index)
                self.mask, self.positions, self.logits = self.mask[index], self.positions[index], self.logits[index]
            self.tokens = [self.tokens[j] for j in keep]
            self.sampler.select(keep)
            self.runs = self.sampler.runs
        self.sampler.add(self.tokens)

    def advance(self) -> None:
        """One forward pass feeding every row its new token; the next tokens picked."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.runs), 1)], dim=1)
        self.positions = self.positions[:, -1:] + 1
        self._forward(torch.tensor(self.tokens, device=self.mask.device)[:, None])

    def join(self, other: _Batch) -> _Batch:
        """One batch of both (both stepped already, or neither), left-padded to one width: masked, so
        attended by nobody."""
        if not self.runs or not other.runs:
            return self if other.runs == [] else other
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.join(theirs, width)
        pad = lambda mask: torch.nn.functional.pad(mask, (width - mask.shape[1], 0))  # noqa: E731
        self.mask = torch.cat([pad(self.mask), pad(other.mask)])
        self.positions = torch.cat([self.positions[:, -1:], other.positions[:, -1:]])
        self.logits = torch.cat([self.logits, other.logits])  # what step() hands each row with its token
        self.sampler.extend(other.sampler)
        self.runs, self.tokens = self.sampler.runs, self.tokens + other.tokens
        return self


class Answer:
    """A row's text and bookkeeping, one token at a time, whichever engine picked the token (this
    module's batch, or vLLM: serve/vllm.py): never half a UTF-8 character or the start of a stop
    string streamed, the answer cut and ended as engine.reply says."""

    def __init__(self, engine: Engine, row: Row):
        self.engine, self.row, self.s = engine, row, row.sampling
        self.stream = TextStream(engine.tokenizer, row.stops, self._text)
        self.pending: list[dict] = []  # logprobs of tokens whose text the stream still holds back
        self.echoed = False  # the prompt's echo has gone out (serve/vllm.py)

    def take(self, token: int, logprob: dict | None = None) -> None:
        """The row's next token (and its logprob entry, when asked for); the row finishes when it ends."""
        row = self.row
        row.ids.append(token)
        if logprob is not None:
            self.pending.append(logprob)
        ended = token in self.engine.stop_ids and not self.s.ignore_eos
        if not ended:
            self.stream.add([token])
        if ended or self.stream.stopped or len(row.ids) >= self.s.max_tokens:
            self.finish()

    def _text(self, text: str) -> None:
        pending, self.pending = self.pending, []
        self.row.logprobs.extend(pending)
        self.row.on_text(text, pending)

    def finish(self) -> None:
        """The row ends here: what the stream held back goes out, then its reply."""
        row = self.row
        row.finished = True
        self.stream.end()
        if self.pending:  # tokens that never showed as text (EOS, a stop string) still have logprobs
            self._text("")
        reply = self.engine.reply(torch.tensor(row.ids, dtype=torch.long), row.stops)
        row.on_done(row.echo + reply.text, reply.finish_reason, len(row.ids), row.logprobs)


class _Run(Answer):
    """A row of this module's batch: its tokens picked from the logits, here or by the batch's sampler."""

    def __init__(self, engine: Engine, row: Row):
        super().__init__(engine, row)
        self.generator = None  # a seeded row draws from its own generator; the others share the default one
        if self.s.temperature > 0 and self.s.seed is not None:
            self.generator = torch.Generator(engine.model.device)
            self.generator.manual_seed(self.s.seed)

    def step(self, logits: torch.Tensor, token: int | None = None) -> int:
        """Stream the token the batch picked from this row's logits (or pick it here, for a row
        decoded alone), and finish the row when it ends."""
        if self.row.cancelled():
            self.row.finished = True
            return self.engine.tokenizer.pad_token_id
        if token is None:  # not picked by a batch
            token = self._pick(logits)
        self.take(token, self._logprob(logits, token) if self.s.logprobs else None)
        return token

    def _pick(self, logits: torch.Tensor) -> int:
        """This row's next token from its logits alone (a batch of one)."""
        return Sampler([self], logits.shape[-1], logits.device).pick(logits[None].float())[0]

    def _logprob(self, logits: torch.Tensor, token: int) -> dict:
        """The model's own log-probabilities (before penalties and temperature), as vLLM reports them."""
        logprobs = logits.log_softmax(-1)
        entry = token_entry(self.engine, token, float(logprobs[token]))
        if self.s.top_logprobs:
            values, indices = logprobs.topk(self.s.top_logprobs)
            entry["top_logprobs"] = [token_entry(self.engine, int(i), float(v)) for v, i in zip(values, indices)]
        else:
            entry["top_logprobs"] = []
        return entry
