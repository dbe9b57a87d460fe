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
