"""GRPO prompts (data.stage: grpo): questions the model answers while it trains, each with an optional
reference answer that reward functions compare against, rendered by the same template as chat.

Layouts:
- alpaca:                       {"instruction", "input", "output": reference (optional)}
- sharegpt / OpenAI messages:   {"conversations" | "messages": [… ending with the user, or with a reference answer]}
- prompt:                       {"prompt": text or messages}
Any of them may hold the reference in "answer" or "solution" instead (GSM8K, MATH); numbers are
read as text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmtune.data.formats import detect_format, to_conversation, type_name
from lmtune.data.records import ASSISTANT, Conversation
from lmtune.errors import RecordError

if TYPE_CHECKING:  # reading prompts needs no encoder (nor numpy): the data is checked before anything heavy loads
    from lmtune.data.encode import Encoder

REFERENCE_FIELDS = ("answer", "solution")


@dataclass
class Prompted(Conversation):
    """A conversation ending where the model is to answer, and what a right answer would be."""

    reference: str | None = None


@dataclass
class PromptSample:
    prompt_ids: list[int]
    text: str  # the prompt as rendered by the template: reward functions see it, TRL passes it around
    reference: str | None
    truncated: bool = False

    @property
    def input_ids(self) -> list[int]:  # for the check against the embedding table
        return self.prompt_ids

    def row(self) -> dict:
        return {"prompt": self.text, "reference": self.reference}


def detect_prompt_format(record: dict[str, Any]) -> str:
    if "prompt" in record and not any(key in record for key in ("instruction", "conversations", "messages")):
        return "prompt"
    return detect_format(record)


def to_prompted(record: dict[str, Any], fmt: str, columns=None, tags=None, ignored: list[str] | None = None) -> Prompted:
    given = [name for name in REFERENCE_FIELDS if name in record]
    rest = {k: v for k, v in record.items() if k not in given}
    if fmt == "prompt":
        prompt = rest.pop("prompt")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if not isinstance(messages, list):
            raise RecordError(f"'prompt' must be text or a list of messages, got {type_name(prompt)}")
        conv = to_conversation({**rest, "messages": messages}, "messages", prompt_only=True, ignored=ignored)
    elif fmt == "text":
        raise RecordError("GRPO prompts come as alpaca, sharegpt, messages or {\"prompt\": …} records, not plain text")
    else:
        conv = to_conversation(rest, fmt, columns, tags, prompt_only=True, ignored=ignored)
    prompt, last_answer = conv.without_last_answer()
    if not prompt.turns or prompt.turns[-1].role == ASSISTANT:
        raise RecordError("the record has no question for the model to answer")
    reference = _reference(record[given[0]], given[0]) if given else last_answer
    if ignored is not None:
        ignored += given[1:]
    return Prompted(prompt.turns, prompt.system, prompt.tools, reference=reference)


def _reference(value: Any, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RecordError(f"'{name}' must be the reference answer's text, got {type_name(value)}")
    return str(value)


def encode_prompts(convs: list[Prompted], encoder: Encoder) -> list[PromptSample]:
    """Prompt ids as `lmtune generate` builds them (BOS, the template's generation prompt); a prompt
    longer than cutoff_len keeps its end, which leads into the answer."""
    rendered = [encoder.render(c) for c in convs]
    samples = []
    for conv, segments, tokenized in zip(convs, rendered, encoder.tokenize(rendered)):
        room = encoder.cutoff_len - len(encoder.bos)
        ids = tokenized.ids[-room:]
        text = "".join(s.text for s in segments)
        samples.append(PromptSample(encoder.bos + list(ids), text, conv.reference, len(tokenized.ids) > room))
    return samples
