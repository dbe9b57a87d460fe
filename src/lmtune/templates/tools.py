"""Tool definitions, calls and results, written the way each model family's official chat template
writes `tools=`, an assistant message's `tool_calls` and `tool` messages.

A Conversation's `tools` are OpenAI-style schemas, bare ({"name", "description", "parameters"}) or
wrapped ({"type": "function", "function": …}). A FUNCTION turn holds the call as LLaMA-Factory writes
it, `{"name": …, "arguments": {…}}`, or a JSON list of them for parallel calls; an OBSERVATION turn
holds a tool's result. A style writes one tool, one call and one result, and says how several are
joined (None: the family takes one at a time). Each item is also given as a Jinja expression, so the
`chat_template` lmtune exports (templates/jinja.py) writes them identically; tests hold the two equal.

Jinja variables: `tool` (as given) and `f` (its function schema); for a call `f` (the call, with
`name` and `arguments`) and `args` (the arguments as JSON text); for a result `content`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

from lmtune.errors import DataError


@dataclass(frozen=True)
class Call:
    name: str
    arguments: Any  # a JSON object as the data gives it


@dataclass(frozen=True)
class Style:
    tool: Callable[[dict], str]
    tool_joiner: str
    call: Callable[[Call], str]
    call_joiner: str | None  # None: one call per turn
    result: Callable[[str], str]
    result_joiner: str | None  # None: one result per turn
    jinja_tool: str
    jinja_call: str
    jinja_result: str


def _json(value: Any, indent: int | None = None) -> str:
    # As transformers' `tojson` filter: non-ASCII kept, keys in the order given.
    return json.dumps(value, ensure_ascii=False, indent=indent)


def function_of(tool: dict) -> dict:
    """The function schema, whether the tool is given bare or wrapped."""
    return tool["function"] if isinstance(tool.get("function"), dict) else tool


def wrapped(tool: dict) -> dict:
    """The tool as OpenAI's `tools=` list holds it, which is what Qwen and Llama 3.1 were shown."""
    return tool if isinstance(tool.get("function"), dict) else {"type": "function", "function": tool}


_WRAPPED = "(tool if tool.function is mapping else {'type': 'function', 'function': tool})"
_GLM4_SUFFIX = "\n在调用上述函数时，请使用 Json 格式表示调用的参数。"


def _glm4_tool(tool: dict) -> str:
    f = function_of(tool)
    return f"\n\n## {f['name']}\n\n{_json(f, indent=4)}{_GLM4_SUFFIX}"


def _moss_tool(tool: dict) -> str:
    f = function_of(tool)
    parameters = ", ".join((f.get("parameters") or {}).get("properties") or {})
    return f"- {f['name']}: enabled. API: {f['name']}({parameters})\n"


def _moss_call(call: Call) -> str:
    values = call.arguments.values() if isinstance(call.arguments, dict) else [call.arguments]
    return f"{call.name}({', '.join(map(_json, values))})"


STYLES: dict[str, Style] = {
    # Qwen2.5 / Qwen3: one JSON line per tool in <tools>; each call in <tool_call> tags; consecutive
    # results share one user message, each in <tool_response> tags.
    "qwen": Style(
        tool=lambda tool: _json(wrapped(tool)),
        tool_joiner="\n",
        call=lambda c: f"<tool_call>\n{_json({'name': c.name, 'arguments': c.arguments})}\n</tool_call>",
        call_joiner="\n",
        result=lambda content: f"<tool_response>\n{content}\n</tool_response>",
        result_joiner="\n",
        jinja_tool=f"{_WRAPPED} | tojson",
        jinja_call="'<tool_call>\\n{\"name\": ' + (f.name | tojson) + ', \"arguments\": ' + args + '}\\n</tool_call>'",
        jinja_result="'<tool_response>\\n' + content + '\\n</tool_response>'",
    ),
    # Llama 3.1: tools as indented JSON, a call as {"name", "parameters"}; the official template
    # writes a string result as a JSON string (a string is iterable, so it takes its tojson branch).
    "llama3": Style(
        tool=lambda tool: _json(wrapped(tool), indent=4) + "\n\n",
        tool_joiner="",
        call=lambda c: _json({"name": c.name, "parameters": c.arguments}),
        call_joiner=None,
        result=_json,
        result_joiner=None,
        jinja_tool=f"{_WRAPPED} | tojson(indent=4) + '\\n\\n'",
        jinja_call="'{\"name\": ' + (f.name | tojson) + ', \"parameters\": ' + args + '}'",
        jinja_result="content | tojson",
    ),
    # GLM-4: a "## name" section per function; a call is the function name, then its arguments.
    "glm4": Style(
        tool=_glm4_tool,
        tool_joiner="",
        call=lambda c: f"{c.name}\n{_json(c.arguments)}",
        call_joiner=None,
        result=lambda content: content,
        result_joiner=None,
        jinja_tool=f"'\\n\\n## ' + f.name + '\\n\\n' + f | tojson(indent=4) + {_json(_GLM4_SUFFIX)}",
        jinja_call="f.name + '\\n' + args",
        jinja_result="content",
    ),
    # MOSS-003 plugins: "- Name: enabled. API: Name(params)" lines; a command is Name("value", …).
    "moss": Style(
        tool=_moss_tool,
        tool_joiner="",
        call=_moss_call,
        call_joiner=", ",
        result=lambda content: content,
        result_joiner="\n",
        jinja_tool="'- ' + f.name + ': enabled. API: ' + f.name + '(' + ((f.parameters or {}).properties or {}) | join(', ') + ')\\n'",
        jinja_call="f.name + '(' + (f.arguments.values() if f.arguments is mapping else [f.arguments]) | map('tojson') | join(', ') + ')'",
        jinja_result="content",
    ),
}


