"""A template as a Hugging Face `chat_template` (Jinja), saved into the tokenizer lmtune writes,
so transformers, vLLM and other tools format prompts exactly as training did, tools included.

Messages come as transformers hands them over: an optional leading system message, `user`,
`assistant` (a tool call as its `tool_calls`, whose arguments should be an object), `tool` results,
and `tools=` for the definitions. Hugging Face messages have no separate `input` field, so
Alpaca's with-input variants do not appear here (an input is part of the user's content). The user
format already ends with the assistant header, so the prompt always ends ready for the answer,
with or without `add_generation_prompt`.
"""

from __future__ import annotations

import json

from lmtune.templates.template import SLOT, Template
from lmtune.templates.tools import STYLES, Style

ANSWERS = "['assistant', 'function']"
RESULTS = "['tool', 'observation']"
PREVIOUS = "(turns[loop.index0 - 1]['role'] if not loop.first else none)"
FOLLOWING = "(turns[loop.index0 + 1]['role'] if not loop.last else none)"


def _expr(fmt: str, **slots: str) -> str:
    """A format string as a Jinja expression: its literals and slots joined by +."""
    names = {"bos": "bos", "eos": "eos", "content": "content", **slots}
    parts = SLOT.split(fmt)  # literal, slot name, literal, …
    pieces = [_literal(p) if i % 2 == 0 else f"({names.get(p, chr(39) * 2)})" for i, p in enumerate(parts) if p]
    return " + ".join(pieces) or "''"


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def to_jinja(template: Template) -> str:
    style = STYLES[template.tool_style] if template.tool_style else None
    parts = [_setup(template), _thinking(template), _tools(template, style), _system(template), "{%- for message in turns -%}",
             "{%- if message['role'] in " + ANSWERS + " -%}", _answer(template, style), "{%- else -%}",
             _prompt(template, style), "{%- endif -%}", "{%- endfor -%}"]
    return "".join(part for part in parts if part)


def _setup(template: Template) -> str:
    return "".join([
        "{%- set bos = bos_token or '' -%}{%- set eos = eos_token or '' -%}",
        "{%- if messages and messages[0]['role'] == 'system' -%}",
        "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}",
        "{%- else -%}",
        f"{{%- set system = {_literal(template.default_system)} -%}}{{%- set turns = messages -%}}",
        "{%- endif -%}",
        "{%- set has_prompt = turns | selectattr('role', 'in', ['user', 'tool', 'observation']) | list | length > 0 -%}",
        "{%- set ns = namespace(first_user=-1) -%}{%- for m in turns -%}",
        "{%- if m['role'] == 'user' and ns.first_user < 0 -%}{%- set ns.first_user = loop.index0 -%}{%- endif -%}{%- endfor -%}",
    ])


def _tools(template: Template, style: Style | None) -> str:
    """`tools_text`: the tool block, or '' (a template without one refuses tools, as lmtune does)."""
    if not template.tools:
        refusal = f"template '{template.name}' cannot render tools"
        return f"{{%- if tools -%}}{{{{ raise_exception({_literal(refusal)}) }}}}{{%- endif -%}}{{%- set tools_text = '' -%}}"
    return "".join([
        "{%- if tools and has_prompt -%}{%- set definitions -%}{%- for tool in tools -%}",
        "{%- set f = tool.function if tool.function is mapping else tool -%}",
        f"{{%- if not loop.first -%}}{{{{ {_literal(style.tool_joiner)} }}}}{{%- endif -%}}{{{{ {style.jinja_tool} }}}}",
        "{%- endfor -%}{%- endset -%}",
        f"{{%- set tools_text = {_expr(template.tools, tools='definitions')} -%}}",
        "{%- else -%}{%- set tools_text = '' -%}{%- endif -%}",
    ])


