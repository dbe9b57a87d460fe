"""Conversations back to the common file formats, for `lmtune data convert` and `data mix`."""

from __future__ import annotations

import json

from lmtune.data.formats import MESSAGES_TAGS, SHAREGPT_TAGS, THINKING_KEY
from lmtune.data.records import ASSISTANT, FUNCTION, OBSERVATION, USER, Conversation, Turn
from lmtune.errors import RecordError
from lmtune.templates.reasoning import CLOSE, OPEN

TARGETS = ("alpaca", "sharegpt", "messages")


def _role_names(tags: dict[str, str]) -> dict[str, str]:
    """The reader's own tag names, so what `convert` writes reads back unchanged."""
    return {USER: tags["user_tag"], ASSISTANT: tags["assistant_tag"], FUNCTION: tags["function_tag"], OBSERVATION: tags["observation_tag"]}


SHAREGPT_FROM = _role_names(SHAREGPT_TAGS)
MESSAGES_ROLE = _role_names(MESSAGES_TAGS)


def from_conversation(conv: Conversation, target: str) -> dict:
    if target == "alpaca":
        record = _alpaca(conv)
    elif target == "sharegpt":
        record = {"conversations": [{"from": SHAREGPT_FROM[t.role], "value": _with_think(t)} for t in conv.turns]}
        record = {**record, "system": conv.system} if conv.system else record
    elif target == "messages":
        system = [{"role": "system", "content": conv.system}] if conv.system else []
        record = {"messages": system + [_message(t) for t in conv.turns]}
    else:
        raise ValueError(f"unknown target format {target!r}")
    if conv.thinking is not None:
        record[THINKING_KEY] = conv.thinking
    if conv.tools:  # OpenAI's list; LLaMA-Factory's alpaca and sharegpt keep it as one JSON string
        record["tools"] = conv.tools if target == "messages" else json.dumps(conv.tools, ensure_ascii=False)
    return record


def _alpaca(conv: Conversation) -> dict:
    turns = conv.turns
    roles = [t.role for t in turns]
    if roles != [USER, ASSISTANT] * (len(turns) // 2) or not turns:
        raise RecordError("alpaca holds user/assistant exchanges only; convert this conversation to sharegpt or messages")
    history = [[_text(q), _with_think(a)] for q, a in zip(turns[:-2:2], turns[1:-2:2])]
    last_user, answer = turns[-2], turns[-1]
    record = {"instruction": last_user.content, "input": last_user.input, "output": _with_think(answer)}
    if history:
        record["history"] = history
    if conv.system:
        record["system"] = conv.system
    return record


def _message(turn: Turn) -> dict:
    """An OpenAI message; reasoning apart, as DeepSeek's API and vLLM return it."""
    message = {"role": MESSAGES_ROLE[turn.role], "content": _text(turn)}
    return {**message, "reasoning_content": turn.reasoning} if turn.reasoning is not None else message


def _with_think(turn: Turn) -> str:
    """A turn's text with its reasoning as the think block that opens it (LLaMA-Factory's layout)."""
    return f"{OPEN}\n{turn.reasoning}\n{CLOSE}\n\n{_text(turn)}" if turn.reasoning is not None else _text(turn)


def _text(turn: Turn) -> str:
    """A turn's text for formats without Alpaca's separate input field."""
    return f"{turn.content}\n{turn.input}" if turn.input else turn.content
