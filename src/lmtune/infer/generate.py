"""`lmtune generate`: answer every record of a data file in batches, one JSON line per record."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from lmtune.data.readers import read_conversations
from lmtune.errors import DataError
from lmtune.infer.engine import Engine


def generate_file(
    engine: Engine,
    data: str | Path,
    out: str | Path,
    batch_size: int,
    progress: Callable[[int], None] = lambda n: None,
) -> int:
    """Writes each input record plus `prediction` and `finish_reason` (stop | length), in input
    order; returns the record count."""
    items = []
    for conv, record in read_conversations(data, prompt_only=True):
        prompt, _reference = conv.without_last_answer()
        if not prompt.turns:
            raise DataError(f"{conv.source}: record has no question to answer")
        items.append((prompt, record))
    # Similar lengths in one batch waste less compute on padding.
    order = sorted(range(len(items)), key=lambda i: len(engine.encoder.prompt_ids(items[i][0])), reverse=True)
    predictions: dict[int, tuple[str, str]] = {}
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        for index, reply in zip(batch, engine.generate([items[i][0] for i in batch])):
            predictions[index] = (reply.text, reply.finish_reason)
        progress(len(batch))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for index, (_, record) in enumerate(items):
            text, reason = predictions[index]
            f.write(json.dumps({**record, "prediction": text, "finish_reason": reason}, ensure_ascii=False) + "\n")
    return len(items)
