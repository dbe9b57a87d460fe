"""One batch of answers decoded step by step over a shared KV cache, each row with its own
sampling settings, seed, penalties and stop strings.

`model.generate` takes one GenerationConfig for the whole batch, but every request brings its own
temperature, penalties and seed, so the server runs its own loop: one prefill of the left-padded
prompts, then one forward pass per token for every row still going. A row that finishes, or whose
client went away, leaves the batch at once (the cache drops its row), so it costs nothing more.
Text reaches each client through the engine's TextStream: never half a UTF-8 character, never the
start of a stop string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import DynamicCache
from transformers.generation.logits_process import (
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lmtune.data.encode import pad_batch
from lmtune.infer.engine import Engine, TextStream


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


def decode(engine: Engine, rows: list[Row]) -> None:
    """Write every row's answer, calling its on_text as text becomes safe to show and on_done once."""
    model, device = engine.model, engine.model.device
    runs = [_Run(engine, row) for row in rows]
    batch = pad_batch([{"input_ids": row.prompt} for row in rows], engine.tokenizer.pad_token_id, side="left")
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each row counts from its own first token
    cache = DynamicCache(config=model.config)
    live = list(range(len(runs)))
    with torch.inference_mode():
        while True:
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1)
            tokens = [runs[i].step(out.logits[j, -1].float()) for j, i in enumerate(live)]
            keep = [j for j, i in enumerate(live) if not runs[i].row.finished]
            if not keep:
                return
            if len(keep) < len(live):  # finished rows leave the batch and its cache
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, positions = mask[index], positions[index]
                live, tokens = [live[j] for j in keep], [tokens[j] for j in keep]
            ids = torch.tensor(tokens, device=device)[:, None]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            positions = positions[:, -1:] + 1


class _Run:
    """A row's sampling and bookkeeping, one token at a time."""

    def __init__(self, engine: Engine, row: Row):
        self.engine, self.row, self.s = engine, row, row.sampling
        self.stream = TextStream(engine.tokenizer, row.stops, self._text)
        self.pending: list[dict] = []  # logprobs of tokens whose text the stream still holds back
        self.generator = None
        if self.s.temperature > 0:
            self.generator = torch.Generator(engine.model.device)
            self.generator.manual_seed(self.s.seed if self.s.seed is not None else torch.seed())

    def step(self, logits: torch.Tensor) -> int:
        """Pick the next token from this row's logits, stream it, and finish the row when it ends."""
        row = self.row
        if row.cancelled():
            row.finished = True
            return self.engine.tokenizer.pad_token_id
        token = self._pick(logits)
        row.ids.append(token)
        if self.s.logprobs:
            self.pending.append(self._logprob(logits, token))
        ended = token in self.engine.stop_ids and not self.s.ignore_eos
        if not ended:
            self.stream.add([token])
        if ended or self.stream.stopped or len(row.ids) >= self.s.max_tokens:
            self._finish()
        return token

    def _pick(self, logits: torch.Tensor) -> int:
        s, history = self.s, torch.tensor([self.row.prompt + self.row.ids], device=logits.device)
        scores = logits[None]
        # repetition_penalty and no_repeat_ngram_size look at prompt and answer, as in engine.generate
        if s.repetition_penalty != 1.0:
            scores = RepetitionPenaltyLogitsProcessor(s.repetition_penalty)(history, scores)
        if s.no_repeat_ngram_size:
            scores = NoRepeatNGramLogitsProcessor(s.no_repeat_ngram_size)(history, scores)
        if (s.presence_penalty or s.frequency_penalty) and self.row.ids:
            # OpenAI's definition: over the tokens generated so far, not the prompt
            counts = torch.bincount(torch.tensor(self.row.ids, device=logits.device), minlength=scores.shape[-1])[: scores.shape[-1]]
            scores = scores - s.frequency_penalty * counts - s.presence_penalty * (counts > 0)
        if s.temperature == 0:
            return int(scores.argmax(-1))
        scores = scores / s.temperature
        if s.top_k:
            scores = TopKLogitsWarper(s.top_k)(history, scores)
        if s.top_p < 1:
            scores = TopPLogitsWarper(s.top_p)(history, scores)
        return int(torch.multinomial(scores.softmax(-1), 1, generator=self.generator))

    def _logprob(self, logits: torch.Tensor, token: int) -> dict:
        """The model's own log-probabilities (before penalties and temperature), as vLLM reports them."""
        logprobs = logits.log_softmax(-1)
        entry = self._entry(token, float(logprobs[token]))
        if self.s.top_logprobs:
            values, indices = logprobs.topk(self.s.top_logprobs)
            entry["top_logprobs"] = [self._entry(int(i), float(v)) for v, i in zip(values, indices)]
        else:
            entry["top_logprobs"] = []
        return entry

    def _entry(self, token: int, logprob: float) -> dict:
        text = self.engine.tokenizer.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    def _text(self, text: str) -> None:
        pending, self.pending = self.pending, []
        self.row.logprobs.extend(pending)
        self.row.on_text(text, pending)

    def _finish(self) -> None:
        row = self.row
        row.finished = True
        self.stream.end()
        if self.pending:  # tokens that never showed as text (EOS, a stop string) still have logprobs
            self._text("")
        reply = self.engine.reply(torch.tensor(row.ids), row.stops)
        row.on_done(reply.text, reply.finish_reason, len(row.ids), row.logprobs)
