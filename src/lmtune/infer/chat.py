"""`lmtune chat`: a multi-turn conversation in the terminal, streamed token by token."""

from __future__ import annotations

from collections.abc import Callable

from lmtune.data.records import ASSISTANT, USER, Conversation, Turn
from lmtune.infer.engine import Engine

HELP = "Type a message. Commands: /clear starts a new conversation, /exit quits."


def chat_loop(engine: Engine, read: Callable[[str], str], write: Callable[[str], None], system: str | None = None):
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
        reply = engine.chat(conv, on_text=write)
        write("\n" if reply.finish_reason == "stop" else f"\n[stopped at max_new_tokens={engine.settings.max_new_tokens}]\n")
        conv.turns.append(Turn(ASSISTANT, reply.text))
