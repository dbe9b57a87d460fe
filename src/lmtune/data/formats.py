"""Record level: tell an instruction-data format from a record's keys and convert it to a Conversation.

One small function per format. Every problem is a RecordError whose message is the reason
alone ("'output': empty assistant response"); the caller prefixes "FILE:LINE: " and decides
whether to stop or set the record aside. Column and tag renames follow LLaMA-Factory's
dataset_info.json, so its registry entries work unchanged. Given a list as `ignored`, the
converter also names every field of the record it did not use, so the loader can count them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from lmtune.data.records import ASSISTANT, FUNCTION, OBSERVATION, USER, Conversation, Turn
from lmtune.errors import DataError, RecordError
from lmtune.templates.reasoning import split_answer

FORMATS = ("alpaca", "sharegpt", "messages", "moss", "firefly", "belle_multiturn", "r1_distill", "text")
SYSTEM = "system"  # a message role that becomes Conversation.system, never a Turn

# LLaMA-Factory's defaults; a dataset's `columns` / `tags` override them key by key. (Its
# history, system and tools columns have no default; reading them when present loses nothing.)
ALPACA_COLUMNS = {
    "prompt": "instruction", "query": "input", "response": "output", "history": "history", "system": "system",
    "tools": "tools",
}
# The R1-distill sets (Chinese-DeepSeek-R1-Distill-data-110k and its kind): the question in `input`,
# the answer in `content`, the reasoning in `reasoning_content`, as DeepSeek's API returns them.
R1_DISTILL_COLUMNS = {"prompt": "input", "response": "content", "reasoning": "reasoning_content", "system": "system", "tools": "tools"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools"}
SHAREGPT_TAGS = {
    "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
    "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system",
}
MESSAGES_COLUMNS = {"messages": "messages", "system": "system", "tools": "tools"}
TEXT_COLUMNS = {"prompt": "text"}  # pre-training text sits in LLaMA-Factory's prompt column
# OpenAI's "tool" messages carry a tool's result. OpenAI has no role for the call itself (it rides
# on an assistant message as `tool_calls`, read as a function turn); lmtune writes calls as role "function".
MESSAGES_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "observation_tag": "tool", "function_tag": "function", "system_tag": "system"}
# Where a message or record keeps an answer's reasoning apart: DeepSeek's API (and llama.cpp, SGLang)
# call it reasoning_content, vLLM and Ollama reasoning. Otherwise an answer may open with <think>…</think>.
REASONING_KEYS = ("reasoning_content", "reasoning")
THINKING_KEY = "enable_thinking"  # a record's own thinking switch (Qwen3's enable_thinking), true or false

# The key that gives each format away, checked in this order.
_TELLTALE_KEYS = (("sharegpt", "conversations"), ("messages", "messages"), ("moss", "chat"),
                  ("firefly", "conversation"), ("alpaca", "instruction"), ("r1_distill", "reasoning_content"), ("text", "text"))
_EXPECTED = ("alpaca (instruction, output), sharegpt (conversations), messages (messages), "
             "moss (chat), firefly (conversation), r1_distill (input, content, reasoning_content), text (text)")

# After an optional system prompt: user, assistant, user, assistant, … where an assistant answer
# may be a function call followed by its observation and then the answer (LLaMA-Factory's rule).
# Parallel calls (one function turn) are answered by one observation per call, in order.
_NEXT_ROLES = {None: (USER,), USER: (ASSISTANT, FUNCTION), ASSISTANT: (USER,),
               FUNCTION: (OBSERVATION,), OBSERVATION: (ASSISTANT, FUNCTION, OBSERVATION)}
_LAST_ROLES = (ASSISTANT, FUNCTION)

_BELLE_SPEAKER = re.compile(r"^(Human|Assistant)[:：]", re.MULTILINE)
_MOSS_MARKERS = re.compile(r"<\|Human\|>:|<eoh>|<\|MOSS\|>:|<eom>")
_MOSS_TURN = re.compile(r"turn_(\d+)")

Labelled = list[tuple[str, Turn]]  # each turn with the field it came from, for error messages
Extracted = tuple[Labelled, str | None, str]  # turns, system prompt, the field that held the turns


def detect_format(record: dict[str, Any]) -> str:
    for fmt, key in _TELLTALE_KEYS:
        if key in record:
            return "belle_multiturn" if fmt == "alpaca" and _is_belle_dialogue(record[key]) else fmt
    keys = ", ".join(sorted(record)) or "none"
    raise RecordError(f"cannot tell the data format from keys ({keys}); expected one of: {_EXPECTED}")


_DEFAULT_COLUMNS = {"alpaca": ALPACA_COLUMNS, "belle_multiturn": ALPACA_COLUMNS, "r1_distill": R1_DISTILL_COLUMNS, "sharegpt": SHAREGPT_COLUMNS,
                    "messages": MESSAGES_COLUMNS, "text": TEXT_COLUMNS, "moss": {}, "firefly": {}}
_DEFAULT_TAGS = {"sharegpt": SHAREGPT_TAGS, "messages": MESSAGES_TAGS}
# The record's own fields each format reads (columns by their role, or fixed names).
_USED_COLUMNS = {"alpaca": ("prompt", "query", "response", "history", "system", "tools", "reasoning"),
                 "sharegpt": ("messages", "system", "tools"), "text": ("prompt",)}
_USED_COLUMNS.update({"belle_multiturn": _USED_COLUMNS["alpaca"], "r1_distill": _USED_COLUMNS["alpaca"], "messages": _USED_COLUMNS["sharegpt"]})
_USED_FIELDS = {"moss": ("chat", "meta_instruction"), "firefly": ("conversation", "system")}


def to_conversation(
    record: dict[str, Any],
    fmt: str,
    columns: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    prompt_only: bool = False,
    ignored: list[str] | None = None,
) -> Conversation:
    """prompt_only: for generation, where the answer may be missing or empty and the conversation
    may end with the user's turn. ignored: gets the names of the fields the conversion left unused
    (nested ones as "conversations[].weight")."""
    if fmt not in _DEFAULT_COLUMNS:
        # Not a RecordError: a wrong format name is a config problem, not one record's.
        raise DataError(f"unknown data format '{fmt}'; known: {', '.join(FORMATS)}")
    columns, tags = {**_DEFAULT_COLUMNS[fmt], **(columns or {})}, {**_DEFAULT_TAGS.get(fmt, {}), **(tags or {})}
    if fmt == "text":
        conv = _text(record, columns["prompt"])
    else:
        if prompt_only and fmt in ("alpaca", "belle_multiturn", "r1_distill"):
            record = {**record, columns["response"]: record.get(columns["response"]) or ""}
        turns, system, field = _convert(record, fmt, columns, tags)
        if prompt_only and turns and turns[-1][1].role == ASSISTANT and not turns[-1][1].content.strip():
            turns = turns[:-1]
        conv = _validated(turns, system, field, prompt_only)
        conv.tools = _tools(record, columns.get("tools"))
        conv.thinking = _thinking(record)
    if ignored is not None:
        ignored += _unused(record, fmt, columns, tags)
    return conv


def _convert(record: dict[str, Any], fmt: str, columns: dict[str, str], tags: dict[str, str]) -> Extracted:
    if fmt in ("alpaca", "r1_distill"):
        return _alpaca(record, columns)
    if fmt == "belle_multiturn":
        return _belle_multiturn(record, columns)
    if fmt in ("sharegpt", "messages"):
        return _chat(record, fmt, columns, tags)
    return _moss(record) if fmt == "moss" else _firefly(record)


# ---------------------------------------------------------------- formats


def _alpaca(record: dict[str, Any], columns: dict[str, str]) -> Extracted:
    prompt, response = columns["prompt"], columns["response"]
    _require(record, (prompt, response), f"alpaca records need '{prompt}' and '{response}'")
    question = Turn(USER, _string(record[prompt], f"'{prompt}'"), input=_optional(record, columns.get("query")))
    answer = _answer(record[response], f"'{response}'", _reasoning_of(record, columns.get("reasoning")))
    turns = _history(record.get(columns.get("history")), columns.get("history"))
    turns += [(f"'{prompt}'", question), (f"'{response}'", answer)]
    return turns, _optional(record, columns["system"]) or None, prompt


def _history(history: Any, field: str) -> Labelled:
    if history is None:
        return []
    if not isinstance(history, list):
        raise RecordError(f"'{field}' must be a list of [query, response] pairs, got {type_name(history)}")
    turns: Labelled = []
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RecordError(f"'{field}[{i}]' must be a [query, response] pair")
        said = f"'{field}[{i}][0]'"
        turns += [(said, Turn(USER, _string(pair[0], said))), (f"'{field}[{i}][1]'", _answer(pair[1], f"'{field}[{i}][1]'"))]
    return turns


def _is_belle_dialogue(instruction: Any) -> bool:
    """BELLE's multiturn text starts with "Human:" and has an "Assistant:" line."""
    return (
        isinstance(instruction, str)
        and instruction.startswith(("Human:", "Human："))
        and "Assistant" in _BELLE_SPEAKER.findall(instruction)
    )


