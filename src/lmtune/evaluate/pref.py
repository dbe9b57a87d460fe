"""Preference accuracy: the share of pairs where the model finds the chosen answer more likely than
the rejected one (summed log-probabilities of the answer tokens, as DPO compares them)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lmtune.data.encode import Encoder
from lmtune.data.pref import Pair, PairSample, encode_pairs


def preference_accuracy(engine, pairs: list[Pair], cutoff_len: int, batch_size: int,
                        progress: Callable[[int], None] = lambda n: None) -> dict:
    samples = encode_pairs(pairs, Encoder(engine.tokenizer, engine.template, cutoff_len))
    chosen, rejected = pair_logps(engine.model, samples, engine.tokenizer.pad_token_id, batch_size, progress)
    margins = chosen - rejected
    return {"accuracy": float((margins > 0).float().mean()), "margin": float(margins.mean()), "pairs": len(samples)}


def pair_logps(model, samples: list[PairSample], pad_id: int, batch_size: int,
               progress: Callable[[int], None] = lambda n: None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each pair's chosen and of its rejected answer, given the prompt."""
    rows = [(s.prompt_ids, answer) for s in samples for answer in (s.chosen_ids, s.rejected_ids)]
    scores = []
    for start in range(0, len(rows), batch_size):
        scores.append(_answer_logps(model, rows[start : start + batch_size], pad_id))
        progress(len(rows[start : start + batch_size]) // 2)
    both = torch.cat(scores) if scores else torch.zeros(0)
    return both[0::2], both[1::2]


def _answer_logps(model, rows: list[tuple[list[int], list[int]]], pad_id: int) -> torch.Tensor:
    longest = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    answer = torch.zeros_like(ids, dtype=torch.bool)
    for i, (prompt, reply) in enumerate(rows):
        n = len(prompt) + len(reply)
        ids[i, :n] = torch.tensor(prompt + reply)
        mask[i, :n] = 1
        answer[i, len(prompt) : n] = True
    device = model.device
    with torch.inference_mode():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, -longest:].float()
    logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None].to(device)).squeeze(-1)
    return (logps * answer[:, 1:].to(device)).sum(-1).cpu()
