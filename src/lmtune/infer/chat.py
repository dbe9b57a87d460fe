"""`lmtune chat`: a multi-turn conversation in the terminal, streamed token by token.

A thinking model's reasoning streams apart from its answer: after `thinking>`, in REASONING_STYLE,
then the answer after `assistant>`. The history keeps the two apart (Turn.reasoning beside the
answer), so the template shows earlier reasoning as the family does, usually not at all.

With a knowledge base (`--kb`), every user turn is a query: its passages replace the system
prompt for that turn (see lmtune.kb.ground for the layout) and their sources follow the answer.
"""

from __future__ import annotations

from collections.abc import Callable

from lmtune.data.records import ASSISTANT, USER, Conversation, Turn
from lmtune.infer.engine import Engine
from lmtune.templates.reasoning import Parsed, ReasoningStream, parse_output

HELP = "Type a message. Commands: /clear starts a new conversation, /exit quits."
REASONING_STYLE = "dim italic"  # a rich style; shown plain where the output is not a terminal

Write = Callable[..., None]  # write(text, style=None): style is REASONING_STYLE for reasoning


def chat_loop(
    engine: Engine, read: Callable[[str], str], write: Write, system: str | None = None, retriever=None, thinking: bool | None = None
):
    """`thinking`: Conversation.thinking for templates with a switch (Qwen3's enable_thinking)."""
    conv = Conversation([], system=system, thinking=thinking)
    write(HELP + "\n")
    while True:
        try:
            message = read("\nuser> ")
        except EOFError:
            write("\n")
            return
        if message.strip() in ("/exit", "/quit"):
            return
        if message.strip() == "/clear":
            conv = Conversation([], system=system, thinking=thinking)
            write("(new conversation)\n")
            continue
        if not message.strip():
            continue
        conv.turns.append(Turn(USER, message))
        reply = _answer(engine, conv, write, system, retriever)
        conv.turns.append(Turn(ASSISTANT, reply.answer, reasoning=reply.reasoning))


def _answer(engine: Engine, conv: Conversation, write: Write, system: str | None, retriever) -> Parsed:
    grounding = None
    if retriever is not None:
        from lmtune.kb.ground import ground

        grounding = ground(retriever, conv.turns[-1].content, system)
        conv.system = grounding.system
    if grounding and grounding.refusal:
        write("assistant> " + grounding.refusal + "\n")
        return Parsed(None, grounding.refusal)
    opened = engine.encoder.opens_reasoning(conv)  # DeepSeek-R1's prompt opens the think block itself
    shown = _Shown(write, opened)
    reply = engine.chat(conv, on_text=shown)
    shown.end()
    parsed = parse_output(reply.text, opened)
    if reply.finish_reason == "stop":
        write("\n")
    else:
        where = "" if parsed.closed else ", inside the reasoning: no answer"
        write(f"\n[stopped at max_new_tokens={engine.settings.max_new_tokens}{where}]\n")
    if grounding:
        from lmtune.kb.ground import sources_text

        write(sources_text(grounding) + "\n")
    return parsed


class _Shown:
    """A reply as it streams: its reasoning (if any) after `thinking>`, then its answer after `assistant>`."""

    def __init__(self, write: Write, opened: bool):
        self.write, self.stream, self.part = write, ReasoningStream(opened), None

    def __call__(self, text: str) -> None:
        self._show(*self.stream.feed(text))

    def end(self) -> None:
        self._show(*self.stream.close())
        self._enter("answer")  # an empty answer still gets its label

    def _show(self, reasoning: str, answer: str) -> None:
        if reasoning:
            self._enter("reasoning")
            self.write(reasoning, REASONING_STYLE)
        if answer:
            self._enter("answer")
            self.write(answer)

    def _enter(self, part: str) -> None:
        if self.part == part or self.part == "answer":
            return
        self.write(("\n" if self.part else "") + ("thinking> " if part == "reasoning" else "assistant> "))
        self.part = part
