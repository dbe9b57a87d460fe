"""Preference pairs: a prompt, a chosen and a rejected answer, in the layouts users bring, rendered
by the same template as SFT and tokenized for TRL's DPOTrainer.

Layouts (each with LLaMA-Factory's column and tag renames):
- alpaca with chosen/rejected:   {"instruction", "input", "chosen": "…", "rejected": "…"}
- sharegpt / OpenAI messages:    {"conversations" | "messages": [… ending with the user], "chosen": message or text, "rejected": …}
- prompt/chosen/rejected:        {"prompt": text or messages, "chosen": text or messages, "rejected": …}
  (UltraFeedback's chosen/rejected repeat the prompt's messages; TRL's hold the answer alone.)

A pair is converted as two conversations, prompt + chosen and prompt + rejected, through the SFT
converters, so every record problem reads as it does for SFT data; then the two prompts must agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lmtune.data.encode import Encoder
from lmtune.data.formats import MESSAGES_TAGS, SHAREGPT_TAGS, detect_format, to_conversation, type_name
from lmtune.data.records import ASSISTANT, Conversation
from lmtune.errors import DataError, RecordError

PAIR_STAGES = ("dpo", "rm")
_TAGS = {"sharegpt": SHAREGPT_TAGS, "messages": MESSAGES_TAGS}
_MESSAGE_COLUMN = {"sharegpt": "conversations", "messages": "messages"}


@dataclass
class Pair(Conversation):
    """The prompt and the chosen answer as a Conversation (so filters, mix and split treat a pair as
    its chosen conversation), with the rejected answer beside it."""

    rejected: str = ""


@dataclass
class PairSample:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    truncated: bool = False

    @property
    def input_ids(self) -> list[int]:  # every id, for the check against the embedding table
        return self.prompt_ids + self.chosen_ids + self.rejected_ids

    def row(self) -> dict[str, list[int]]:
        return {"prompt_ids": self.prompt_ids, "chosen_ids": self.chosen_ids, "rejected_ids": self.rejected_ids}

    def whole_row(self) -> dict[str, list[int]]:
        """Prompt and answer as one sequence each, as a reward model scores them."""
        return {"chosen_ids": self.prompt_ids + self.chosen_ids, "rejected_ids": self.prompt_ids + self.rejected_ids}


def is_pair(record: dict[str, Any], columns: dict[str, str] | None) -> bool:
    columns = columns or {}
    return columns.get("chosen", "chosen") in record and columns.get("rejected", "rejected") in record


def detect_pair_format(record: dict[str, Any]) -> str:
    """The SFT format of the prompt, or "prompt" for the prompt/chosen/rejected layout."""
    if "prompt" in record and not any(key in record for key in ("instruction", "conversations", "messages")):
        return "prompt"
    return detect_format(record)


def to_pair(record: dict[str, Any], fmt: str, columns=None, tags=None, ignored: list[str] | None = None) -> Pair:
    columns = columns or {}
    names = columns.get("chosen", "chosen"), columns.get("rejected", "rejected")
    missing = [name for name in names if name not in record]
    if missing:
        raise RecordError(f"no '{missing[0]}' field; preference data (data.stage: dpo or rm) needs '{names[0]}' and '{names[1]}'")
    seen: list[str] = []
    chosen, rejected = (_with_answer(record, fmt, columns, tags, name, seen) for name in names)
    (prompt, answer), (other, rejected_answer) = chosen.without_last_answer(), rejected.without_last_answer()
    if (prompt.system, prompt.turns, prompt.tools) != (other.system, other.turns, other.tools):
        raise RecordError(f"'{names[0]}' and '{names[1]}' answer different prompts; both answers of a pair must follow the same conversation")
    if answer == rejected_answer:
        raise RecordError(f"'{names[0]}' and '{names[1]}' are the same answer; the pair teaches nothing")
    if ignored is not None:
        ignored += [name for name in dict.fromkeys(seen) if name not in names]
    return Pair(chosen.turns, chosen.system, chosen.tools, rejected=rejected_answer)


def _with_answer(record, fmt, columns, tags, name, ignored) -> Conversation:
    """The record's prompt followed by the answer in field `name`, as an SFT conversation."""
    answer = record[name]
    rest = {k: v for k, v in record.items() if k not in (columns.get("chosen", "chosen"), columns.get("rejected", "rejected"))}
    if fmt == "prompt":
        prompt = record["prompt"]
        if isinstance(answer, list) and answer and isinstance(answer[0], dict) and answer[0].get("role") != ASSISTANT:
            messages = answer  # UltraFeedback: the answer's list repeats the prompt
        else:
            head = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            if not isinstance(head, list):
                raise RecordError(f"'prompt' must be text or a list of messages, got {type_name(prompt)}")
            messages = head + (answer if isinstance(answer, list) else [_message(answer, "messages", tags, name)])
        conv = to_conversation({"messages": messages}, "messages", ignored=ignored)
    elif fmt == "alpaca":
        response = (columns or {}).get("response", "output")
        conv = to_conversation({**rest, response: _text(answer, name)}, fmt, columns, tags, ignored=ignored)
    elif fmt in _TAGS:
        field = (columns or {}).get("messages", _MESSAGE_COLUMN[fmt])
        turns = rest.get(field)
        if not isinstance(turns, list):
            raise RecordError(f"'{field}' must be a list of messages ending with the user's, got {type_name(turns)}")
        extra = answer if isinstance(answer, list) else [_message(answer, fmt, tags, name)]
        conv = to_conversation({**rest, field: turns + extra}, fmt, columns, tags, ignored=ignored)
    else:
        raise RecordError(f"preference pairs come as alpaca, sharegpt, messages or prompt/chosen/rejected records, not {fmt}")
    if not conv.turns or conv.turns[-1].role != ASSISTANT:
        raise RecordError(f"'{name}' must end with an assistant answer")
    return conv


