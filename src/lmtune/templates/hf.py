"""`template: auto`: the tokenizer's own chat_template (Jinja) renders the conversation.

An answer is what the template adds after its generation prompt: the conversation up to it with
`add_generation_prompt` (and `enable_thinking` as named templates decide it), then up to and
including it. Templates that rewrite earlier turns (Qwen3 and DeepSeek-R1 drop past reasoning)
show an earlier answer otherwise than the model wrote it; such an answer is trained only in a
context of its own (data.contexts), never in the later one. Where a template drops the reasoning
even from the answer being written (DeepSeek-R1's), it is put back as the model writes it.
Templates that put no end token after an answer (ChatGLM's: the model would never learn to stop)
are refused.
Tool definitions go in as `tools=`, calls as an assistant message's `tool_calls` and results as
`tool` messages, the way transformers and vLLM hand them to the template.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.data.records import FUNCTION, Conversation, Turn
from lmtune.errors import DataError, LmtuneError
from lmtune.templates.reasoning import CLOSE, OPEN, opens_reasoning
from lmtune.templates.template import ANSWER_ROLES, TEMPLATE_FILE, Segment, Template, get_template, soft_switch
from lmtune.templates.tools import parse_calls

AUTO = "auto"
log = logging.getLogger(__name__)
ROLE_NAMES = {"user": "user", "assistant": "assistant", "observation": "tool", "function": "assistant"}


@dataclass(frozen=True, eq=False)
class TokenizerChatTemplate:
    tokenizer: Any
    name: str = AUTO
    tokens: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()
    description: str = "the tokenizer's own chat_template"

    def render(self, conv: Conversation, bos: str = "", eos: str = "") -> list[Segment]:
        """The conversation as the context of its last answer (or of the answer to come), with
        each earlier answer marked where the template shows it as the model wrote it."""
        tools = self._tools(conv)
        messages = ([{"role": "system", "content": conv.system}] if conv.system else []) + [self._message(t, conv.source) for t in conv.turns]
        offset = len(messages) - len(conv.turns)
        answers = [i for i, turn in enumerate(conv.turns) if turn.role in ANSWER_ROLES]
        last = answers[-1] if conv.turns and conv.turns[-1].role in ANSWER_ROLES else None
        if last is None:
            return [Segment(text, False)] if (text := self._apply(messages, tools, True, conv.thinking)) else []
        context = self._apply(messages[: offset + last], tools, True, self._thinking(conv, last))
        segments, done = [], 0
        for index in answers:
            turn = conv.turns[index]
            prompt = context if index == last else self._apply(messages[: offset + index], tools, True, self._thinking(conv, index))
            written = self._written(prompt, messages[: offset + index + 1], tools, turn, conv.source)
            if index == last or (turn.trained and context.startswith(prompt + written) and len(prompt) >= done):
                end = self._end_of(written)  # what follows the end token (ChatML's newline) is read, not trained
                segments += [Segment(context[done : len(prompt)], False),
                             Segment(written[:end], turn.trained, reasoning=_reasoning_chars(written, turn)), Segment(written[end:], False)]
                done = len(prompt) + len(written)
        return [s for s in segments if s.text]

    def _written(self, prompt: str, messages: list[dict], tools: list[dict] | None, turn: Turn, source: str) -> str:
        """What the model writes after `prompt`: the template's rendering of the answer, with the
        reasoning put back where the template drops it even from the answer being written
        (DeepSeek-R1's strips everything up to </think>), as the model writes it."""
        full = self._apply(messages, tools, False)
        opened = opens_reasoning(prompt)
        stem = prompt[: prompt.rstrip("\n").rfind(OPEN)] if opened else prompt
        if not full.startswith(stem):
            raise DataError(f"{source}: the tokenizer's chat_template renders an answer's context otherwise than its generation "
                            "prompt, so the answer cannot be told apart; pick a named template (`lmtune templates`)")
        tail = full[len(stem) :]
        if opened:
            opening = prompt[len(stem) :]
            written = tail[len(opening) :] if tail.startswith(opening) else f"{turn.reasoning or ''}\n{CLOSE}\n\n{tail}"
        elif turn.reasoning is not None and CLOSE not in tail:
            written = f"{OPEN}\n{turn.reasoning}\n{CLOSE}\n\n{tail}"
        else:
            written = tail
        self._check_end(written, source)
        return written

    def _thinking(self, conv: Conversation, index: int) -> bool:
        """enable_thinking for the prompt of answer `index`, as named templates decide it."""
        if conv.thinking is not None:
            return conv.thinking
        turns = conv.turns[: index + 1]
        return turns[-1].reasoning is not None or any(soft_switch(t) for t in turns)

    def _tools(self, conv: Conversation) -> list[dict] | None:
        if conv.tools and "tools" not in self.tokenizer.chat_template:
            raise LmtuneError(f"{conv.source}: the conversation shows the model tools, but the tokenizer's chat_template "
                              "takes no `tools`; pick a named template that renders them (`lmtune templates`)")
        return conv.tools or None

    def _message(self, turn: Turn, source: str) -> dict:
        """As transformers and vLLM hand a message over, reasoning as `reasoning_content` (Qwen3 reads it)."""
        # Where the template does not read reasoning_content, earlier answers go without their
        # reasoning, as API clients send them back; the answer being written gets it in _written.
        reads_reasoning = turn.reasoning is not None and "reasoning_content" in self.tokenizer.chat_template
        reasoning = {"reasoning_content": turn.reasoning} if reads_reasoning else {}
        if turn.role == FUNCTION and "tool_calls" in self.tokenizer.chat_template:
            calls = [{"type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in parse_calls(turn.content, source)]
            message = {"role": "assistant", "content": "", "tool_calls": calls}
        else:
            message = {"role": ROLE_NAMES[turn.role], "content": turn.content + (f"\n{turn.input}" if turn.input else "")}
        return {**message, **reasoning}

    def _end_tokens(self) -> list[str]:
        return [t for t in (self.tokenizer.eos_token, *self.tokenizer.all_special_tokens) if t]

    def _end_of(self, answer: str) -> int:
        """Where the answer's last end token ends."""
        return max(answer.rfind(end) + len(end) for end in self._end_tokens() if end in answer)

    def _check_end(self, answer: str, source: str) -> None:
        if not any(end in answer for end in self._end_tokens()):
            raise DataError(f"{source}: the tokenizer's chat_template puts no end token after an answer ({answer[-30:]!r}), "
                            "so the model would never learn to stop; pick a named template (`lmtune templates`)")

    def _apply(self, messages: list[dict], tools: list[dict] | None, generation: bool, thinking: bool | None = None) -> str:
        if not messages:
            return ""
        switch = {} if thinking is None else {"enable_thinking": thinking}
        return self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation, **switch)

    def fingerprint(self) -> dict:
        return {"chat_template": self.tokenizer.chat_template}

    def writes_bos(self) -> bool:
        return "bos_token" in (self.tokenizer.chat_template or "")

    def end_token(self) -> str:
        return "{eos}"

    def end_tokens(self) -> tuple[str, ...]:
        return ("{eos}",)


def _reasoning_chars(written: str, turn: Turn) -> int:
    """How many first characters of an answer are its think block (up to the answer after it)."""
    end = written.find(CLOSE) if turn.reasoning is not None else -1
    if end < 0:
        return 0
    end += len(CLOSE)
    return end + len(written[end:]) - len(written[end:].lstrip("\n"))


def template_for(name: str, tokenizer, extra_file: str | None = None) -> Template | TokenizerChatTemplate:
    """A named template, or with `auto` the tokenizer's own chat_template."""
    if name != AUTO:
        return get_template(name, extra_file)
    if not getattr(tokenizer, "chat_template", None):
        raise LmtuneError("template: auto needs a tokenizer with a chat_template; this one has none, so name a template")
    return TokenizerChatTemplate(tokenizer)


def choose_template(name: str | None, run, run_dir: str | None, tokenizer) -> Template | TokenizerChatTemplate:
    """The template a command uses: the one named, else the run's (its saved template.yaml, exactly as trained)."""
    trained = run.data.template if run else None
    if name and trained and name != trained:
        log.warning("template '%s' overrides '%s', the template this model was trained with", name, trained)
    if not (name or trained):
        raise LmtuneError("no template: the model folder has no run.yaml; pass --template NAME (see `lmtune templates`)")
    saved = Path(run_dir or "") / TEMPLATE_FILE
    if (name or trained) == trained and saved.is_file():
        return get_template(trained, saved)  # exactly the template training used
    return template_for(name or trained, tokenizer, run.data.template_file if run else None)
