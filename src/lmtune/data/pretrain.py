"""Continued pre-training (data.stage: pt): raw documents, every token trained, nothing cut off.

Each document becomes [BOS] text EOS and is split into pieces of at most cutoff_len tokens, so a
long document is never truncated (as it would be as one sft sample). For training the pieces are
then either joined end to end and cut into full cutoff_len blocks (the classic causal-LM recipe:
no padding, attention may run across a document boundary, as in the original pre-training), or,
with data.packing, packed so that attention stays within each document.
"""

from __future__ import annotations

from lmtune.data.encode import Encoder, Sample, adds_bos
from lmtune.data.records import ASSISTANT, Conversation
from lmtune.errors import DataError

CHUNK = 1000  # documents per tokenizer call


def document_samples(convs: list[Conversation], encoder: Encoder) -> list[Sample]:
    """Every document as consecutive pieces of at most cutoff_len tokens, labels = inputs."""
    for conv in convs:
        if conv.system or len(conv.turns) != 1 or conv.turns[0].role != ASSISTANT:
            raise DataError(
                f"{conv.source}: data.stage: pt trains on raw text, and this record is a conversation; use "
                '{"text": ...} records or .txt files, or data.stage: sft for conversations'
            )
    size, samples = encoder.cutoff_len, []
    bos = [encoder.tokenizer.bos_token_id] if adds_bos(encoder.tokenizer) else []  # no template here
    for start in range(0, len(convs), CHUNK):
        texts = [conv.turns[0].content for conv in convs[start : start + CHUNK]]
        for ids in encoder.tokenizer(texts, add_special_tokens=False)["input_ids"]:
            document = bos + ids + [encoder.eos_id]
            samples += [Sample(document[i : i + size], document[i : i + size]) for i in range(0, len(document), size)]
    return samples


def blocks(samples: list[Sample], cutoff_len: int) -> list[dict]:
    """All pieces end to end, cut into rows of cutoff_len tokens; the last row keeps the rest."""
    stream = [token for sample in samples for token in sample.input_ids]
    return [
        {"input_ids": stream[i : i + cutoff_len], "labels": stream[i : i + cutoff_len]}
        for i in range(0, len(stream), cutoff_len)
    ]