def _message(answer: Any, fmt: str, tags: dict[str, str] | None, name: str) -> dict:
    """A chosen/rejected answer given as text, or as one message under the format's tags."""
    tags = {**_TAGS[fmt], **(tags or {})}
    if isinstance(answer, dict):
        return answer
    return {tags["role_tag"]: tags["assistant_tag"], tags["content_tag"]: _text(answer, name)}


def _text(answer: Any, name: str) -> str:
    if isinstance(answer, dict):  # LLaMA-Factory's alpaca pairs sometimes hold {"from", "value"}
        answer = answer.get("value", answer.get("content"))
    if not isinstance(answer, str):
        raise RecordError(f"'{name}' must be the answer's text, got {type_name(answer)}")
    return answer


# ---------------------------------------------------------------- encoding


def encode_pairs(pairs: list[Pair], encoder: Encoder) -> list[PairSample]:
    """Token ids of each pair's prompt and answers. Pairs whose answers are the same once cut to
    cutoff_len are dropped; if that leaves none, the run cannot learn anything and stops."""
    chosen = encoder.tokenize([encoder.render(p) for p in pairs])
    rejected = encoder.tokenize([encoder.render(_rejected_conversation(p)) for p in pairs])
    samples = [s for s in (_sample(encoder, c, r) for c, r in zip(chosen, rejected)) if s.chosen_ids != s.rejected_ids]
    if pairs and not samples:
        raise DataError(
            f"every pair's chosen and rejected answers are the same once cut to data.cutoff_len={encoder.cutoff_len} "
            "tokens: nothing is left to prefer. Raise data.cutoff_len"
        )
    return samples


def _rejected_conversation(pair: Pair) -> Conversation:
    prompt, _ = pair.without_last_answer()
    turns = [*prompt.turns, type(pair.turns[-1])(ASSISTANT, pair.rejected)]
    return Conversation(turns, pair.system, pair.tools, pair.source, pair.origin)


def _sample(encoder: Encoder, chosen, rejected) -> PairSample:
    prompt_c, answer_c = _split(chosen)
    prompt_r, answer_r = _split(rejected)
    shared = _common_prefix(prompt_c, prompt_r)  # a token merging across the prompt's end goes with the answer
    prompt, answer_c, answer_r = prompt_c[:shared], prompt_c[shared:] + answer_c, prompt_r[shared:] + answer_r
    limit = encoder.cutoff_len - len(encoder.bos)
    longest = max(len(answer_c), len(answer_r))
    truncated = len(prompt) + longest > limit
    if truncated:
        # The prompt gives way first, losing its start (its end leads into the answers); it keeps
        # at least half the budget, and then the answers lose their middle, never their end token.
        budget = max(limit - longest, min(len(prompt), limit // 2))
        prompt = prompt[len(prompt) - budget :] if budget else []
        room = limit - len(prompt)
        answer_c, answer_r = (a if len(a) <= room else a[: room - 1] + a[-1:] for a in (answer_c, answer_r))
    return PairSample(encoder.bos + prompt, answer_c, answer_r, truncated)


def _split(tokenized) -> tuple[list[int], list[int]]:
    """(prompt, last answer) of a tokenized conversation; earlier answers belong to the prompt, and
    what the format puts after the answer's end token (ChatML's newline) is dropped."""
    owner = np.asarray(tokenized.owner)
    at = np.nonzero(owner == owner.max())[0]
    return list(tokenized.ids[: at[0]]), list(tokenized.ids[at[0] : at[-1] + 1])


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
