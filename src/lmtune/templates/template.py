"""Prompt templates as data (registry.yaml, or the user's own YAML), rendered to marked text.

A template renders a conversation into segments of text, each marked as prompt or answer. The
encoder tokenizes the joined text in one piece, as the model's own chat template would, and trains
the tokens that fall in answer segments: labels come from character spans, never from searching
for token sequences. `{bos}` and `{eos}` stand for the tokenizer's own BOS and EOS; the names in
`tokens` are the template's special tokens, which must be single tokens of the tokenizer.

How an answer ends (`answer_end`):
- "" (most families): the assistant format writes its end token (`<|im_end|>`, `<|eot_id|>`, EOS).
  The answer is trained up to and including it; text the format puts after it (ChatML's newline)
  is read as the start of what follows, not trained.
- `next_turn` (ChatGLM3, GLM-4): nothing sits between turns; the model ends an answer by writing the
  token that opens the next turn (`<|user|>`, `<|observation|>`, which is how these models stop),
  so that token is trained as the answer's end. The last answer ends with EOS, as their own
  fine-tuning scripts append it.
- `eos_label` (Baichuan2): nothing sits between turns either, but the model stops at EOS: the token
  that opens the next turn stays in the text and is trained to predict EOS (Baichuan2's
  fine-tune.py labels it so). The last answer ends with EOS.

Reasoning (a Turn's `reasoning`) is written before the answer's content in `reasoning_format`, in
the answer the model is writing (the last of a conversation). Earlier answers show it as the
family's template does (`past_reasoning`): `drop` (DeepSeek-R1; and every template without a
rule, as API clients send no reasoning back), or `after_last_query` (Qwen3: kept in the answers
after the last user message, a tool loop's steps). `thinking` is how the family switches it:
- "" (no switch): a think block only where the data has reasoning;
- `switch` (Qwen3): with thinking off the prompt ends with an empty block (`enable_thinking=False`);
  with thinking on the model writes the block itself, empty where the answer has no reasoning;
- `always` (DeepSeek-R1): the prompt opens the block (`<think>\n`) and the model goes on from
  there; with thinking off the prompt holds the whole empty block.
A conversation's thinking is `Conversation.thinking` where set; else on when its last answer has
reasoning or a user turn says /think or /no_think (Qwen3's soft switches: the model writes the
block itself); else off for training data and `thinking_default` for a generation prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from lmtune.data.records import ASSISTANT, FUNCTION, OBSERVATION, USER, Conversation, Turn
from lmtune.errors import DataError, LmtuneError
from lmtune.files import read_yaml
from lmtune.templates.tools import STYLES, Style, check_tools, join, parse_calls

TEMPLATE_FILE = "template.yaml"  # written into every training output folder
PROMPT_ROLES = (USER, OBSERVATION)  # what the model reads
ANSWER_ROLES = (ASSISTANT, FUNCTION)  # what the model writes, and is trained on
ANSWER_ENDS = ("", "next_turn", "eos_label")
TOOLS_AT = ("system", "before_system", "after_system", "first_user")
SLOT = re.compile(r"\{(content|input|bos|eos|tools|reasoning)\}")
PAST_REASONING = ("drop", "after_last_query")
THINKING = ("", "switch", "always")
SOFT_SWITCHES = ("/think", "/no_think")  # Qwen3's, at the end of a user message


def fill(fmt: str, **values: str) -> str:
    """A format with its slots filled. Other braces are literal text: tool prompts show JSON."""
    return SLOT.sub(lambda m: values.get(m.group(1), m.group(0)), fmt)


@dataclass(frozen=True)
class Segment:
    text: str
    answer: bool  # the model writes this (trained), or reads it (prompt)
    eos_label: bool = False  # the segment's last token is trained to predict EOS, whatever it is (Baichuan2)
    reasoning: int = 0  # an answer's first characters that are its think block (masked with data.train_reasoning: false)


@dataclass(frozen=True)
class Template:
    name: str
    user: str  # "{content}" (and "{input}" in user_with_input); ends where the answer starts
    assistant: str = "{content}{eos}"  # writes {eos} or one of `tokens` to end the answer, unless answer_end says otherwise
    system: str = "{content}"  # the system block
    prefix: str = ""  # once, at the very start (e.g. "{bos}")
    separator: str = ""  # between an answer and the next prompt
    default_system: str = ""
    default_system_with_input: str | None = None  # Alpaca has a second preamble for records with input
    user_with_input: str | None = None
    observation: str | None = None  # a tool's result (consecutive ones: one block), read by the model; default: as a user turn
    function: str | None = None  # a tool call, written by the model; default: as an assistant turn
    system_in_first_user: bool = False  # Llama-2 puts the system block inside the first [INST]
    always_system: bool = False  # the system block is written even without a system prompt (Llama 3.1 dates every chat)
    answer_end: str = ""  # see the module docstring: "", next_turn or eos_label
    reasoning_format: str = "<think>\n{reasoning}\n</think>\n\n"  # an answer's reasoning, before its content
    past_reasoning: str = "drop"  # which earlier answers show their reasoning: drop | after_last_query (see above)
    thinking: str = ""  # how the family switches thinking: "" | switch | always (see above)
    thinking_default: bool = True  # thinking for a generation prompt that does not say; off for a model trained without reasoning
    tools: str | None = None  # the tool-definitions block; {tools}: the definitions as tool_style writes them
    tools_at: str = "system"  # after the system prompt | before_system | after_system (own blocks) | first_user
    tool_style: str | None = None  # how definitions, calls and results are written (templates/tools.py)
    system_with_tools: str | None = None  # the system format when tools are shown (Llama 3.1 adds "Environment: ipython")
    tokens: tuple[str, ...] = ()  # special tokens the formats use, inserted as single ids
    stop: tuple[str, ...] = ()  # strings that end generation besides the end token
    description: str = ""

    # ------------------------------------------------------------ rendering

    def render(self, conv: Conversation, bos: str = "", eos: str = "") -> list[Segment]:
        """Prompt and answer segments; a conversation ending with a prompt turn ends with the
        prompt the model answers (a generation prompt)."""
        marks = {"bos": bos, "eos": eos}
        style = self._style(conv)
        # Raw text (no prompt turn at all) is pre-training data: no system prompt or tools go with it.
        has_prompt = any(turn.role in PROMPT_ROLES for turn in conv.turns)
        tools = self._tools_block(conv, style, marks) if has_prompt and conv.tools else ""
        system_block = self._system_block(conv, tools, marks) if has_prompt else ""
        first_prompt = (system_block if self.system_in_first_user else "") + (tools if self.tools_at == "first_user" else "")
        segments = [Segment(fill(self.prefix, **marks), False)]
        if not self.system_in_first_user:
            segments.append(Segment(system_block, False))
        runs, previous = _runs(conv.turns), None
        # What goes in front of the first user message (Llama-2's system block, Llama 3.1's tools),
        # even when truncation left a tool result first.
        first_user = next((i for i, run in enumerate(runs) if run[0].role == USER), None)
        last_query = max((i for i, run in enumerate(runs) if run[0].role == USER), default=-1)
        thinking = self.thinking_on(conv)
        for index, turns in enumerate(runs):
            role = turns[0].role
            if role in ANSWER_ROLES:
                final = index == len(runs) - 1 and has_prompt
                read, written = self._think_block(turns[0], final, index > last_query, thinking, conv.source)
                segments += [Segment(read, False), *self._answer(turns[0], written, style, conv.source, marks)]
            elif role in PROMPT_ROLES:
                separator = self.separator if previous in ANSWER_ROLES else ""
                fused = first_prompt if index == first_user else ""
                segments.append(Segment(separator + self._prompt_text(turns, fused, style, conv.source, marks), False))
            else:
                raise DataError(f"{conv.source}: turn has role '{role}'; expected one of {PROMPT_ROLES + ANSWER_ROLES}")
            previous = role
        if previous in PROMPT_ROLES:
            segments.append(Segment(self.generation_block(thinking), False))
        return self._close_answers(_merge(segments), eos)

    # ------------------------------------------------------------ reasoning

    def thinking_on(self, conv: Conversation) -> bool:
        """Whether the model thinks in the answer a conversation ends with (or is to write next)."""
        if conv.thinking is not None:
            return conv.thinking
        last = conv.turns[-1] if conv.turns else None
        if last is not None and last.role in ANSWER_ROLES and last.reasoning is not None:
            return True
        if any(soft_switch(turn) for turn in conv.turns):
            return True
        return self.thinking_default if last is None or last.role in PROMPT_ROLES else False

    def _think_block(self, turn: Turn, final: bool, after_query: bool, thinking: bool, source: str) -> tuple[str, str]:
        """The think block of an answer: the part the prompt holds (read), the part the model writes."""
        reasoning = turn.reasoning.strip("\n") if turn.reasoning is not None else None
        if not final:
            keep = self.past_reasoning == "after_last_query" and after_query and reasoning
            return "", fill(self.reasoning_format, reasoning=reasoning) if keep else ""
        if self.thinking and not thinking:
            if reasoning:
                raise DataError(f"{source}: thinking is off (enable_thinking: false), yet the answer has reasoning; "
                                "drop the reasoning or turn thinking on")
            return fill(self.reasoning_format, reasoning=""), ""
        if self.thinking == "always":
            opening, _, rest = self.reasoning_format.partition("{reasoning}")
            return opening, (reasoning or "") + rest
        if self.thinking == "switch" or reasoning is not None:
            return "", fill(self.reasoning_format, reasoning=reasoning or "")
        return "", ""

    def generation_block(self, thinking: bool) -> str:
        """What a generation prompt ends with: nothing, the opened block (R1), or the empty one (thinking off)."""
        if not self.thinking:
            return ""
        if not thinking:
            return fill(self.reasoning_format, reasoning="")
        return self.reasoning_format.partition("{reasoning}")[0] if self.thinking == "always" else ""

    def _style(self, conv: Conversation) -> Style | None:
        if conv.tools and not self.tools:
            able = ", ".join(sorted(name for name, t in builtin_templates().items() if t.tools))
            where = f"{conv.source}: " if conv.source else ""
            raise LmtuneError(
                f"{where}the conversation shows the model tools, but template '{self.name}' cannot render tools; "
                f"templates that can: {able}"
            )
        return STYLES[self.tool_style] if self.tool_style else None

    def _tools_block(self, conv: Conversation, style: Style, marks: dict[str, str]) -> str:
        tools = check_tools(conv.tools, conv.source)
        return fill(self.tools, tools=style.tool_joiner.join(map(style.tool, tools)), **marks)

    def _system_block(self, conv: Conversation, tools: str, marks: dict[str, str]) -> str:
        system = conv.system
        if system is None:
            has_input = any(turn.input for turn in conv.turns)
            system = self.default_system_with_input if has_input and self.default_system_with_input else self.default_system
        if tools and self.tools_at == "system":
            system = f"{system}\n\n{tools}" if system else tools  # Qwen: after the system prompt and a blank line
        fmt = self.system_with_tools if tools and self.system_with_tools else self.system
        block = fill(fmt, content=system, **marks) if system or self.always_system else ""
        before, after = (tools if self.tools_at == at else "" for at in ("before_system", "after_system"))
        return before + block + after

    def _prompt_text(self, turns: list[Turn], fused: str, style: Style | None, source: str, marks: dict[str, str]) -> str:
        if turns[0].role == OBSERVATION and self.observation and style:
            results = join([style.result(t.content) for t in turns], style.result_joiner, "tool result", self.name, source)
            return fill(self.observation, content=results, **marks)
        return "".join(self._one_prompt(turn, fused if i == 0 else "", marks) for i, turn in enumerate(turns))

    def _one_prompt(self, turn: Turn, fused: str, marks: dict[str, str]) -> str:
        if turn.role == OBSERVATION and self.observation:
            return fill(self.observation, content=turn.content, **marks)
        if turn.input and self.user_with_input:
            return fill(self.user_with_input, content=fused + turn.content, input=turn.input, **marks)
        content = f"{turn.content}\n{turn.input}" if turn.input else turn.content
        return fill(self.user, content=fused + content, **marks)

    def _answer(self, turn: Turn, block: str, style: Style | None, source: str, marks: dict[str, str]) -> list[Segment]:
        """The answer (its think block first) is trained up to and including its end token; what
        the format puts after that token (ChatML's newline) is read, not written. An answer the
        conversation shows otherwise than the model wrote it (turn.trained false) is read only."""
        fmt, content = self.assistant, turn.content
        if turn.role == FUNCTION:
            fmt = self.function or self.assistant
            if style:
                calls = [style.call(call) for call in parse_calls(turn.content, source)]
                content = join(calls, style.call_joiner, "function call", self.name, source)
        written, after = self.split_end(fmt)
        text = fill(written, content=block + content, **marks)
        return [Segment(text, turn.trained, reasoning=text.find(block) + len(block) if block and turn.trained else 0), Segment(fill(after, **marks), False)]

    def _close_answers(self, segments: list[Segment], eos: str) -> list[Segment]:
        """With answer_end set, an answer takes the token that opens the next turn as its end (or
        EOS, at the end of the conversation)."""
        if not self.answer_end:
            return segments
        closed = []
        for index, segment in enumerate(segments):
            following = segments[index + 1] if index + 1 < len(segments) else None
            if not segment.answer:
                closed.append(segment)
            elif following is None:
                closed.append(replace(segment, text=segment.text + eos))
            else:
                token = self._opening_token(following.text)
                closed.append(replace(segment, text=segment.text + token, eos_label=self.answer_end == "eos_label"))
                segments[index + 1] = Segment(following.text[len(token) :], False)
        return [segment for segment in closed if segment.text]

    def _opening_token(self, text: str) -> str:
        token = max((t for t in self.tokens if text.startswith(t)), key=len, default=None)
        if token is None:
            raise LmtuneError(f"template '{self.name}': with answer_end: {self.answer_end}, every turn after an answer "
                              f"must open with one of its tokens; this one opens with {text[:20]!r}")
        return token

    def split_end(self, fmt: str) -> tuple[str, str]:
        """The answer format up to and including its end token, and what follows it."""
        if self.answer_end:
            return fmt, ""
        end = max((fmt.rfind(mark) + len(mark) for mark in ("{eos}", *self.tokens) if mark in fmt), default=len(fmt))
        return fmt[:end], fmt[end:]

    # ------------------------------------------------------------ facts for encoder and engine

    def fingerprint(self) -> dict:
        """Everything that decides the rendering, for cache keys."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "description"}

    def writes_bos(self) -> bool:
        return any("{bos}" in (fmt or "") for fmt in (self.prefix, self.user, self.system, self.system_with_tools))

    def end_token(self) -> str:
        """What ends the last answer of a conversation: "{eos}" or one of the template's tokens."""
        return self._end_of(self.assistant)

    def end_tokens(self) -> tuple[str, ...]:
        """Every token that ends an answer or a tool call; generation stops at any of them."""
        ends = [self.end_token(), self._end_of(self.function or self.assistant)]
        if self.answer_end == "next_turn":
            ends += [self._opening_token(fmt) for fmt in (self.user, self.observation) if fmt]
        return tuple(dict.fromkeys(ends))

    def _end_of(self, fmt: str) -> str:
        written = "{eos}" if self.answer_end else self.split_end(fmt)[0]
        return "{eos}" if written.endswith("{eos}") else max((t for t in self.tokens if written.endswith(t)), key=len)


def soft_switch(turn: Turn) -> bool:
    """Whether a user turn ends with Qwen3's /think or /no_think (then the model writes its think block itself)."""
    return turn.role == USER and turn.content.rstrip().endswith(SOFT_SWITCHES)


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """Text before the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _runs(turns: list[Turn]) -> list[list[Turn]]:
    """Turns one by one, except that consecutive tool results form one run (Qwen shows them in one message)."""
    runs: list[list[Turn]] = []
    for turn in turns:
        if runs and turn.role == OBSERVATION and runs[-1][-1].role == OBSERVATION:
            runs[-1].append(turn)
        else:
            runs.append([turn])
    return runs


def _merge(segments: list[Segment]) -> list[Segment]:
    """Adjacent segments of the same kind become one (the prefix and system block, say)."""
    merged: list[Segment] = []
    for segment in segments:
        if merged and merged[-1].answer == segment.answer and not segment.reasoning:
            merged[-1] = replace(merged[-1], text=merged[-1].text + segment.text)
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
    problem = _problem(template)
    if problem:
        raise LmtuneError(f"{source}: template '{name}': {problem}")
    return template


def _problem(t: Template) -> str | None:
    """What makes a template unusable, if anything."""
    ends = ("{eos}", *t.tokens)
    if t.answer_end not in ANSWER_ENDS:
        return f"answer_end must be one of {[e for e in ANSWER_ENDS if e]}, got {t.answer_end!r}"
    if not t.answer_end and not all(any(e in fmt for e in ends) for fmt in (t.assistant, t.function or t.assistant)):
        return ("the assistant format must end the answer with {eos} or one of its tokens (or set answer_end), "
                "or the model never learns to stop")
    if t.answer_end and (t.separator or not all(any(fmt.startswith(tok) for tok in t.tokens) for fmt in (t.user, t.observation or t.user))):
        return f"with answer_end: {t.answer_end}, the user and observation formats must open with one of its tokens, with no separator"
    if t.tools and (t.tool_style not in STYLES or "{tools}" not in t.tools or t.tools_at not in TOOLS_AT):
        return f"tools need a tool_style ({', '.join(STYLES)}), a {{tools}} slot and tools_at in {list(TOOLS_AT)}"
    if t.past_reasoning not in PAST_REASONING or t.thinking not in THINKING or "{reasoning}" not in t.reasoning_format:
        return (f"past_reasoning must be one of {list(PAST_REASONING)}, thinking one of {list(THINKING)}, "
                "and reasoning_format needs a {reasoning} slot")
    if t.tool_style and t.tool_style not in STYLES:
        return f"unknown tool_style {t.tool_style!r}; known: {', '.join(STYLES)}"
    return None


def save_template(template: Template, folder: Path) -> Path:
    """The template as data next to the model, so chat and serve use it even if the YAML it came
    from moves or the registry changes."""
    spec = {f.name: getattr(template, f.name) for f in fields(Template) if f.name != "name" and getattr(template, f.name) != f.default}
    spec = {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()}
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
        templates.update(parse_templates(read_yaml(path), str(path)))
    return templates


def get_template(name: str, extra_file: str | Path | None = None) -> Template:
    templates = load_templates(extra_file)
    if name not in templates:
        raise LmtuneError(f"unknown template '{name}'; available: {', '.join(sorted(templates))}")
    return templates[name]