def _belle_multiturn(record: dict[str, Any], columns: dict[str, str]) -> Extracted:
    """BELLE multiturn_chat: the dialogue as "Human:…\\nAssistant:…" text, the last answer in output."""
    prompt, response = columns["prompt"], columns["response"]
    _require(record, (prompt, response), f"belle_multiturn records need '{prompt}' and '{response}'")
    parts = _BELLE_SPEAKER.split(_string(record[prompt], f"'{prompt}'"))
    if parts[0].strip():
        raise RecordError(f"'{prompt}' must start with 'Human:', got {parts[0].strip()[:30]!r}")
    speakers = [(USER if who == "Human" else ASSISTANT, text.strip()) for who, text in zip(parts[1::2], parts[2::2])]
    if speakers and speakers[-1] == (ASSISTANT, ""):
        speakers.pop()  # the trailing "Assistant:" whose answer is the output field
    turns = [(f"'{prompt}' turn {n}", Turn(USER, text) if role == USER else _answer(text, f"'{prompt}' turn {n}"))
             for n, (role, text) in enumerate(speakers, start=1)]
    turns.append((f"'{response}'", _answer(_string(record[response], f"'{response}'").strip(), f"'{response}'")))
    return turns, _optional(record, columns["system"]) or None, prompt


def _chat(record: dict[str, Any], fmt: str, columns: dict[str, str], tags: dict[str, str]) -> Extracted:
    """sharegpt and OpenAI messages: a list of {role, content} messages under renameable tags."""
    field, role_tag, content_tag = columns["messages"], tags["role_tag"], tags["content_tag"]
    shape = f"'{role_tag}' and '{content_tag}'"
    _require(record, (field,), f"{fmt} records need '{field}'")
    messages = record[field]
    if not isinstance(messages, list):
        raise RecordError(f"'{field}' must be a list of messages, got {type_name(messages)}")
    roles = {tags["user_tag"]: USER, tags["assistant_tag"]: ASSISTANT, tags["observation_tag"]: OBSERVATION,
             tags["function_tag"]: FUNCTION, tags["system_tag"]: SYSTEM}
    system = _optional(record, columns["system"]) or None
    turns: Labelled = []
    for i, message in enumerate(messages):
        label = f"'{field}[{i}]'"
        if not isinstance(message, dict):
            raise RecordError(f"{label} must be an object with {shape}, got {type_name(message)}")
        _require(message, (role_tag,), f"every message needs {shape}", label)
        role = roles.get(message[role_tag]) if isinstance(message[role_tag], str) else None
        if role is None:
            raise RecordError(f"{label}: unknown role {message[role_tag]!r} in '{role_tag}'; known: {', '.join(roles)}")
        if role in (ASSISTANT, FUNCTION) and _calls(message):
            reasoning = _reasoning_of(message, tags.get("reasoning_tag"), f"'{field}[{i}]")
            turns.append((label, Turn(FUNCTION, _function_call(message, content_tag, f"{field}[{i}]"), reasoning=reasoning)))
            continue
        _require(message, (content_tag,), f"every message needs {shape}", label)
        content = _content(message[content_tag], f"'{field}[{i}].{content_tag}'")
        if role == SYSTEM:
            if i > 0:
                raise RecordError(f"{label}: a system message may only come first")
            system = content  # a leading system message wins over a system column, as in LLaMA-Factory
        elif role in (ASSISTANT, FUNCTION):  # a function turn (LLaMA-Factory's layout) may reason before its call too
            reasoning = _reasoning_of(message, tags.get("reasoning_tag"), f"'{field}[{i}]")
            turns.append((label, _answer(content, f"'{field}[{i}].{content_tag}'", reasoning, role)))
        else:
            turns.append((label, Turn(role, content)))
    return turns, system, field


