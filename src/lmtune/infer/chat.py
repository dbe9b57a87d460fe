"""`lmtune chat`: a multi-turn conversation in the terminal, streamed token by token.

With a knowledge base (`--kb`), every user turn is a query: its passages replace the system
prompt for that turn (see lmtune.kb.ground for the layout) and their sources follow the answer.
"""

from __future__ import annotations

from collections.abc import Callable

from lmtune.data.records import ASSISTANT, USER, Conversation, Turn
from lmtune.infer.engine import Engine

HELP = "Type a message. Commands: /clear starts a new conversation, /exit quits."


def chat_loop(engine: Engine, read: Callable[[str], str], write: Callable[[str], None], system: str | None = None, retriever=None):
    conv = Conversation([], system=system)
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
            conv = Conversation([], system=system)
            write("(new conversation)\n")
            continue
        if not message.strip():
            continue
        conv.turns.append(Turn(USER, message))
        write("assistant> ")
        text = _answer(engine, conv, write, system, retriever)
        conv.turns.append(Turn(ASSISTANT, text))


def _answer(engine: Engine, conv: Conversation, write: Callable[[str], None], system: str | None, retriever) -> str:
    grounding = None
    if retriever is not None:
        from lmtune.kb.ground import ground

        grounding = ground(retriever, conv.turns[-1].content, system)
        conv.system = grounding.system
    if grounding and grounding.refusal:
        write(grounding.refusal + "\n")
        return grounding.refusal
    reply = engine.chat(conv, on_text=write)
    write("\n" if reply.finish_reason == "stop" else f"\n[stopped at max_new_tokens={engine.settings.max_new_tokens}]\n")
    if grounding:
        from lmtune.kb.ground import sources_text

        write(sources_text(grounding) + "\n")
    return reply.text
