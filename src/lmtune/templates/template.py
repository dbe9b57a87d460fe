"""Prompt templates as data (registry.yaml, or the user's own YAML), rendered to marked text.

A template renders a conversation into segments of text, each marked as prompt or answer. The
encoder tokenizes the joined text in one piece, as the model's own chat template would, and trains
the tokens that fall in answer segments: labels come from character spans, never from searching
for token sequences. `{bos}` and `{eos}` stand for the tokenizer's own BOS and EOS; the names in
`tokens` are the template's special tokens, which must be single tokens of the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from lmtune.data.records import ASSISTANT, FUNCTION, OBSERVATION, USER, Conversation, Turn
from lmtune.errors import DataError, LmtuneError

TEMPLATE_FILE = "template.yaml"  # written into every training output folder
PROMPT_ROLES = (USER, OBSERVATION)  # what the model reads
ANSWER_ROLES = (ASSISTANT, FUNCTION)  # what the model writes, and is trained on


@dataclass(frozen=True)
class Segment:
    text: str
    answer: bool  # the model writes this (trained), or reads it (prompt)


@dataclass(frozen=True)
class Template:
    name: str
    user: str  # "{content}" (and "{input}" in user_with_input); ends where the answer starts
    assistant: str = "{content}{eos}"  # must end with {eos} or one of `tokens`: the model must learn to stop
    system: str = "{content}"  # the system block
    prefix: str = ""  # once, at the very start (e.g. "{bos}")
    separator: str = ""  # between an answer and the next prompt
    default_system: str = ""
    default_system_with_input: str | None = None  # Alpaca has a second preamble for records with input
    user_with_input: str | None = None
    observation: str | None = None  # a tool's result, read by the model; default: as a user turn
    function: str | None = None  # a tool call, written by the model; default: as an assistant turn
    system_in_first_user: bool = False  # Llama-2 puts the system block inside the first [INST]
    tokens: tuple[str, ...] = ()  # special tokens the formats use, inserted as single ids
    stop: tuple[str, ...] = ()  # strings that end generation besides the end token
    description: str = ""

    # ------------------------------------------------------------ rendering

    def render(self, conv: Conversation, bos: str = "", eos: str = "") -> list[Segment]:
        """Prompt and answer segments; a conversation ending with a prompt turn ends with the
        prompt the model answers (a generation prompt)."""
        marks = {"bos": bos, "eos": eos}
        segments = [Segment(self.prefix.format(**marks), False)]
        # Raw text (no prompt turn at all) is pre-training data: no system prompt goes with it.
        has_prompt = any(turn.role in PROMPT_ROLES for turn in conv.turns)
        system_block = self._system_block(conv, marks) if has_prompt else ""
        if not self.system_in_first_user:
            segments.append(Segment(system_block, False))
        previous = None
        for turn in conv.turns:
            if turn.role in ANSWER_ROLES:
                fmt = self.function if turn.role == FUNCTION and self.function else self.assistant
                segments.append(Segment(fmt.format(content=turn.content, **marks), True))
            elif turn.role in PROMPT_ROLES:
                fused = system_block if previous is None and self.system_in_first_user else ""
                separator = self.separator if previous in ANSWER_ROLES else ""
                segments.append(Segment(separator + self._prompt_text(turn, fused, marks), False))
            else:
                raise DataError(f"{conv.source}: turn has role '{turn.role}'; expected one of {PROMPT_ROLES + ANSWER_ROLES}")
            previous = turn.role
        return _merge(segments)

    def _system_block(self, conv: Conversation, marks: dict[str, str]) -> str:
        system = conv.system
        if system is None:
            has_input = any(turn.input for turn in conv.turns)
            system = self.default_system_with_input if has_input and self.default_system_with_input else self.default_system
        return self.system.format(content=system, **marks) if system else ""

    def _prompt_text(self, turn: Turn, system_block: str, marks: dict[str, str]) -> str:
        if turn.role == OBSERVATION and self.observation:
            return self.observation.format(content=turn.content, **marks)
        if turn.input and self.user_with_input:
            return self.user_with_input.format(content=system_block + turn.content, input=turn.input, **marks)
        content = f"{turn.content}\n{turn.input}" if turn.input else turn.content
        return self.user.format(content=system_block + content, **marks)

    def fingerprint(self) -> dict:
        """Everything that decides the rendering, for cache keys."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "description"}

    def writes_bos(self) -> bool:
        return any("{bos}" in fmt for fmt in (self.prefix, self.user, self.system))

    def end_token(self) -> str:
        """What ends every answer: "{eos}" or one of the template's special tokens."""
        return "{eos}" if self.assistant.endswith("{eos}") else next(t for t in self.tokens if self.assistant.endswith(t))


