"""The next token of every row in a batch at once, each row with its own sampling settings.

One batched pass replaces a Python loop of small torch ops per row (the step loop spent more time
there than in the model's forward at batch 32 on CPU): the settings are per-row tensors, and the
token counts the penalties need are kept up to date one scatter per step instead of rebuilding each
row's history. The arithmetic is the one transformers' processors do for one row
(RepetitionPenaltyLogitsProcessor, TopKLogitsWarper, TopPLogitsWarper), so a request's answer does
not depend on who else is in the batch. no_repeat_ngram_size (rare) stays per row; a seeded row
draws with its own torch.Generator, so its answer is redoable. A row with a constraint (structured
output, infer/grammar.py) keeps only the tokens its grammar allows, before penalties and sampling,
so constrained and free rows share a batch.
"""

from __future__ import annotations

import torch
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor


_PER_ROW = ("temperature", "top_k", "top_p", "repetition", "presence", "frequency", "seen", "counts")


class Sampler:
    """Per-row settings and token counts of the rows still in the batch, in batch order."""

    def __init__(self, runs: list, vocab: int, device):
        settings = [run.s for run in runs]
        tensor = lambda values, dtype=torch.float32: torch.tensor(values, dtype=dtype, device=device)  # noqa: E731
        self.runs, self.vocab = list(runs), vocab
        self.temperature = tensor([s.temperature for s in settings])
        self.top_k = tensor([min(s.top_k, vocab) if s.top_k else vocab for s in settings], torch.long)
        self.top_p = tensor([s.top_p for s in settings])
        self.repetition = tensor([s.repetition_penalty for s in settings])
        self.presence = tensor([s.presence_penalty for s in settings])
        self.frequency = tensor([s.frequency_penalty for s in settings])
        self.seen = self.counts = None  # only when some row asks for a penalty that needs them
        if any(s.repetition_penalty != 1.0 for s in settings):  # prompt and answer, as in engine.generate
            self.seen = torch.zeros(len(runs), vocab, dtype=torch.bool, device=device)
            for i, run in enumerate(runs):
                self.seen[i, tensor(run.row.prompt + run.row.ids, torch.long)] = True
        if any(s.presence_penalty or s.frequency_penalty for s in settings):  # OpenAI: the answer only
            self.counts = torch.zeros(len(runs), vocab, device=device)
            for i, run in enumerate(runs):
                if run.row.ids:
                    self.counts[i] = torch.bincount(tensor(run.row.ids, torch.long), minlength=vocab)[:vocab].float()

    def pick(self, logits: torch.Tensor) -> list[int]:
        """The next token of every row, from logits (rows × vocab, float)."""
        scores = self._penalised(self._constrained(logits))
        tokens = scores.argmax(-1)
        sampled = (self.temperature > 0).nonzero().flatten()
        if len(sampled):
            tokens[sampled] = self._sample(scores[sampled], sampled)
        return tokens.tolist()

    def add(self, tokens: list[int]) -> None:
        """Every row's new token, for the penalties and grammars of the next step."""
        for run, token in zip(self.runs, tokens, strict=True):
            if run.row.constraint is not None:
                run.row.constraint.consume(token)
        if (self.seen is None and self.counts is None) or not tokens:
            return
        rows = torch.arange(len(tokens), device=self.temperature.device)
        index = torch.tensor(tokens, device=rows.device)
        if self.seen is not None:
            self.seen[rows, index] = True
        if self.counts is not None:
            self.counts[rows, index] += 1

    def select(self, keep: list[int]) -> None:
        """Only the rows at these positions stay."""
        self.runs = [self.runs[j] for j in keep]
        index = torch.tensor(keep, dtype=torch.long, device=self.temperature.device)
        for name in _PER_ROW:
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name)[index])

    def extend(self, other: Sampler) -> None:
        """other's rows join at the end of the batch."""
        self.runs += other.runs
        for name in _PER_ROW:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is None and theirs is None:
                continue
            if mine is None or theirs is None:  # rows that ask for no such penalty never read it: zeros do
                rows = len(self.runs) - len(other.runs) if mine is None else len(other.runs)
                blank = torch.zeros(rows, self.vocab, dtype=(theirs if mine is None else mine).dtype, device=self.temperature.device)
                mine, theirs = (blank, theirs) if mine is None else (mine, blank)
            setattr(self, name, torch.cat([mine, theirs]))

    def _constrained(self, logits: torch.Tensor) -> torch.Tensor:
        """Each constrained row's logits with what its grammar forbids at -inf (a copy: logprobs read the model's own)."""
        matchers = {i: run.row.constraint for i, run in enumerate(self.runs) if run.row.constraint is not None}
        if not matchers:
            return logits
        from lmtune.infer.grammar import masked

        return masked(logits, matchers, self.runs[0].engine.stop_ids)

    def _penalised(self, logits: torch.Tensor) -> torch.Tensor:
        scores = logits
        if self.seen is not None:  # RepetitionPenaltyLogitsProcessor's arithmetic, on the tokens seen
            penalty = self.repetition[:, None]
            scores = torch.where(self.seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)
        for i, run in enumerate(self.runs):
            if run.s.no_repeat_ngram_size:
                history = torch.tensor([run.row.prompt + run.row.ids], device=logits.device)
                scores = scores.clone() if scores is logits else scores
                scores[i : i + 1] = NoRepeatNGramLogitsProcessor(run.s.no_repeat_ngram_size)(history, scores[i : i + 1])
        if self.counts is not None:
            scores = scores - self.frequency[:, None] * self.counts - self.presence[:, None] * (self.counts > 0)
        return scores

    def _sample(self, scores: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Temperature, top-k and top-p for the sampled rows (one sort), then one draw per row."""
        scores = scores / self.temperature[rows, None]
        ordered, order = scores.sort(-1, descending=True)
        kth = ordered.gather(-1, self.top_k[rows, None] - 1)  # TopKLogitsWarper: below the k-th value goes
        ordered = ordered.masked_fill(ordered < kth, float("-inf"))
        # TopPLogitsWarper: ascending, drop the low tail whose probability adds up to at most 1 - top_p,
        # always keeping the most likely token
        cumulative = ordered.flip(-1).softmax(-1).cumsum(-1)
        drop = cumulative <= (1 - self.top_p[rows, None])
        drop[:, -1] = False
        ordered = ordered.masked_fill(drop.flip(-1), float("-inf"))
        probs = torch.empty_like(scores).scatter_(-1, order, ordered).softmax(-1)
        tokens = torch.empty(len(rows), dtype=torch.long, device=scores.device)
        shared = [j for j, i in enumerate(rows.tolist()) if self.runs[i].generator is None]
        if shared:  # unseeded rows: one draw from the default generator
            tokens[shared] = torch.multinomial(probs[shared], 1).flatten()
        for j, i in enumerate(rows.tolist()):
            if self.runs[i].generator is not None:
                tokens[j] = torch.multinomial(probs[j : j + 1], 1, generator=self.runs[i].generator).flatten()
        return tokens