def _system(template: Template) -> str:
    """The prefix and system block; `fused` is what the first prompt carries in front of its content."""
    at = template.tools_at
    with_tools = _expr(template.system_with_tools or template.system, content="system")
    fused = ["system_block" if template.system_in_first_user else "", "tools_text" if at == "first_user" else ""]
    return "".join([
        f"{{{{- {_expr(template.prefix)} -}}}}",
        "{%- if tools_text -%}{%- set system = (system + '\\n\\n' + tools_text) if system else tools_text -%}{%- endif -%}" if at == "system" else "",
        f"{{%- if has_prompt and (system or {str(template.always_system).lower()}) -%}}",
        f"{{%- set system_block = ({with_tools}) if tools_text else ({_expr(template.system, content='system')}) -%}}",
        "{%- else -%}{%- set system_block = '' -%}{%- endif -%}",
        "{%- set system_block = tools_text + system_block -%}" if at == "before_system" else "",
        "{%- set system_block = system_block + tools_text -%}" if at == "after_system" else "",
        "" if template.system_in_first_user else "{{- system_block -}}",
        f"{{%- set fused = {' + '.join(p for p in fused if p) or chr(39) * 2} -%}}",
    ])


def _thinking(template: Template) -> str:
    """`thinking` and `last_query`, as Template.thinking_on decides them; enable_thinking wins."""
    switch = "(m['content'] or '').rstrip().endswith('/think') or (m['content'] or '').rstrip().endswith('/no_think')"
    given = "(last.reasoning_content is defined and last.reasoning_content is not none) or '</think>' in (last['content'] or '')"
    return "".join([
        "{%- set tn = namespace(last_query=-1, switch=false) -%}{%- for m in turns -%}{%- if m['role'] == 'user' -%}",
        f"{{%- set tn.last_query = loop.index0 -%}}{{%- if {switch} -%}}{{%- set tn.switch = true -%}}{{%- endif -%}}{{%- endif -%}}{{%- endfor -%}}",
        "{%- set last = turns[-1] if turns else none -%}{%- set answered = last is not none and last['role'] in " + ANSWERS + " -%}",
        "{%- if enable_thinking is defined and enable_thinking is not none -%}{%- set thinking = enable_thinking -%}",
        f"{{%- elif answered and ({given}) -%}}{{%- set thinking = true -%}}",
        "{%- elif tn.switch -%}{%- set thinking = true -%}",
        f"{{%- else -%}}{{%- set thinking = false if answered else {str(template.thinking_default).lower()} -%}}{{%- endif -%}}",
    ])


def _think_block(template: Template) -> str:
    """`think` (what the answer opens with) and the read part before it, as Template._think_block."""
    opening, _, rest = template.reasoning_format.partition("{reasoning}")
    block = _expr(template.reasoning_format, reasoning="(reasoning or '').strip('\\n')")
    empty = _literal(opening + rest)
    final = {
        "": f"{{%- elif reasoning is not none -%}}{{%- set think = {block} -%}}",
        "switch": f"{{%- elif not thinking -%}}{_refuse_reasoning(template)}{{{{- {empty} -}}}}{{%- else -%}}{{%- set think = {block} -%}}",
        "always": f"{{%- elif not thinking -%}}{_refuse_reasoning(template)}{{{{- {empty} -}}}}"
                  f"{{%- else -%}}{{{{- {_literal(opening)} -}}}}{{%- set think = (reasoning or '').strip('\\n') + {_literal(rest)} -%}}",
    }[template.thinking]
    past = "loop.index0 > tn.last_query and reasoning" if template.past_reasoning == "after_last_query" else "false"
    return "".join([
        "{%- set reasoning = none -%}{%- set content = message['content'] or '' -%}{%- set think = '' -%}",
        "{%- if message.reasoning_content is defined and message.reasoning_content is not none -%}{%- set reasoning = message.reasoning_content -%}",
        "{%- elif '</think>' in content -%}{%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') -%}",
        "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}{%- endif -%}",
        f"{{%- if not (loop.last and has_prompt) -%}}{{%- if {past} -%}}{{%- set think = {block} -%}}{{%- endif -%}}",
        final,
        "{%- endif -%}",
    ])


def _refuse_reasoning(template: Template) -> str:
    message = f"template '{template.name}': thinking is off (enable_thinking: false), yet the answer has reasoning"
    return f"{{%- if reasoning -%}}{{{{ raise_exception({_literal(message)}) }}}}{{%- endif -%}}"