def _merge(segments: list[Segment]) -> list[Segment]:
    """Adjacent segments of the same kind become one (the prefix and system block, say)."""
    merged: list[Segment] = []
    for segment in segments:
        if merged and merged[-1].answer == segment.answer:
            merged[-1] = Segment(merged[-1].text + segment.text, segment.answer)
        elif segment.text:
            merged.append(segment)
    return merged


def exchanges(conv: Conversation) -> list[list[Turn]]:
    """Turns grouped as [prompt turn, answer turn]; a leading answer (raw text) or a trailing
    prompt (a generation prompt) stands alone. Truncation drops whole exchanges, oldest first."""
    groups: list[list[Turn]] = []
    for turn in conv.turns:
        if turn.role in PROMPT_ROLES or not groups or groups[-1][-1].role in ANSWER_ROLES:
            groups.append([turn])
        else:
            groups[-1].append(turn)
    return groups


# ---------------------------------------------------------------- registry


@lru_cache(maxsize=1)
def builtin_templates() -> dict[str, Template]:
    text = resources.files("lmtune.templates").joinpath("registry.yaml").read_text(encoding="utf-8")
    return parse_templates(yaml.safe_load(text), "registry.yaml")


def parse_templates(specs: dict, source: str) -> dict[str, Template]:
    if not isinstance(specs, dict):
        raise LmtuneError(f"{source}: expected a mapping of template names to their formats")
    return {name: _from_dict(name, spec, source) for name, spec in specs.items()}


def _from_dict(name: str, spec: dict, source: str) -> Template:
    known = {f.name for f in fields(Template)} - {"name"}
    unknown = set(spec) - known
    if unknown:
        raise LmtuneError(f"{source}: template '{name}': unknown keys {sorted(unknown)}; known: {sorted(known)}")
    if "user" not in spec:
        raise LmtuneError(f"{source}: template '{name}' has no 'user' format")
    template = Template(name=name, **{**spec, "stop": tuple(spec.get("stop", ())), "tokens": tuple(spec.get("tokens", ()))})
    if not (template.assistant.endswith("{eos}") or any(template.assistant.endswith(t) for t in template.tokens)):
        raise LmtuneError(
            f"{source}: template '{name}': the assistant format must end with {{eos}} or one of its tokens, "
            "or the model never learns to stop"
        )
    return template


def save_template(template: Template, folder: Path) -> Path:
    """The template as data next to the model, so chat and serve use it even if the YAML it came
    from moves or the registry changes."""
    spec = {f.name: getattr(template, f.name) for f in fields(Template) if f.name != "name"}
    spec = {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items() if v not in (None, (), "", False)}
    path = Path(folder) / TEMPLATE_FILE
    path.write_text(yaml.safe_dump({template.name: spec}, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def load_templates(extra_file: str | Path | None = None) -> dict[str, Template]:
    """The built-in templates, plus (overriding by name) those in the user's YAML file."""
    templates = dict(builtin_templates())
    if extra_file:
        path = Path(extra_file)
        if not path.is_file():
            raise LmtuneError(f"template file not found: {path}")
        templates.update(parse_templates(yaml.safe_load(path.read_text(encoding="utf-8")), str(path)))
    return templates


def get_template(name: str, extra_file: str | Path | None = None) -> Template:
    templates = load_templates(extra_file)
    if name not in templates:
        raise LmtuneError(f"unknown template '{name}'; available: {', '.join(sorted(templates))}")
    return templates[name]
