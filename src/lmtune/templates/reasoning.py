"""Reasoning ("thinking") beside an answer: `<think>…</think>` in text, `reasoning` apart in lmtune.

Models that think (Qwen3, QwQ, DeepSeek-R1 and its distills) write their reasoning in a think
block before the answer. lmtune keeps the two apart everywhere: a Turn carries `reasoning` beside
its `content`, templates write the block as the family does, and what a model generates is split
back into reasoning and answer (`parse_output`, or `ReasoningStream` token by token) before chat,
generate, eval or the server show it.

Reading data follows Qwen3's official chat template: the reasoning is what comes before the first
`</think>` (after an opening `<think>`, which R1-distill data often leaves out because the prompt
opened it), the answer is what follows the last `</think>`, and newlines around both are trimmed.
"""

from __future__ import annotations

from dataclasses import dataclass

OPEN, CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class Parsed:
    reasoning: str | None  # None: the output had no think block
    answer: str
    closed: bool = True  # False: the output ended inside its think block (cut by max_tokens, or it never stopped)


def split_answer(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) of an answer in the data; reasoning is None without a think block.
    Raises ValueError for a block that opens and never closes, whose answer would be lost."""
    if CLOSE not in text:
        if text.lstrip().startswith(OPEN):
            raise ValueError(f"the answer opens {OPEN} but never closes it with {CLOSE}, so it has no answer after its reasoning")
        return None, text
    head = text.split(CLOSE)[0]
    return head.rstrip("\n").split(OPEN)[-1].lstrip("\n"), text.split(CLOSE)[-1].lstrip("\n")


def parse_output(text: str, opened: bool = False) -> Parsed:
    """A model's output as reasoning and answer. `opened`: the prompt ended inside an open think
    block (DeepSeek-R1's prompt ends with `<think>\\n`), so the output starts with reasoning."""
    body = text
    if not opened:
        stripped = text.lstrip()
        if not stripped.startswith(OPEN):
            return Parsed(None, text)
        body = stripped[len(OPEN) :]
    if CLOSE in body:
        reasoning, _, answer = body.partition(CLOSE)
        return Parsed(reasoning.strip("\n"), answer.lstrip("\n"))
    return Parsed(body.strip("\n"), "", closed=False)


def opens_reasoning(prompt: str) -> bool:
    """Whether a generation prompt ends inside an open think block."""
    return prompt.rstrip("\n").endswith(OPEN)


class ReasoningStream:
    """parse_output, piece by piece as text streams in: `feed` returns the (reasoning, answer) text
    that is certain so far, holding back what may be the start of a tag or newlines that the block
    trims; `close` returns the rest. Joined, the pieces equal parse_output of the whole text."""

    def __init__(self, opened: bool = False):
        self.state = "reasoning" if opened else "start"
        self.pending = ""  # text not yet given out
        self.started = False  # the current part (reasoning or answer) has given out text: later newlines are kept
        self.reasoning_seen = opened

    @property
    def closed(self) -> bool:
        return self.state != "reasoning"

    def feed(self, text: str) -> tuple[str, str]:
        self.pending += text
        reasoning, answer = [], []
        while True:
            if self.state == "start":
                stripped = self.pending.lstrip()
                if stripped.startswith(OPEN):
                    self.pending, self.state, self.reasoning_seen = stripped[len(OPEN) :], "reasoning", True
                    continue
                if OPEN.startswith(stripped):  # whitespace, or part of <think>: wait for more
                    break
                self.state, self.started = "answer", True  # no think block: everything is answer, as it came
                continue
            if self.state == "reasoning":
                if CLOSE in self.pending:
                    head, _, self.pending = self.pending.partition(CLOSE)
                    reasoning.append(self._trimmed(head.rstrip("\n")))
                    self.state, self.started = "answer", False
                    continue
                reasoning.append(self._certain(keep=_tail_overlap(self.pending, CLOSE)))
                break
            # answer
            if not self.started:
                self.pending = self.pending.lstrip("\n")
                self.started = bool(self.pending)
            answer.append(self.pending)
            self.pending = ""
            break
        return "".join(reasoning), "".join(answer)

    def close(self) -> tuple[str, str]:
        """The text held back, once the output has ended."""
        rest, self.pending = self.pending, ""
        if self.state == "reasoning":
            return self._trimmed(rest.rstrip("\n")), ""
        if self.state == "start":
            return "", rest
        return "", rest if self.started else rest.lstrip("\n")

    def _certain(self, keep: int) -> str:
        """Reasoning text that can go out now: not the last `keep` characters (maybe a tag's start),
        nor trailing newlines (they may sit right before the closing tag, which trims them)."""
        cut = len(self.pending) - keep
        out = self.pending[:cut].rstrip("\n")
        self.pending = self.pending[len(out) :]
        return self._trimmed(out)

    def _trimmed(self, text: str) -> str:
        if not self.started:
            text = text.lstrip("\n")
            self.started = bool(text)
        return text


def _tail_overlap(text: str, tag: str) -> int:
    """How many last characters of text could be the start of tag."""
    return next((n for n in range(min(len(tag) - 1, len(text)), 0, -1) if tag.startswith(text[-n:])), 0)