# ---------------------------------------------------------------- reading the record


def check_tools(tools: list, source: str) -> list[dict]:
    if not isinstance(tools, list) or not all(isinstance(t, dict) and isinstance(function_of(t).get("name"), str) for t in tools):
        raise DataError(
            f"{source}: 'tools' must be a list of function schemas, each with a 'name' "
            '(bare, or wrapped as {"type": "function", "function": {...}})'
        )
    return tools


def parse_calls(content: str, source: str) -> list[Call]:
    """The calls in a FUNCTION turn. String arguments holding JSON (OpenAI sends them so) are read
    as the object they hold, since every family writes arguments as an object."""
    try:
        value = json.loads(content)
    except json.JSONDecodeError:
        value = None
    calls = value if isinstance(value, list) else [value]
    if not calls or not all(isinstance(c, dict) and isinstance(function_of(c).get("name"), str) for c in calls):
        raise DataError(
            f'{source}: a function turn must hold the call as JSON, {{"name": ..., "arguments": {{...}}}} '
            f"(or a list of them); got {content[:80]!r}"
        )
    return [Call(function_of(c)["name"], _arguments(function_of(c).get("arguments", {}))) for c in calls]


def _arguments(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments


def join(items: list[str], joiner: str | None, what: str, template: str, source: str) -> str:
    if joiner is None and len(items) > 1:
        raise DataError(f"{source}: template '{template}' takes one {what} per turn (the model family does), got {len(items)}")
    return (joiner or "").join(items)


# ---------------------------------------------------------------- reading calls back from output
#
# What a model writes for a function turn is the function format (Template.function, else its
# assistant format) around the calls as the style writes them; these read it back, so a served
# model's calls come out as they were trained. `read_output_calls` reads a whole answer,
# `call_opening` says where (in streamed text) a call begins or may begin, so that no part of one
# reaches the client as text. Text that looks like a call but does not read as one stays text.

_QWEN_OPEN, _QWEN_CLOSE = "<tool_call>", "</tool_call>"


@dataclass(frozen=True)
class OutputCalls:
    content: str | None  # the text beside the calls; None when the answer is calls only
    calls: list[Call]
    unparsed: int = 0  # pieces that looked like a call but did not read as one (left in content)


def parse_output_calls(text: str, template, tools: list[dict] | None = None) -> tuple[str | None, list[Call]]:
    """(content, calls) of a model's answer, read with its template's tool syntax."""
    read = read_output_calls(text, template, tools)
    return read.content, read.calls


def read_output_calls(text: str, template, tools: list[dict] | None = None) -> OutputCalls:
    """A model's answer (after its think block) as text and calls, read with the template's
    tool_style; `tools` (the request's) give GLM-4 and MOSS the names and parameter order they
    need. A template without tool_style has no calls."""
    style = getattr(template, "tool_style", None)
    if style is None:
        return OutputCalls(text, [])
    return _READERS[style](text, call_opener(template), _schemas(tools))


def call_opening(text: str, template, tools: list[dict] | None = None) -> tuple[int, bool] | None:
    """For streaming: (index, sure) where a call begins in `text` (sure) or may begin once more text
    comes (not sure: a marker's first characters, or whitespace that would be trimmed beside a
    call); (len(text), False) when none can begin yet; None when none can begin in this answer at
    all (the families that write a call as the whole answer, once the answer has started otherwise)."""
    style = template.tool_style
    if style == "qwen":
        return _marker_at(text, _QWEN_OPEN)
    if style == "llama3":
        stripped = text.lstrip()
        return (0, True) if stripped.startswith("{") else (0, False) if not stripped else None
    if style == "moss":
        opener = call_opener(template)
        return (0, True) if text.startswith(opener) else (0, False) if opener.startswith(text) else None
    return _glm4_opening(text, _schemas(tools))


def call_opener(template) -> str:
    """What the function format writes before the calls (MOSS's inner thoughts and command tag)."""
    fmt = template.function or template.assistant
    return fmt.partition("{content}")[0].replace("{bos}", "").replace("{eos}", "")


def _schemas(tools: list[dict] | None) -> dict[str, dict] | None:
    return None if tools is None else {function_of(t)["name"]: function_of(t) for t in tools}


def _call(name: Any, arguments: Any, tools: dict | None) -> Call | None:
    """A call as read, or None when it is not one: no name, arguments not an object, a tool not offered."""
    arguments = _arguments(arguments)
    if not isinstance(name, str) or not isinstance(arguments, dict) or (tools is not None and name not in tools):
        return None
    return Call(name, arguments)


def _json_call(text: str, key: str, tools: dict | None) -> Call | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return _call(value.get("name"), value.get(key, value.get("arguments", {})), tools) if isinstance(value, dict) else None


def _marker_at(text: str, marker: str) -> tuple[int, bool]:
    found = text.find(marker)
    if found >= 0:
        return len(text[:found].rstrip()), True
    partial = next((len(text) - n for n in range(min(len(marker) - 1, len(text)), 0, -1) if text.endswith(marker[:n])), len(text))
    return len(text[:partial].rstrip()), False


def _read_qwen(text: str, opener: str, tools: dict | None) -> OutputCalls:
    """<tool_call>\\n{"name", "arguments"}\\n</tool_call>, one after another; text around them is content."""
    pieces, calls, unparsed, rest = [], [], 0, text
    while (start := rest.find(_QWEN_OPEN)) >= 0:
        end = rest.find(_QWEN_CLOSE, start)
        call = _json_call(rest[start + len(_QWEN_OPEN) : end], "arguments", tools) if end >= 0 else None
        if call is None:  # unclosed or unreadable: this block and all after it stay text
            unparsed += 1
            break
        pieces.append(rest[:start])
        calls.append(call)
        rest = rest[end + len(_QWEN_CLOSE) :]
    pieces.append(rest)
    if not calls:
        return OutputCalls(text, [], unparsed)
    # whitespace beside a call is the joiner's, not content
    content = pieces[0].rstrip() + "".join(pieces[1:-1]).strip() + (pieces[-1].lstrip() if len(pieces) > 1 else "")
    return OutputCalls(content if content.strip() else None, calls, unparsed)


def _read_llama3(text: str, opener: str, tools: dict | None) -> OutputCalls:
    """The whole answer is one JSON {"name", "parameters"}."""
    if not text.lstrip().startswith("{"):
        return OutputCalls(text, [])
    call = _json_call(text.strip(), "parameters", tools)
    return OutputCalls(None, [call]) if call else OutputCalls(text, [], 1)


def _glm4_name(line: str, tools: dict | None) -> bool:
    return line in tools if tools is not None else bool(re.fullmatch(r"[A-Za-z_][\w.\-]*", line))


def _read_glm4(text: str, opener: str, tools: dict | None) -> OutputCalls:
    """The function name on the first line (an answer starts with a newline instead), then its arguments."""
    name, newline, arguments = text.partition("\n")
    if not newline or not _glm4_name(name.strip(), tools):
        return OutputCalls(text, [])
    try:
        call = _call(name.strip(), json.loads(arguments), tools)
    except json.JSONDecodeError:
        call = None
    return OutputCalls(None, [call]) if call else OutputCalls(text, [], 1 if tools is not None else 0)


def _glm4_opening(text: str, tools: dict | None) -> tuple[int, bool] | None:
    name, newline, _ = text.partition("\n")
    if newline:
        return (0, True) if name.strip() and _glm4_name(name.strip(), tools) else None
    if not name:
        return 0, False
    possible = any(t.startswith(name) for t in tools) if tools is not None else _glm4_name(name, None)
    return (0, False) if possible else None


def _read_moss(text: str, opener: str, tools: dict | None) -> OutputCalls:
    """<|Commands|>: name("value", …), several joined by ", "; values in the order of the tool's parameters."""
    if not (opener and text.startswith(opener)):
        return OutputCalls(text, [])
    body, calls, decoder = text[len(opener) :].removesuffix("<eoc>").strip(), [], json.JSONDecoder()
    while body:
        found = re.match(r"([A-Za-z_][\w.\-]*)\(\s*", body)
        values, at = [], found.end() if found else 0
        try:
            while found and body[at] != ")":
                value, at = decoder.raw_decode(body, at)
                values.append(value)
                at = re.match(r"\s*,?\s*", body[at:]).end() + at
        except (json.JSONDecodeError, IndexError):
            found = None
        schema = (tools or {}).get(found.group(1)) if found else None
        keys = list((schema.get("parameters") or {}).get("properties") or {}) if schema else []
        if schema is None or len(values) > len(keys):
            return OutputCalls(text, [], 1)
        calls.append(Call(found.group(1), dict(zip(keys, values))))
        body = body[at + 1 :].lstrip(", ")
    return OutputCalls(None, calls) if calls else OutputCalls(text, [], 1)


_READERS = {"qwen": _read_qwen, "llama3": _read_llama3, "glm4": _read_glm4, "moss": _read_moss}
