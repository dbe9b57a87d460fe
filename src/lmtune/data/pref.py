"""Preference pairs: a prompt, a chosen and a rejected answer, in the layouts users bring, rendered
by the same template as SFT and tokenized for TRL's DPOTrainer.

Layouts (each with LLaMA-Factory's column and tag renames):
- alpaca with chosen/rejected:   {"instruction", "input", "chosen": "…", "rejected": "…"}
- sharegpt / OpenAI messages:    {"conversations" | "messages": [… ending with the user], "chosen": message or text, "rejected": …}
- prompt/chosen/rejected:        {"prompt": text or messages, "chosen": text or messages, "rejected": …}
  (UltraFeedback's chosen/rejected repeat the prompt's messages; TRL's hold the answer alone.)

A pair is converted as two conversations, prompt + chosen and prompt + rejected, through the SFT
converters, so every record problem reads as it does for SFT data; then the two prompts must agree.

KTO (data.stage: kto) takes single answers tagged desirable or not instead: any SFT layout ending
with the assistant's answer, or TRL's {"prompt", "completion"}, plus a boolean "label" (or the
field LLaMA-Factory's kto_tag column names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmtune.templates.reasoning import split_answer
from lmtune.data.formats import MESSAGES_TAGS, SHAREGPT_TAGS, detect_format, to_conversation, type_name
from lmtune.data.records import ASSISTANT, Conversation
from lmtune.errors import DataError, RecordError

if TYPE_CHECKING:  # the registry reads this module's stage names; it need not import torch for them
    from lmtune.data.encode import Encoder

PAIR_STAGES = ("dpo", "rm")
LABEL_STAGES = ("kto",)
PROMPT_STAGES = ("grpo",)  # prompts the model answers while it trains (lmtune.data.prompts)
TRL_STAGES = PAIR_STAGES + LABEL_STAGES + PROMPT_STAGES  # trained by lmtune.train.pref on TRL's trainers
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


@dataclass
class Labeled(Conversation):
    """A conversation whose last answer is tagged desirable (true) or undesirable (false)."""

    desirable: bool = True


@dataclass
class LabeledSample:
    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool
    truncated: bool = False

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.completion_ids

    def row(self) -> dict:
        return {"prompt_ids": self.prompt_ids, "completion_ids": self.completion_ids, "label": self.label}


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


def detect_labeled_format(record: dict[str, Any]) -> str:
    """The SFT format, or "prompt" for TRL's prompt/completion layout."""
    return "prompt" if "prompt" in record and "completion" in record else detect_format(record)


def to_labeled(record: dict[str, Any], fmt: str, columns=None, tags=None, ignored: list[str] | None = None) -> Labeled:
    name = (columns or {}).get("kto_tag", "label")
    if name not in record:
        raise RecordError(f"no '{name}' field; KTO data (data.stage: kto) tags each answer '{name}': true (desirable) or false")
    if not isinstance(record[name], bool):
        raise RecordError(f"'{name}' must be true (a desirable answer) or false (an undesirable one), got {type_name(record[name])}")
    rest = {k: v for k, v in record.items() if k != name}
    if fmt == "prompt":
        conv = _with_answer(rest, fmt, {}, tags, "completion", ignored if ignored is not None else [])
    else:
        conv = to_conversation(rest, fmt, columns, tags, ignored=ignored)
        if not conv.turns or conv.turns[-1].role != ASSISTANT:
            raise RecordError(f"the record must end with the assistant's answer, which '{name}' judges")
    return Labeled(conv.turns, conv.system, conv.tools, desirable=record[name])


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
    try:  # a rejected answer's think block is its reasoning, as the chosen one's is
        reasoning, answer = split_answer(pair.rejected)
    except ValueError:  # never closed: the whole text is the answer that was rejected
        reasoning, answer = None, pair.rejected
    turns = [*prompt.turns, type(pair.turns[-1])(ASSISTANT, answer, reasoning=reasoning)]
    return Conversation(turns, pair.system, pair.tools, pair.source, pair.origin)


def _sample(encoder: Encoder, chosen, rejected) -> PairSample:
    prompt_c, answer_c = _split(chosen)
    prompt_r, answer_r = _split(rejected)
    shared = _common_prefix(prompt_c, prompt_r)  # a token merging across the prompt's end goes with the answer
    prompt, (answer_c, answer_r), truncated = _fit(encoder, prompt_c[:shared], [prompt_c[shared:] + answer_c, prompt_r[shared:] + answer_r])
    return PairSample(prompt, answer_c, answer_r, truncated)


def encode_labeled(convs: list[Labeled], encoder: Encoder) -> list[LabeledSample]:
    tokenized = encoder.tokenize([encoder.render(c) for c in convs])
    samples = []
    for conv, ids in zip(convs, tokenized):
        prompt, answer = _split(ids)
        prompt, (answer,), truncated = _fit(encoder, prompt, [answer])
        samples.append(LabeledSample(prompt, answer, conv.desirable, truncated))
    return samples


def _fit(encoder: Encoder, prompt: list[int], answers: list[list[int]]) -> tuple[list[int], list[list[int]], bool]:
    """BOS + prompt and the answers, within cutoff_len."""
    limit = encoder.cutoff_len - len(encoder.bos)
    longest = max(map(len, answers))
    truncated = len(prompt) + longest > limit
    if truncated:
        # The prompt gives way first, losing its start (its end leads into the answers); it keeps
        # at least half the budget, and then the answers lose their middle, never their end token.
        budget = max(limit - longest, min(len(prompt), limit // 2))
        prompt = prompt[len(prompt) - budget :] if budget else []
        room = limit - len(prompt)
        answers = [a if len(a) <= room else a[: room - 1] + a[-1:] for a in answers]
    return encoder.bos + prompt, answers, truncated


def _split(tokenized) -> tuple[list[int], list[int]]:
    """(prompt, last answer) of a tokenized conversation; earlier answers belong to the prompt, and
    what the format puts after the answer's end token (ChatML's newline) is dropped."""
    import numpy as np  # here: reading pairs needs none of it, only encoding them

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
