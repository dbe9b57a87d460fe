"""A template as a Hugging Face `chat_template` (Jinja), saved into the tokenizer lmtune writes,
so transformers, vLLM and other tools format prompts exactly as training did.

Hugging Face messages have no separate `input` field, so Alpaca's with-input variants do not
appear here (an input is part of the user's content). The user format already ends with the
assistant header, so the prompt always ends ready for the answer, with or without
`add_generation_prompt`.
"""

from __future__ import annotations

import json
import re

from lmtune.templates.template import Template

_SLOT = re.compile(r"(\{content\}|\{bos\}|\{eos\})")
_VARIABLES = {"{content}": "content", "{bos}": "bos", "{eos}": "eos"}


def _expr(fmt: str) -> str:
    """A format string as a Jinja expression: literals and the content/bos/eos variables joined by +."""
    parts = [part for part in _SLOT.split(fmt) if part]
    return " + ".join(_VARIABLES.get(part) or json.dumps(part, ensure_ascii=False) for part in parts) or '""'


def to_jinja(template: Template) -> str:
    function = template.function or template.assistant
    observation = template.observation or template.user
    lines = [
        "{%- set bos = bos_token or '' -%}{%- set eos = eos_token or '' -%}",
        "{%- if messages and messages[0]['role'] == 'system' -%}",
        "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}",
        "{%- else -%}",
        f"{{%- set system = {json.dumps(template.default_system, ensure_ascii=False)} -%}}{{%- set turns = messages -%}}",
        "{%- endif -%}",
        "{%- set has_prompt = turns | selectattr('role', 'in', ['user', 'tool', 'observation']) | list | length > 0 -%}",
        "{%- set content = system -%}",
        f"{{%- set system_block = ({_expr(template.system)}) if system and has_prompt else '' -%}}",
        f"{{{{- {_expr(template.prefix)} -}}}}",
        "" if template.system_in_first_user else "{{- system_block -}}",
        "{%- for message in turns -%}",
        "{%- set content = message['content'] -%}",
        "{%- if message['role'] in ['assistant', 'function'] -%}",
        f"{{%- if message['role'] == 'function' -%}}{{{{- {_expr(function)} -}}}}{{%- else -%}}{{{{- {_expr(template.assistant)} -}}}}{{%- endif -%}}",
        "{%- else -%}",
        "{%- if not loop.first and turns[loop.index0 - 1]['role'] in ['assistant', 'function'] -%}"
        f"{{{{- {json.dumps(template.separator, ensure_ascii=False)} -}}}}{{%- endif -%}}",
        "{%- if loop.first -%}{%- set content = system_block + content -%}{%- endif -%}" if template.system_in_first_user else "",
        f"{{%- if message['role'] in ['tool', 'observation'] -%}}{{{{- {_expr(observation)} -}}}}"
        f"{{%- else -%}}{{{{- {_expr(template.user)} -}}}}{{%- endif -%}}",
        "{%- endif -%}",
        "{%- endfor -%}",
    ]
    return "".join(line for line in lines if line)
