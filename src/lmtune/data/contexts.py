"""Every answer trained in the context the model sees when it writes it.

A template may show an earlier answer otherwise than the model wrote it: DeepSeek-R1 and Qwen3
drop past reasoning, Qwen3 writes the empty think block only into the answer being written. The
full rendering of a multi-turn conversation then holds earlier answers in a context inference
never shows (the answer without its reasoning after a prompt where the model always reasons).

So a conversation becomes samples by answers: the rendering for its last answer trains every
answer whose own rendering (the conversation cut after it, the answer being written) is a prefix
of it, character for character and span for span; that holds for every answer of templates that
rewrite nothing, so their conversations stay one sample. Each remaining answer is trained in a
sample of its own context, the latest first, with the same rule. `rewritten_answers: context_only`
keeps one sample per conversation instead, and the rewritten answers there are context only.
"""

from __future__ import annotations

from dataclasses import replace

from lmtune.data.records import Conversation
from lmtune.templates.template import ANSWER_ROLES, PROMPT_ROLES

REWRITTEN_ANSWERS = ("own_sample", "context_only")


def answer_contexts(conv: Conversation, render, rewritten_answers: str = "own_sample") -> list[Conversation]:
    """The conversation as the samples that train each answer in its own context, oldest first.
    `render`: Conversation -> segments, as the encoder renders them."""
    answers = [i for i, turn in enumerate(conv.turns) if turn.role in ANSWER_ROLES]
    if len(answers) < 2 or not any(turn.role in PROMPT_ROLES for turn in conv.turns):
        return [conv]
    layouts = {}

    def layout(last: int) -> tuple[str, list[tuple[int, bool]]]:
        if last not in layouts:
            segments = render(_cut(conv, last))
            layouts[last] = ("".join(s.text for s in segments), _bounds(segments))
        return layouts[last]

    samples, left = [], answers
    while left:
        text, bounds = layout(left[-1])
        exact = {i for i in left if _prefix_of(layout(i), text, bounds)}
        kept = [replace(turn, trained=False) if i in answers and i not in exact else turn for i, turn in enumerate(conv.turns[: left[-1] + 1])]
        samples.append(replace(conv, turns=kept))
        if rewritten_answers == "context_only":
            break
        left = [i for i in left if i not in exact]
    return samples[::-1]


def _cut(conv: Conversation, last: int) -> Conversation:
    return replace(conv, turns=conv.turns[: last + 1])


def _bounds(segments) -> list[tuple[int, bool]]:
    """(end offset, answer) of each segment."""
    out, end = [], 0
    for segment in segments:
        end += len(segment.text)
        out.append((end, segment.answer))
    return out


def _prefix_of(own: tuple[str, list[tuple[int, bool]]], text: str, bounds: list[tuple[int, bool]]) -> bool:
    """Whether an answer's own rendering is the start of this one, with the same answer spans
    (it may end inside a read segment here: ChatML's newline after the end token, then the next turn)."""
    own_text, own_bounds = own
    if not text.startswith(own_text):
        return False
    clipped = [(start, min(end, len(own_text))) for start, end in _spans(bounds) if start < len(own_text)]
    return clipped == _spans(own_bounds)


def _spans(bounds: list[tuple[int, bool]]) -> list[tuple[int, int]]:
    spans, start = [], 0
    for end, answer in bounds:
        if answer and end > start:
            spans.append((start, end))
        start = end
    return spans
