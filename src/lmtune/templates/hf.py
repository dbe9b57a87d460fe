"""`template: auto`: the tokenizer's own chat_template (Jinja) renders the conversation.

Answer spans are found by rendering growing prefixes of the conversation: the text an assistant
turn adds after the generation prompt is its answer. Templates that rewrite earlier turns as the
conversation grows (some drop past reasoning) cannot be split this way and are refused, and so are
templates that put no end token after an answer (ChatGLM's: the model would never learn to stop).
Tool definitions go in as `tools=`, calls as an assistant message's `tool_calls` and results as
`tool` messages, the way transformers and vLLM hand them to the template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmtune.data.records import FUNCTION, Conversation, Turn
from lmtune.errors import DataError, LmtuneError
from lmtune.templates.template import ANSWER_ROLES, Segment, Template, get_template
from lmtune.templates.tools import parse_calls

AUTO = "auto"
ROLE_NAMES = {"user": "user", "assistant": "assistant", "observation": "tool", "function": "assistant"}


@dataclass(frozen=True, eq=False)
class TokenizerChatTemplate:
    tokenizer: Any
    name: str = AUTO
    tokens: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()
    description: str = "the tokenizer's own chat_template"

    def render(self, conv: Conversation, bos: str = "", eos: str = "") -> list[Segment]:
        tools = self._tools(conv)
        messages = ([{"role": "system", "content": conv.system}] if conv.system else []) + [self._message(t, conv.source) for t in conv.turns]
        offset = len(messages) - len(conv.turns)
        segments, done = [], ""
        for index, turn in enumerate(conv.turns):
            if turn.role not in ANSWER_ROLES:
                continue
            prompt = self._apply(messages[: offset + index], tools, generation=True)
            full = self._apply(messages[: offset + index + 1], tools, generation=False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise DataError(f"{conv.source}: the tokenizer's chat_template rewrites earlier turns; pick a named template")
            self._check_end(full[len(prompt) :], conv.source)
            segments += [Segment(prompt[len(done) :], False), Segment(full[len(prompt) :], True)]
            done = full
        if not conv.turns or conv.turns[-1].role not in ANSWER_ROLES:
            segments.append(Segment(self._apply(messages, tools, generation=True)[len(done) :], False))
        return [s for s in segments if s.text]

    def _tools(self, conv: Conversation) -> list[dict] | None:
        if conv.tools and "tools" not in self.tokenizer.chat_template:
            raise LmtuneError(f"{conv.source}: the conversation shows the model tools, but the tokenizer's chat_template "
                              "takes no `tools`; pick a named template that renders them (`lmtune templates`)")
        return conv.tools or None

    def _message(self, turn: Turn, source: str) -> dict:
        if turn.role == FUNCTION and "tool_calls" in self.tokenizer.chat_template:
            calls = [{"type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in parse_calls(turn.content, source)]
            return {"role": "assistant", "content": "", "tool_calls": calls}
        return {"role": ROLE_NAMES[turn.role], "content": turn.content + (f"\n{turn.input}" if turn.input else "")}

    def _check_end(self, answer: str, source: str) -> None:
        ends = [t for t in (self.tokenizer.eos_token, *self.tokenizer.all_special_tokens) if t]
        if not any(end in answer for end in ends):
            raise DataError(f"{source}: the tokenizer's chat_template puts no end token after an answer ({answer[-30:]!r}), "
                            "so the model would never learn to stop; pick a named template (`lmtune templates`)")

    def _apply(self, messages: list[dict], tools: list[dict] | None, generation: bool) -> str:
        if not messages:
            return ""
        return self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation)

    def fingerprint(self) -> dict:
        return {"chat_template": self.tokenizer.chat_template}

    def writes_bos(self) -> bool:
        return "bos_token" in (self.tokenizer.chat_template or "")

    def end_token(self) -> str:
        return "{eos}"

    def end_tokens(self) -> tuple[str, ...]:
        return ("{eos}",)


def template_for(name: str, tokenizer, extra_file: str | None = None) -> Template | TokenizerChatTemplate:
    """A named template, or with `auto` the tokenizer's own chat_template."""
    if name != AUTO:
        return get_template(name, extra_file)
    if not getattr(tokenizer, "chat_template", None):
        raise LmtuneError("template: auto needs a tokenizer with a chat_template; this one has none, so name a template")
    return TokenizerChatTemplate(tokenizer)
