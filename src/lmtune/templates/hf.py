"""`template: auto`: the tokenizer's own chat_template (Jinja) renders the conversation.

Answer spans are found by rendering growing prefixes of the conversation: the text an assistant
turn adds after the generation prompt is its answer. Templates that rewrite earlier turns as the
conversation grows (some drop past reasoning) cannot be split this way and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmtune.data.records import Conversation
from lmtune.errors import DataError, LmtuneError
from lmtune.templates.template import ANSWER_ROLES, Segment, Template, get_template

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
        messages = ([{"role": "system", "content": conv.system}] if conv.system else []) + [
            {"role": ROLE_NAMES[t.role], "content": t.content + (f"\n{t.input}" if t.input else "")} for t in conv.turns
        ]
        offset = len(messages) - len(conv.turns)
        segments, done = [], ""
        for index, turn in enumerate(conv.turns):
            if turn.role not in ANSWER_ROLES:
                continue
            prompt = self._apply(messages[: offset + index], generation=True)
            full = self._apply(messages[: offset + index + 1], generation=False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise DataError(f"{conv.source}: the tokenizer's chat_template rewrites earlier turns; pick a named template")
            segments += [Segment(prompt[len(done) :], False), Segment(full[len(prompt) :], True)]
            done = full
        if not conv.turns or conv.turns[-1].role not in ANSWER_ROLES:
            segments.append(Segment(self._apply(messages, generation=True)[len(done) :], False))
        return [s for s in segments if s.text]

    def _apply(self, messages: list[dict], generation: bool) -> str:
        if not messages:
            return ""
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    def fingerprint(self) -> dict:
        return {"chat_template": self.tokenizer.chat_template}

    def writes_bos(self) -> bool:
        return "bos_token" in (self.tokenizer.chat_template or "")

    def end_token(self) -> str:
        return "{eos}"


def template_for(name: str, tokenizer, extra_file: str | None = None) -> Template | TokenizerChatTemplate:
    """A named template, or with `auto` the tokenizer's own chat_template."""
    if name != AUTO:
        return get_template(name, extra_file)
    if not getattr(tokenizer, "chat_template", None):
        raise LmtuneError("template: auto needs a tokenizer with a chat_template; this one has none, so name a template")
    return TokenizerChatTemplate(tokenizer)
