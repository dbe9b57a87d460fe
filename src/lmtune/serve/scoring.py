"""The prompt's own log-probabilities, for `echo: true` on /v1/completions (what lm-evaluation-harness
reads for log-likelihood tasks): one forward pass over the prompts, every position's logits kept.

Rows asking for echo are scored before they join a batch (serve/decode.py): the prompt's text and
its logprobs go out first, then the row generates as any other; a row with max_tokens 0 ends there.
Prompts are scored together, left-padded in groups of about SCORE_TOKENS tokens, with the mask and
positions the batch's prefill uses, so the numbers are the model's own forward pass.
"""

from __future__ import annotations

import torch

from lmtune.data.encode import pad_batch

# Padded prompt tokens per scoring pass. Every position's logits are kept (tokens × vocabulary
# floats), so this is smaller than decode.PREFILL_TOKENS: 512 × 152k (Qwen) is 150 MB in bf16.
SCORE_TOKENS = 512


def score_rows(engine, rows: list) -> list:
    """Echo the prompt of each row that asks for it (its text, and its logprobs when asked); the rows
    still to generate (all but those with max_tokens 0, which end here), in their order."""
    echoing = [row for row in rows if row.sampling.echo and not row.cancelled()]
    scored = [row for row in echoing if row.sampling.logprobs]
    top = max((row.sampling.top_logprobs for row in scored), default=0)
    entries = iter(prompt_logprobs(engine, [row.prompt for row in scored], top))
    for row in echoing:
        row.echo = echo_text(engine, row.prompt)
        if row.sampling.logprobs:
            row.logprobs = [_trimmed(entry, row.sampling.top_logprobs) for entry in next(entries)]
        row.on_text(row.echo, list(row.logprobs))
        if row.sampling.max_tokens == 0:
            row.finished = True
            row.on_done(row.echo, "length", 0, row.logprobs)
    return [row for row in rows if not row.finished]


def prompt_logprobs(engine, prompts: list[list[int]], top: int) -> list[list[dict]]:
    """Each prompt's tokens as logprob entries ({"token", "logprob", "bytes", "top_logprobs"}, as
    decode gives generated tokens): the first token's logprob and top_logprobs are None (nothing
    predicts it), every later one is log p(token | the tokens before it)."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    found: dict[int, list[dict]] = {}
    group: list[int] = []
    for i in order + [None]:
        if i is None or (group and len(prompts[i]) * (len(group) + 1) > SCORE_TOKENS):
            if group:
                found.update(zip(group, _score(engine, [prompts[j] for j in group], top)))
            group = []
        if i is not None:
            group.append(i)
    return [found[i] for i in range(len(prompts))]


def _score(engine, prompts: list[list[int]], top: int) -> list[list[dict]]:
    """One left-padded forward pass over these prompts."""
    model, device = engine.model, engine.model.device
    padded = pad_batch([{"input_ids": p} for p in prompts], engine.tokenizer.pad_token_id, side="left")
    mask = padded["attention_mask"].to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        logits = model(input_ids=padded["input_ids"].to(device), attention_mask=mask, position_ids=positions, use_cache=False).logits
    rows = []
    for prompt, row_logits in zip(prompts, logits):
        # position t predicts token t + 1; the last position predicts the first generated token
        logprobs = row_logits[-len(prompt) : -1].float().log_softmax(-1)
        rows.append([_first(engine, prompt[0])] + [_entry(engine, logprobs[t], token, top) for t, token in enumerate(prompt[1:])])
    return rows


def _entry(engine, logprobs: torch.Tensor, token: int, top: int) -> dict:
    entry = token_entry(engine, token, float(logprobs[token]))
    values, indices = logprobs.topk(top) if top else (logprobs[:0], logprobs[:0].long())
    entry["top_logprobs"] = [token_entry(engine, int(i), float(v)) for v, i in zip(values, indices)]
    return entry


def _first(engine, token: int) -> dict:
    return {**token_entry(engine, token, None), "top_logprobs": None}


def token_entry(engine, token: int, logprob: float | None) -> dict:
    text = engine.tokenizer.decode([token])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def _trimmed(entry: dict, top: int) -> dict:
    """An entry with only this row's top_logprobs (the pass computed the most any row asked for)."""
    if entry["top_logprobs"] is None:
        return entry
    return {**entry, "top_logprobs": entry["top_logprobs"][:top]}


def echo_text(engine, prompt: list[int]) -> str:
    """The prompt as text, without the BOS the server puts before a string prompt."""
    bos = engine.encoder.bos
    ids = prompt[len(bos) :] if bos and prompt[: len(bos)] == bos else prompt
    return engine.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
