"""The server's batched sampling and continuous batching: a row's answer does not depend on who else
is in the batch. The batched Sampler picks what transformers' processors pick for each row alone;
a row that joins a running batch mid-way answers as it does alone."""

from __future__ import annotations

import random

import torch
from transformers.generation.logits_process import (
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lmtune.serve.decode import Row, Sampling, decode
from lmtune.serve.sampler import Sampler

VOCAB = 300


class _Run:  # what Sampler reads of a decode._Run
    def __init__(self, row: Row):
        self.row, self.s, self.generator = row, row.sampling, None
        if self.s.temperature > 0 and self.s.seed is not None:
            self.generator = torch.Generator().manual_seed(self.s.seed)


def one_row(run: _Run, logits: torch.Tensor) -> int:
    """The per-row reference: transformers' processors in the order engine.generate applies them."""
    s, row = run.s, run.row
    history, scores = torch.tensor([row.prompt + row.ids]), logits[None]
    if s.repetition_penalty != 1.0:
        scores = RepetitionPenaltyLogitsProcessor(s.repetition_penalty)(history, scores)
    if s.no_repeat_ngram_size:
        scores = NoRepeatNGramLogitsProcessor(s.no_repeat_ngram_size)(history, scores)
    if row.ids:
        counts = torch.bincount(torch.tensor(row.ids), minlength=VOCAB)
        scores = scores - s.frequency_penalty * counts - s.presence_penalty * (counts > 0)
    if s.temperature == 0:
        return int(scores.argmax(-1))
    scores = scores / s.temperature
    if s.top_k:
        scores = TopKLogitsWarper(s.top_k)(history, scores)
    if s.top_p < 1:
        scores = TopPLogitsWarper(s.top_p)(history, scores)
    return int(torch.multinomial(scores.softmax(-1), 1, generator=run.generator))


def random_row(rng: random.Random, i: int) -> Row:
    temperature = rng.choice([0, 0, 0.7, 1.5])
    sampling = Sampling(temperature, rng.choice([1.0, 0.9, 0.5]), rng.choice([0, 5, 50]), rng.choice([1.0, 1.3, 0.8]),
                        rng.choice([0, 0, 2]), rng.choice([0, 0.5, -1]), rng.choice([0, 0.3]), 10, 100 + i if temperature else None)
    prompt = [rng.randrange(VOCAB) for _ in range(8)]
    return Row(prompt, sampling, (), lambda *a: None, lambda *a: None, ids=[rng.randrange(VOCAB) for _ in range(rng.randrange(4))])


def test_batched_sampling_picks_what_each_row_picks_alone():
    rng = random.Random(0)
    torch.manual_seed(0)
    for _ in range(10):
        rows = [random_row(rng, i) for i in range(12)]
        alone = [_Run(Row(r.prompt, r.sampling, (), r.on_text, r.on_done, ids=list(r.ids))) for r in rows]
        batched = [_Run(r) for r in rows]
        sampler = Sampler(batched[:5], VOCAB, "cpu")
        sampler.extend(Sampler(batched[5:], VOCAB, "cpu"))  # rows that join a running batch
        keep = sorted(rng.sample(range(12), 9))
        sampler.select(keep)  # rows that leave it
        alone = [alone[j] for j in keep]
        for _ in range(4):
            logits = torch.randn(len(keep), VOCAB) * 3
            expected = [one_row(run, logits[i]) for i, run in enumerate(alone)]
            assert sampler.pick(logits) == expected
            for run, token in zip([*alone, *sampler.runs], expected * 2):
                run.row.ids.append(token)
            sampler.add(expected)


def test_a_row_that_joins_a_running_batch_answers_as_alone(full_run):
    from lmtune.infer.engine import load_engine

    engine = load_engine(model=str(full_run / "out"))
    prompts = [engine.tokenizer.encode(text) for text in ("What is the capital of France?", "hi", "Name three colours, please.")]

    def row(prompt, n=8, penalty=1.0):
        return Row(prompt, Sampling(0, 1, 0, penalty, 0, 0, 0, n, None, ignore_eos=True), (), lambda *a: None, lambda *a: None)

    alone = []
    for i, prompt in enumerate(prompts):
        decode(engine, [single := row(prompt, penalty=1.3 if i == 1 else 1.0)])
        alone.append(single.ids)
    late = [row(prompt, penalty=1.3 if i == 1 else 1.0) for i, prompt in enumerate(prompts)]
    arrivals = {2: late[:2], 5: late[2:]}  # after the 2nd and 5th step; the first row has left by the 5th
    steps = iter(range(1, 100))
    first = [row(prompts[0], n=3), row(prompts[2], n=12)]
    decode(engine, first, more=lambda live: arrivals.pop(next(steps), []))
    assert first[0].ids == alone[0][:3] and first[1].ids[:8] == alone[2]
    assert [r.ids for r in late] == alone


def test_grouped_prefill_and_a_growing_cache_answer_as_a_cacheless_model(llama_dir, monkeypatch):
    """Prompts prefilled in several length-sorted groups and then joined, answers long enough to
    outgrow the cache's spare room: every row still answers what the model answers with no cache
    at all (each token from a forward pass over the whole text)."""
    from lmtune.infer.engine import load_engine
    from lmtune.serve import decode as decoding

    engine = load_engine(model=str(llama_dir), template="alpaca")
    torch.manual_seed(0)
    for weight in engine.model.parameters():  # drawn wider than at init (0.02), so that answers depend on context
        if weight.dim() == 2:
            torch.nn.init.normal_(weight, std=0.3)
    texts = ("hi", "What is the capital of France?", "Name three colours, please.", "Tell me a long story about a city by the water.")
    prompts = [engine.tokenizer.encode(text) for text in texts]
    expected = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = list(prompt)
            for _ in range(90):
                ids.append(int(engine.model(torch.tensor([ids])).logits[0, -1].argmax()))
            expected.append(ids[len(prompt):])
    monkeypatch.setattr(decoding, "PREFILL_TOKENS", 2 * max(map(len, prompts)))  # groups of one or two rows
    rows = [Row(p, Sampling(0, 1, 0, 1.0, 0, 0, 0, 90, None, ignore_eos=True), (), lambda *a: None, lambda *a: None) for p in prompts]
    decode(engine, rows)
    assert [row.ids for row in rows] == expected
    assert len(set(map(tuple, expected))) == len(prompts)  # not one degenerate answer for all
