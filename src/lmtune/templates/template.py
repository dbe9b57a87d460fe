"""Prompt templates: data in registry.yaml, rendered into (prompt, response) text pairs.

The encoder tokenizes each piece separately and joins the ids, and inference builds
its prompt with the same function, so the prompt a chat sends is the training prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import resources

import yaml

from lmtune.data.records import ASSISTANT, USER, Conversation, Turn
from lmtune.errors import DataError, LmtuneError


@dataclass(frozen=True)
class Template:
    name: str
    user: str
    assistant: str = "{content}"
    system: str = "{content}"
    default_system: str = ""
    default_system_with_input: str | None = None
    user_with_input: str | None = None
    separator: str = ""
    stop: tuple[str, ...] = ()

    def system_text(self, conv: Conversation) -> str:
        """The block before the first turn: the record's system prompt or the template's default."""
        has_input = any(turn.input for turn in conv.turns)
        system = conv.system
        if system is None:
            system = self.default_system_with_input if has_input and self.default_system_with_input else self.default_system
        return self.system.format(content=system) if system else ""

    def pairs(self, conv: Conversation) -> list[tuple[str, str | None]]:
        """(prompt text, response text) per exchange; the last response is None when the
        conversation ends with a user turn (a generation prompt)."""
        pairs: list[tuple[str, str | None]] = []
        for index, exchange in enumerate(exchanges(conv)):
            prompt = ""
            if exchange[0].role == USER:
                prompt = (self.separator if index else "") + self._user_text(exchange[0])
            answer = exchange[-1] if exchange[-1].role == ASSISTANT else None
            pairs.append((prompt, self.assistant.format(content=answer.content) if answer else None))
        return pairs

    def _user_text(self, turn: Turn) -> str:
        if turn.input and self.user_with_input:
            return self.user_with_input.format(content=turn.content, input=turn.input)
        content = f"{turn.content}\n{turn.input}" if turn.input else turn.content
        return self.user.format(content=content)


def exchanges(conv: Conversation) -> list[list[Turn]]:
    """Group turns into [user, assistant] exchanges; a leading assistant turn (raw text) or a
    trailing user turn (a generation prompt) forms an exchange of its own."""
    groups: list[list[Turn]] = []
    for position, turn in enumerate(conv.turns):
        if turn.role not in (USER, ASSISTANT):
            raise DataError(f"{conv.source}: turn {position + 1} has role '{turn.role}'; expected user or assistant")
        opens_exchange = turn.role == USER or not groups or groups[-1][-1].role == ASSISTANT
        if opens_exchange:
            groups.append([turn])
        else:
            groups[-1].append(turn)
    return groups


@lru_cache(maxsize=1)
def builtin_templates() -> dict[str, Template]:
    text = resources.files("lmtune.templates").joinpath("registry.yaml").read_text(encoding="utf-8")
    return {name: _from_dict(name, spec) for name, spec in yaml.safe_load(text).items()}


def _from_dict(name: str, spec: dict) -> Template:
    known = {f.name for f in fields(Template)} - {"name"}
    unknown = set(spec) - known
    if unknown:
        raise LmtuneError(f"template '{name}': unknown keys {sorted(unknown)}; known: {sorted(known)}")
    spec = {**spec, "stop": tuple(spec.get("stop", ()))}
    return Template(name=name, **spec)


def get_template(name: str) -> Template:
    templates = builtin_templates()
    if name not in templates:
        raise LmtuneError(f"unknown template '{name}'; available: {', '.join(sorted(templates))}")
    return templates[name]
