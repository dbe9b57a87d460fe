"""The one record type between readers and templates: a system prompt plus ordered turns."""

from __future__ import annotations

from dataclasses import dataclass, replace

USER, ASSISTANT = "user", "assistant"
# A tool call by the assistant, and the tool's answer. A function turn's content is LLaMA-Factory's
# layout, JSON {"name": …, "arguments": {…}}, or a list of those for parallel calls, which are then
# answered by one observation turn per call, in order.
FUNCTION, OBSERVATION = "function", "observation"
ROLES = (USER, ASSISTANT, FUNCTION, OBSERVATION)


@dataclass
class Turn:
    role: str  # one of ROLES
    content: str
    # Alpaca's separate context field. Templates with an input slot show it apart;
    # the others append it to the instruction on a new line.
    input: str = ""
    # An answer's reasoning (a thinking model's think block), kept apart from its content: None
    # when the data gives none. Templates write it as the family does (templates/reasoning.py).
    reasoning: str | None = None
    # False: the turn is context only, not trained (an earlier answer the template shows otherwise
    # than the model wrote it, such as without its reasoning).
    trained: bool = True


@dataclass
class Conversation:
    turns: list[Turn]
    system: str | None = None
    # Tool (function) definitions the model is shown, as OpenAI's `tools=` list of JSON schemas
    # ({"name", "description", "parameters"}, or wrapped as {"type": "function", "function": …});
    # templates render them the way each family's official chat template does.
    tools: list[dict] | None = None
    source: str = ""  # "file:line", for messages that point at the record
    origin: tuple[str, int] | None = None  # (file, record index): which record this is, for accounting
    # Thinking on or off for templates with a switch (Qwen3's enable_thinking); None: as the data
    # shows it (on where an answer has reasoning or the user writes /think or /no_think).
    thinking: bool | None = None

    def without_last_answer(self) -> tuple[Conversation, str | None]:
        """The prompt part (ending with a user turn) and the reference answer, if any."""
        if self.turns and self.turns[-1].role == ASSISTANT:
            return replace(self, turns=self.turns[:-1]), self.turns[-1].content
        return self, None
