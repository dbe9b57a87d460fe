"""/v1/completions beyond one string: prompts as token ids, several prompts in one request, and
OpenAI's legacy logprobs shape (tokens, token_logprobs, top_logprobs, text_offset) that
lm-evaluation-harness reads.

A string prompt is tokenized without special tokens, after the tokenizer's BOS where it puts one
itself (Llama; not twice when the text starts with it); `add_special_tokens: false` leaves BOS out.
Token ids are the model's input exactly. An empty prompt starts from BOS, as OpenAI's starts a new
document from <|endoftext|>; a tokenizer without BOS cannot start from nothing, which is a 400.
"""

from __future__ import annotations

from lmtune.serve.schemas import ApiError


def completion_ids(engine, prompt: str | list[int], add_special_tokens: bool = True) -> list[int]:
    """The prompt's token ids, or a 400 that says what is wrong with it."""
    tokenizer, bos = engine.tokenizer, engine.encoder.bos
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        if add_special_tokens and bos and ids[: len(bos)] != bos:
            ids = bos + ids
    else:
        ids = list(prompt)
        vocab = engine.vocab_size
        bad = next((token for token in ids if not 0 <= token < vocab), None)
        if bad is not None:
            raise ApiError(400, f"prompt: token id {bad} is outside this model's vocabulary (0 to {vocab - 1})", "prompt")
    if ids:
        return ids
    if tokenizer.bos_token_id is None:
        raise ApiError(400, "prompt: empty, and this model's tokenizer has no BOS token to start from; give at least one token", "prompt")
    return [tokenizer.bos_token_id]


def legacy_logprobs(entries: list[dict], offset: int = 0) -> dict:
    """Logprob entries (serve/decode.py, serve/scoring.py) in OpenAI's legacy completions shape:
    top_logprobs as {token: logprob} holding the likeliest tokens and the chosen one (up to
    logprobs + 1, as OpenAI says); text_offset counts characters from `offset`."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry["token"])
    tops = [None if entry["top_logprobs"] is None else
            {**{top["token"]: top["logprob"] for top in entry["top_logprobs"]}, entry["token"]: entry["logprob"]} for entry in entries]
    return {"tokens": [entry["token"] for entry in entries], "token_logprobs": [entry["logprob"] for entry in entries],
            "top_logprobs": tops, "text_offset": offsets}


def merged(answers: list[dict], n: int) -> dict:
    """One answer for several prompts: prompt i's choice j at index i × n + j, usage summed."""
    choices = [{**choice, "index": i * n + choice["index"]} for i, answer in enumerate(answers) for choice in answer["choices"]]
    usage = {key: sum(answer["usage"][key] for answer in answers) for key in answers[0]["usage"]}
    return {**answers[0], "choices": choices, "usage": usage}
