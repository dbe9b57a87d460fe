"""A chat request's constraint: what its answer must be (infer/grammar.py's Spec), or None.

- `response_format: {"type": "json_object"}`: a JSON object; `{"type": "json_schema", "json_schema":
  {"name", "schema", "strict"}}`: JSON valid against the schema (strict or not, it is enforced).
- `tool_choice: "required"` or a named function: one call, in the template's own call syntax
  (templates/tools.py), to one of the tools (or the named one), its arguments valid against that
  function's `parameters`. It wins over response_format: a forced call has no content to format.

Thinking: the constraint is the whole answer, so a constrained request has thinking off (the
template's switch, as chat_template_kwargs.enable_thinking false); where the prompt opens a think
block all the same (DeepSeek-R1), the grammar closes it first: the reasoning is empty.
"""

from __future__ import annotations

import json

from lmtune.infer.grammar import (
    Alternative,
    GrammarError,
    Spec,
    checked_schema,
    closing_think,
    json_spec,
)
from lmtune.serve.schemas import ApiError
from lmtune.templates.tools import STYLES, Call, call_opener, function_of

_PROBE = {"__lmtune_arguments__": 0}  # stands for the arguments while a call's text is split around them


def constrained(request: dict) -> bool:
    """Whether the request asks for a constrained answer (before its prompt is built: thinking goes off)."""
    fmt = (request.get("response_format") or {}).get("type")
    return request["kind"] == "chat" and (fmt in ("json_object", "json_schema") or bool(_forced(request)))


def request_spec(request: dict, template, opened: bool) -> Spec | None:
    """The request's Spec (None: a free answer); `opened`: the prompt opens a think block. Raises
    ApiError 400 naming the field for a schema the grammar engine cannot enforce."""
    if not constrained(request):
        return None
    spec = _call_spec(template, _forced(request)) if _forced(request) else _format_spec(request["response_format"])
    return closing_think(spec, opened)


def _forced(request: dict) -> list[dict]:
    """The functions one of which the answer must call (tool_choice required or named), else []."""
    choice, tools = request.get("tool_choice"), [function_of(t) for t in request.get("tools") or []]
    if choice == "required":
        return tools
    if isinstance(choice, dict):
        return [f for f in tools if f["name"] == choice["function"]["name"]]
    return []


def _format_spec(fmt: dict) -> Spec:
    try:
        if fmt["type"] == "json_object":
            return json_spec({"type": "object"})
        return json_spec(fmt["json_schema"]["schema"], "response_format.json_schema.schema")
    except GrammarError as exc:
        raise ApiError(400, str(exc), "response_format") from None


def _call_spec(template, functions: list[dict]) -> Spec:
    """One alternative per function: the function format's opening and the call's text around its
    arguments (as the style writes them), the arguments per the function's parameters."""
    style = STYLES.get(getattr(template, "tool_style", None) or "")
    if style is None:
        raise ApiError(400, f"tool_choice: the template '{template.name}' has no tool-call syntax to constrain the answer to", "tool_choice")
    alternatives = []
    for f in functions:
        head, found, tail = style.call(Call(f["name"], _PROBE)).partition(json.dumps(_PROBE))
        if not found:
            raise ApiError(400, f"tool_choice: the template '{template.name}' ({template.tool_style} style) does not write a call's arguments as "
                           "one JSON object, so a call cannot be enforced; use tool_choice 'auto'", "tool_choice")
        try:
            schema = checked_schema(f.get("parameters") or {"type": "object"}, f"tools: {f['name']}.parameters")
        except GrammarError as exc:
            raise ApiError(400, str(exc), "tools") from None
        alternatives.append(Alternative(call_opener(template) + head, schema, tail))
    return Spec(tuple(alternatives))
