"""Preference accuracy: the share of pairs where the model finds the chosen answer more likely than
the rejected one (summed log-probabilities of the answer tokens, as DPO compares them), or, for a
reward model (data.stage: rm), scores it higher."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lmtune.data.encode import Encoder
from lmtune.data.pref import Pair, PairSample, encode_pairs


def preference_accuracy(engine, pairs: list[Pair], cutoff_len: int, batch_size: int,
                        progress: Callable[[int], None] = lambda n: None) -> dict:
    samples = encode_pairs(pairs, Encoder(engine.tokenizer, engine.template, cutoff_len))
    score = reward_scores if is_reward_model(engine.model) else pair_logps
    chosen, rejected = score(engine.model, samples, engine.tokenizer.pad_token_id, batch_size, progress)
    margins = chosen - rejected
    return {"accuracy": float((margins > 0).float().mean()), "margin": float(margins.mean()), "pairs": len(samples)}


def is_reward_model(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return type(base).__name__.endswith("ForSequenceClassification")


def pair_logps(model, samples: list[PairSample], pad_id: int, batch_size: int,
               progress: Callable[[int], None] = lambda n: None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each pair's chosen and of its rejected answer, given the prompt."""
    return _both(lambda rows: _answer_logps(model, rows, pad_id), samples, batch_size, progress)


def reward_scores(model, samples: list[PairSample], pad_id: int, batch_size: int,
                  progress: Callable[[int], None] = lambda n: None) -> tuple[torch.Tensor, torch.Tensor]:
    """A reward model's score of each pair's prompt + chosen and prompt + rejected."""
    return _both(lambda rows: _rewards(model, rows, pad_id), samples, batch_size, progress)


def _both(score, samples, batch_size, progress) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [(s.prompt_ids, answer) for s in samples for answer in (s.chosen_ids, s.rejected_ids)]
    scores = []
    for start in range(0, len(rows), batch_size):
        scores.append(score(rows[start : start + batch_size]))
        progress(len(rows[start : start + batch_size]) // 2)
    both = torch.cat(scores) if scores else torch.zeros(0)
    return both[0::2], both[1::2]


def _padded(rows: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded ids, attention mask and the answer positions of (prompt, answer) rows."""
    longest = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    answer = torch.zeros_like(ids, dtype=torch.bool)
    for i, (prompt, reply) in enumerate(rows):
        n = len(prompt) + len(reply)
        ids[i, :n] = torch.tensor(prompt + reply)
        mask[i, :n] = 1
        answer[i, len(prompt) : n] = True
    return ids, mask, answer


def _answer_logps(model, rows: list[tuple[list[int], list[int]]], pad_id: int) -> torch.Tensor:
    ids, mask, answer = _padded(rows, pad_id)
    device = model.device
    with torch.inference_mode():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, -ids.shape[1]:].float()
    logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None].to(device)).squeeze(-1)
    return (logps * answer[:, 1:].to(device)).sum(-1).cpu()


def _rewards(model, rows: list[tuple[list[int], list[int]]], pad_id: int) -> torch.Tensor:
    ids, mask, _ = _padded(rows, pad_id)
    with torch.inference_mode():
        return model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits[:, 0].float().cpu()
