"""Tools in chat requests and tool calls in answers, in OpenAI's shapes.

A request's `tools` are shown by the run's template as training showed them: its messages (an
assistant message's `tool_calls`, `tool` messages with the results) become a Conversation through
the same reader the `messages` data format uses (data/formats.py), so a served tool loop and a
trained one are one rendering. The answer is read back with the template's own call syntax
(templates/tools.py): calls become `tool_calls`, the text beside them `content`.

`tool_choice: "none"`: the tools are still shown (the model sees the context it was trained in, as
vLLM does by default) but the answer is not read for calls; its text is the content. `"required"`
and a named function are read like `"auto"` (constraining the output to a call is the sampler's).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from lmtune.data.formats import to_conversation
from lmtune.data.records import Conversation
from lmtune.errors import LmtuneError
from lmtune.templates.tools import (
    Call,
    OutputCalls,
    call_opening,
    check_tools,
    function_of,
    read_output_calls,
)

CHOICES = ("auto", "none", "required")


def check_request_tools(tools: list | None, tool_choice: Any) -> None:
    """Raises ValueError naming the field when tools or tool_choice are not OpenAI's shapes."""
    if tools is not None:
        try:
            check_tools(tools, "tools")
        except LmtuneError as exc:
            raise ValueError(str(exc)) from None
    if tool_choice is None or tool_choice == "auto" or tool_choice == "none":
        return
    if isinstance(tool_choice, str) and tool_choice not in CHOICES:
        raise ValueError(f"tool_choice: give 'auto', 'none', 'required' or {{\"type\": \"function\", \"function\": {{\"name\": …}}}} (got {tool_choice!r})")
    if not tools:
        raise ValueError(f"tool_choice: {json.dumps(tool_choice)} needs tools; the request has none")
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") if isinstance(tool_choice.get("function"), dict) else None
        names = [function_of(t)["name"] for t in tools]
        if tool_choice.get("type") != "function" or name not in names:
            raise ValueError(f"tool_choice: name one of the request's tools, {{\"type\": \"function\", \"function\": {{\"name\": …}}}}; "
                             f"tools: {', '.join(names)} (got {json.dumps(tool_choice)[:120]})")
    elif not isinstance(tool_choice, str):
        raise ValueError(f"tool_choice: give a string or an object (got {tool_choice!r})")


def uses_tools(messages: list[dict], tools: list | None) -> bool:
    return bool(tools) or any(m["role"] == "tool" or m.get("tool_calls") for m in messages)


def tool_conversation(messages: list[dict], thinking: bool | None, tools: list | None) -> Conversation:
    """OpenAI messages (Message.fields) with tools, calls or results → the Conversation the messages
    data format reads: calls as a function turn, results as observation turns. Raises LmtuneError."""
    systems = []
    while messages and messages[0]["role"] in ("system", "developer"):
        systems.append(messages[0]["content"])
        messages = messages[1:]
    if not messages or messages[-1]["role"] not in ("user", "tool"):
        raise LmtuneError("the last message must be the user's or a tool result: the model answers it")
    record = {"messages": [_message(m) for m in messages], "system": "\n".join(systems) or None, "tools": tools}
    conv = to_conversation(record, "messages", prompt_only=True)
    conv.thinking = thinking
    return conv


def _message(message: dict) -> dict:
    keep = ("role", "content", "tool_calls", "reasoning")
    return {key: message[key] for key in keep if message.get(key) is not None}


# ---------------------------------------------------------------- answers


def openai_calls(calls: list[Call]) -> list[dict]:
    """Calls as OpenAI's message.tool_calls: arguments as a JSON string."""
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}} for call in calls]


def call_deltas(calls: list[dict]) -> list[dict]:
    """Streamed as OpenAI streams them: per call one delta with index, id, type, the name and empty
    arguments, then the arguments."""
    deltas = []
    for index, call in enumerate(calls):
        head = {"index": index, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"], "arguments": ""}}
        deltas += [{"tool_calls": [head]}, {"tool_calls": [{"index": index, "function": {"arguments": call["function"]["arguments"]}}]}]
    return deltas


def kept(calls: list[Call], parallel: bool) -> list[Call]:
    """parallel_tool_calls false: at most one call, as OpenAI promises (the first)."""
    return calls if parallel else calls[:1]


class CallStream:
    """One streamed answer's content, calls held back: `feed` gives the text that is surely content,
    holding what is or may become a call; `close` reads what it held (OutputCalls). The content
    given out, then close's, equals read_output_calls of the whole answer."""

    def __init__(self, template, tools: list[dict]):
        self.template, self.tools = template, tools
        self.held = ""
        self.state = "open"  # open: watching for a call; plain: none can come; call: one began, held to the end

    def feed(self, text: str) -> str:
        if self.state == "plain":
            return text
        self.held += text
        if self.state == "call":
            return ""
        opening = call_opening(self.held, self.template, self.tools)
        if opening is None:
            self.state, out, self.held = "plain", self.held, ""
            return out
        at, sure = opening
        out, self.held = self.held[:at], self.held[at:]
        self.state = "call" if sure else "open"
        return out

    def close(self) -> OutputCalls:
        held, self.held = self.held, ""
        return read_output_calls(held, self.template, self.tools) if held else OutputCalls(None, [])


def answer_fields(answer: str, template, tools: list[dict], parallel: bool) -> tuple[dict, int]:
    """A whole answer's message fields, `content` and (with calls) `tool_calls`, and how many pieces
    looked like calls but did not read as one."""
    read = read_output_calls(answer, template, tools)
    calls = kept(read.calls, parallel)
    return ({"content": read.content, "tool_calls": openai_calls(calls)} if calls else {"content": answer}), read.unparsed


class StreamedCalls:
    """answer_fields for a streamed choice: its content deltas with calls held back (CallStream),
    and at the end the rest of the content and the calls' deltas."""

    def __init__(self, template, tools: list[dict], parallel: bool):
        self.stream, self.parallel = CallStream(template, tools), parallel
        self.called, self.unparsed = False, 0

    def deltas(self, deltas: list[dict]) -> list[dict]:
        out = []
        for delta in deltas:
            text = self.stream.feed(delta["content"]) if "content" in delta else None
            if text or text is None:
                out.append({"content": text} if text else delta)
        return out

    def close(self) -> list[dict]:
        read = self.stream.close()
        calls = openai_calls(kept(read.calls, self.parallel))
        self.called, self.unparsed = bool(calls), read.unparsed
        return ([{"content": read.content}] if read.content else []) + call_deltas(calls)