def _reasoning_of(obj: dict[str, Any], key: str | None, where: str = "") -> str | None:
    """The reasoning a record or message keeps apart (under `key`, else under either common name);
    None where it holds none (DeepSeek's API sends null for answers without reasoning)."""
    for name in (key,) if key else REASONING_KEYS:
        if obj.get(name) not in (None, ""):
            return _string(obj[name], f"{where}.{name}'" if where else f"'{name}'").strip("\n") or None
    return None


def _answer(value: Any, label: str, reasoning: str | None = None, role: str = ASSISTANT) -> Turn:
    """An assistant answer; reasoning given apart, or a think block that opens the text, goes to
    Turn.reasoning and the answer after it to the content."""
    text = _string(value, label)
    if reasoning is None:
        try:
            reasoning, text = split_answer(text)
        except ValueError as exc:
            raise RecordError(f"{label}: {exc}") from None
    if reasoning is not None and not text.strip():
        raise RecordError(f"{label}: empty answer after its reasoning")
    return Turn(role, text, reasoning=reasoning)


def _thinking(record: dict[str, Any]) -> bool | None:
    value = record.get(THINKING_KEY)
    if value is not None and not isinstance(value, bool):
        raise RecordError(f"'{THINKING_KEY}' must be true or false, got {_short(value)}")
    return value