def _generation_block(template: Template) -> str:
    """What a generation prompt ends with (Template.generation_block)."""
    if not template.thinking:
        return ""
    empty = _literal(template.reasoning_format.replace("{reasoning}", ""))
    opening = _literal(template.reasoning_format.partition("{reasoning}")[0]) if template.thinking == "always" else "''"
    return f"{{%- if loop.last -%}}{{%- if not thinking -%}}{{{{- {empty} -}}}}{{%- else -%}}{{{{- {opening} -}}}}{{%- endif -%}}{{%- endif -%}}"


def _answer(template: Template, style: Style | None) -> str:
    function = template.function or template.assistant
    return "".join([
        _think_block(template),
        f"{{%- if message.tool_calls -%}}{_calls(template, style)}{{{{- {_expr(function, content='think + calls')} -}}}}" if style else "{%- if false -%}",
        f"{{%- elif message['role'] == 'function' -%}}{{{{- {_expr(function, content='think + content')} -}}}}",
        f"{{%- else -%}}{{{{- {_expr(template.assistant, content='think + content')} -}}}}{{%- endif -%}}",
        "{%- if loop.last -%}{{ eos }}{%- endif -%}" if template.answer_end else "",
    ])


def _calls(template: Template, style: Style) -> str:
    """`calls`: the message's tool calls as the family writes them."""
    one = _one_only(template, "message.tool_calls | length > 1", "function call") if style.call_joiner is None else ""
    return "".join([
        one,
        "{%- set calls -%}{%- for call in message.tool_calls -%}",
        "{%- set f = call.function if call.function is mapping else call -%}",
        "{%- set args = f.arguments if f.arguments is string else f.arguments | tojson -%}",
        f"{{%- if not loop.first -%}}{{{{ {_literal(style.call_joiner or '')} }}}}{{%- endif -%}}{{{{ {style.jinja_call} }}}}",
        "{%- endfor -%}{%- endset -%}",
    ])


def _one_only(template: Template, condition: str, what: str) -> str:
    message = f"template '{template.name}' takes one {what} per turn"
    return f"{{%- if {condition} -%}}{{{{ raise_exception({_literal(message)}) }}}}{{%- endif -%}}"


def _prompt(template: Template, style: Style | None) -> str:
    separator = f"{{%- if {PREVIOUS} in {ANSWERS} -%}}{{{{ {_literal(template.separator)} }}}}{{%- endif -%}}"
    one = f"{{%- if message['role'] in {RESULTS} -%}}{{{{- {_expr(template.observation, content='message.content')} -}}}}" if template.observation else "{%- if false -%}"
    single = "".join([
        separator,
        "{%- set content = (fused if loop.index0 == ns.first_user else '') + message['content'] -%}",
        f"{one}{{%- else -%}}{{{{- {_expr(template.user)} -}}}}{{%- endif -%}}",
    ])
    if not (style and template.observation):
        return single + _generation_block(template)
    grouped = f"{{%- if message['role'] in {RESULTS} -%}}{_results(template, style, separator)}{{%- else -%}}{single}{{%- endif -%}}"
    return grouped + _generation_block(template)


def _results(template: Template, style: Style, separator: str) -> str:
    """Consecutive tool results inside one observation block, each as the family writes it."""
    head, _, tail = template.observation.partition("{content}")
    joiner = style.result_joiner
    again = _one_only(template, "true", "tool result") if joiner is None else f"{{{{ {_literal(joiner)} }}}}"
    return "".join([
        f"{{%- if {PREVIOUS} not in {RESULTS} -%}}{separator}{{{{- {_expr(head)} -}}}}{{%- else -%}}{again}{{%- endif -%}}",
        f"{{%- set content = message['content'] -%}}{{{{ {style.jinja_result} }}}}",
        f"{{%- if {FOLLOWING} not in {RESULTS} -%}}{{{{- {_expr(tail)} -}}}}{{%- endif -%}}",
    ])