def _calls(message: dict[str, Any]) -> list | None:
    """OpenAI's tool calls of an assistant message (`tool_calls`, or the older single `function_call`)."""
    if message.get("tool_calls"):
        return message["tool_calls"]
    return [{"function": message["function_call"]}] if message.get("function_call") else None


def _function_call(message: dict[str, Any], content_tag: str, where: str) -> str:
    """LLaMA-Factory's function-turn layout: {"name", "arguments": {…}} as JSON, a list of them for
    parallel calls. A function turn holds the calls alone, so text beside them would be lost."""
    if message.get(content_tag) not in (None, ""):
        raise RecordError(f"'{where}': text and tool calls in one message; a function turn holds the calls alone, "
                          "so the text would be lost: move it to a message of its own")
    calls = _calls(message)
    if not isinstance(calls, list):
        raise RecordError(f"'{where}.tool_calls' must be a list of calls, got {type_name(calls)}")
    parsed = [_tool_call(call, f"{where}.tool_calls[{j}]") for j, call in enumerate(calls)]
    return json.dumps(parsed[0] if len(parsed) == 1 else parsed, ensure_ascii=False)


def _tool_call(call: Any, label: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not (isinstance(function, dict) and isinstance(function.get("name"), str)):
        raise RecordError(f"'{label}' must be {{\"function\": {{\"name\", \"arguments\"}}}}, got {_short(call)}")
    arguments = function.get("arguments") or {}
    if isinstance(arguments, str):  # OpenAI sends the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            raise RecordError(f"'{label}.function.arguments' is not valid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(arguments, dict):
        raise RecordError(f"'{label}.function.arguments' must be an object, got {type_name(arguments)}")
    return {"name": function["name"], "arguments": arguments}


def _tools(record: dict[str, Any], column: str | None) -> list[dict] | None:
    """Tool definitions: a list of function schemas, or that list as a JSON string (LLaMA-Factory
    keeps them as one); a lone schema counts as a list of one. Empty or absent: no tools."""
    value = record.get(column) if column else None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RecordError(f"'{column}' is not valid JSON: {exc.msg} (column {exc.colno})") from None
    if value is None or (isinstance(value, (list, dict)) and not value):
        return None
    tools = [value] if isinstance(value, dict) else value
    if not isinstance(tools, list):
        raise RecordError(f"'{column}' must be a list of tool definitions, got {type_name(tools)}")
    for i, tool in enumerate(tools):
        if not _is_tool(tool):
            raise RecordError(
                f"'{column}[{i}]' must be a tool definition with a 'name' (or OpenAI's "
                f'{{"type": "function", "function": {{"name": …}}}}), got {_short(tool)}'
            )
    return tools


def _is_tool(tool: Any) -> bool:
    if not isinstance(tool, dict):
        return False
    function = tool.get("function") if tool.get("type") == "function" else tool
    return isinstance(function, dict) and isinstance(function.get("name"), str)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


def _content(value: Any, label: str) -> str:
    """A string, or OpenAI's list of content parts of which only text ones can be trained on."""
    if not isinstance(value, list):
        return _string(value, label)
    texts = []
    for j, part in enumerate(value):
        if not (isinstance(part, dict) and part.get("type") == "text"):
            kind = part.get("type") if isinstance(part, dict) else type_name(part)
            raise RecordError(f"{label}[{j}]: only text parts can be trained on, got {kind!r}")
        texts.append(_string(part.get("text"), f"{label}[{j}].text"))
    return "\n".join(texts)  # parts are separate blocks; vLLM's chat utils join them the same way


def _moss(record: dict[str, Any]) -> Extracted:
    """MOSS-003 SFT: chat.turn_N.{Human, MOSS} with <|Human|>:…<eoh> markers; plugin fields are dropped."""
    _require(record, ("chat",), "moss records need 'chat'")
    chat = record["chat"]
    if not isinstance(chat, dict):
        raise RecordError(f"'chat' must be an object of turn_1, turn_2, …, got {type_name(chat)}")
    turns: Labelled = []
    for key in sorted(chat, key=_moss_turn_number):
        exchange = chat[key]
        if not isinstance(exchange, dict):
            raise RecordError(f"'chat.{key}' must be an object with 'Human' and 'MOSS', got {type_name(exchange)}")
        _require(exchange, ("Human", "MOSS"), "every MOSS turn needs 'Human' and 'MOSS'", f"'chat.{key}'")
        for speaker, role in (("Human", USER), ("MOSS", ASSISTANT)):
            label = f"'chat.{key}.{speaker}'"
            text = _MOSS_MARKERS.sub("", _string(exchange[speaker], label)).strip()
            turns.append((label, Turn(USER, text) if role == USER else _answer(text, label)))
    return turns, _optional(record, "meta_instruction").strip() or None, "chat"


def _moss_turn_number(key: str) -> int:
    match = _MOSS_TURN.fullmatch(key)
    if not match:
        raise RecordError(f"'chat.{key}': MOSS turns must be named turn_1, turn_2, …")
    return int(match.group(1))  # numerically, so turn_10 comes after turn_9


def _firefly(record: dict[str, Any]) -> Extracted:
    """Firefly: conversation = [{human, assistant}, …]; conversation_id, category and dataset are ignored."""
    _require(record, ("conversation",), "firefly records need 'conversation'")
    pairs = record["conversation"]
    if not isinstance(pairs, list):
        raise RecordError(f"'conversation' must be a list of {{human, assistant}} objects, got {type_name(pairs)}")
    turns: Labelled = []
    for i, pair in enumerate(pairs):
        label = f"'conversation[{i}]'"
        if not isinstance(pair, dict):
            raise RecordError(f"{label} must be an object with 'human' and 'assistant', got {type_name(pair)}")
        _require(pair, ("human", "assistant"), "every exchange needs 'human' and 'assistant'", label)
        for speaker, role in (("human", USER), ("assistant", ASSISTANT)):
            spoken = f"'conversation[{i}].{speaker}'"
            turns.append((spoken, Turn(USER, _string(pair[speaker], spoken)) if role == USER else _answer(pair[speaker], spoken)))
    return turns, _optional(record, "system") or None, "conversation"


def _text(record: dict[str, Any], field: str) -> Conversation:
    """Pre-training text: one assistant turn, so every token is trained."""
    _require(record, (field,), f"text records need '{field}'")
    text = _string(record[field], f"'{field}'")
    if not text.strip():
        raise RecordError(f"'{field}' is empty")
    return Conversation([Turn(ASSISTANT, text)])


# ---------------------------------------------------------------- fields left unused


def _unused(record: dict[str, Any], fmt: str, columns: dict[str, str], tags: dict[str, str]) -> list[str]:
    """The record's fields the conversion did not read, each named once. Called after a successful
    conversion, so the shapes below are known to be right."""
    used = {columns.get(role) for role in _USED_COLUMNS.get(fmt, ())} | set(_USED_FIELDS.get(fmt, ()))
    if fmt in ("alpaca", "belle_multiturn") and not columns.get("reasoning"):
        used |= set(REASONING_KEYS)  # read under either name
    unused = [key for key in record if key not in used and key != THINKING_KEY]
    if fmt in ("sharegpt", "messages"):
        field, messages = columns["messages"], record[columns["messages"]]
        # OpenAI's tool_calls / function_call become the function turn.
        read = {tags["role_tag"], tags["content_tag"], "tool_calls", "function_call", *REASONING_KEYS, tags.get("reasoning_tag")}
        unused += _unused_keys(messages, f"{field}[]", read)
        calls = [c for m in messages if isinstance(m.get("tool_calls"), list) for c in m["tool_calls"] if isinstance(c, dict)]
        unused += _unused_keys(calls, f"{field}[].tool_calls[]", {"type", "function"})
    elif fmt == "moss":
        unused += _unused_keys(list(record["chat"].values()), "chat.turn_*", {"Human", "MOSS"})
    elif fmt == "firefly":
        unused += _unused_keys(record["conversation"], "conversation[]", {"human", "assistant"})
    return unused


def _unused_keys(items: list[dict], prefix: str, used: set[str]) -> list[str]:
    keys = dict.fromkeys(key for item in items for key in item if key not in used)
    return [f"{prefix}.{key}" for key in keys]


# ---------------------------------------------------------------- checks


def _validated(turns: Labelled, system: str | None, field: str, prompt_only: bool = False) -> Conversation:
    """The role order and non-empty answers every trainable conversation needs (a generation
    prompt may end with the user's turn)."""
    if not turns:
        raise RecordError(f"'{field}' holds no turns: empty conversation")
    previous = None
    for label, turn in turns:
        if turn.role not in _NEXT_ROLES[previous]:
            place = f"after {previous}" if previous else "first"
            expected = " or ".join(_NEXT_ROLES[previous])
            raise RecordError(f"{label}: wrong role order: {turn.role} {place}; expected {expected}")
        if turn.role == ASSISTANT and not turn.content.strip():
            raise RecordError(f"{label}: empty assistant response")
        previous = turn.role
    if previous not in _LAST_ROLES + ((USER, OBSERVATION) if prompt_only else ()):
        last = f"'{field}': the last turn is {previous}"
        raise RecordError(f"{last}; it must be the assistant's answer (or a function call)")
    return Conversation([turn for _, turn in turns], system=system)


def _require(obj: dict[str, Any], keys: tuple[str, ...], needs: str, label: str = "record") -> None:
    for key in keys:
        if key not in obj:
            raise RecordError(f"{label} has no '{key}' field; {needs}")


def _string(value: Any, label: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{label} must be a string, got {type_name(value)}")
    return value


def _optional(record: dict[str, Any], key: str) -> str:
    """An optional text field: absent and null (parquet, CSV-converted data) both read as ""."""
    value = record.get(key)
    return "" if value is None else _string(value, f"'{key}'")


def type_name(value: Any) -> str:
    """Python's type name, but "null" for None, since the data was JSON."""
    return "null" if value is None else type(value).__name__
