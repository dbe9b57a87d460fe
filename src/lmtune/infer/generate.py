"""`lmtune generate`: answer every record of a data file in batches, one JSON line per record.

Records are sorted by prompt length so that a batch wastes little on padding, and each finished
batch is appended to the output at once: a run that is stopped loses at most one batch, and
running the same command again answers only the records that have no prediction yet. When all
are answered the file is rewritten in input order.

A thinking model's output is split (templates.reasoning): `prediction` holds the answer alone,
`reasoning` the think block's text, and `reasoning_closed` false marks a block that never closed
(cut off by max_new_tokens: there is no answer). A distillation set keeps the two apart too.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from lmtune.data.convert import TARGETS, from_conversation
from lmtune.data.readers import read_conversations
from lmtune.data.records import ASSISTANT, Conversation, Turn
from lmtune.errors import DataError, RecordError
from lmtune.evaluate.metrics import ADDED, REASONING_FIELDS, parsed_row
from lmtune.infer.grammar import Spec, closing_think
from lmtune.templates.reasoning import Parsed, parse_output

if TYPE_CHECKING:  # the records are read and checked before the engine (torch) is imported
    from lmtune.infer.engine import Engine

DATASET_FORMATS = TARGETS  # alpaca, sharegpt, messages


@dataclass
class Item:
    prompt: Conversation
    record: dict
    reference: str | None


@dataclass
class Generated:
    records: int  # in the input
    answered: int  # by this run; the others were already in the output file
    rows: list[dict]  # the output, in input order


def read_items(data: str | Path, thinking: bool | None = None) -> list[Item]:
    """The records' questions; `thinking` (on, off; None: as each record says) for templates with a switch."""
    items = [to_item(conv, record) for conv, record in read_conversations(data, prompt_only=True)]
    if thinking is not None:
        items = [replace(item, prompt=replace(item.prompt, thinking=thinking)) for item in items]
    return items


def to_item(conv: Conversation, record: dict | None = None) -> Item:
    """The question part of a conversation, with its last answer as the reference. Without an
    original record (a dev split), the conversation itself is written out as alpaca or sharegpt."""
    prompt, reference = conv.without_last_answer()
    if not prompt.turns:
        raise DataError(f"{conv.source}: record has no question to answer")
    if record is None:
        try:
            record = from_conversation(conv, "alpaca")
        except RecordError:
            record = from_conversation(conv, "sharegpt")
    return Item(prompt, record, reference)


def generate_file(
    engine: Engine,
    items: list[Item],
    out: str | Path,
    batch_size: int,
    progress: Callable[[int], None] = lambda n: None,
    spec: Spec | None = None,
) -> Generated:
    """Writes each input record plus `prediction` (the answer) and `finish_reason` (stop | length),
    `reference` (the record's last answer) when the record has no alpaca `output` field, and
    `reasoning` and `reasoning_closed` when the output had a think block. With spec (--json-schema,
    infer/grammar.py) every prediction that stopped is JSON valid against the schema."""
    out = Path(out)
    done = _earlier_answers(out, items)
    todo = [i for i in range(len(items)) if i not in done]
    progress(len(items) - len(todo))
    if done:
        _write_jsonl(out, list(done.values()))  # drops the half-written line an interrupted run may have left
    todo.sort(key=lambda i: len(engine.encoder.prompt_ids(items[i].prompt)), reverse=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as f:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            prompts = [items[i].prompt for i in batch]
            replies = engine.generate(prompts, closing_think(spec, engine.encoder.opens_reasoning(prompts[0]))) if spec else engine.generate(prompts)
            for index, reply in zip(batch, replies):
                # After a prompt that opens the think block (DeepSeek-R1's) the output starts inside it.
                parsed = parse_output(reply.text, engine.encoder.opens_reasoning(items[index].prompt))
                done[index] = _row(items[index], parsed, reply.finish_reason)
                f.write(json.dumps(done[index], ensure_ascii=False) + "\n")
            f.flush()
            progress(len(batch))
    rows = [done[i] for i in range(len(items))]
    _write_jsonl(out, rows)  # input order, and no half-written line from an interrupted run
    return Generated(len(items), len(todo), rows)


def _row(item: Item, parsed: Parsed, reason: str) -> dict:
    row = {**item.record, "prediction": parsed.answer, "finish_reason": reason}
    for key in REASONING_FIELDS:  # a record's own reasoning field would read as the model's
        row.pop(key, None)
    if parsed.reasoning is not None:
        row.update(reasoning=parsed.reasoning, reasoning_closed=parsed.closed)
    if not isinstance(item.record.get("output"), str) and item.reference is not None:
        row["reference"] = item.reference
    return row


def _key(record: dict) -> str:
    return json.dumps({k: v for k, v in record.items() if k not in ADDED}, sort_keys=True, ensure_ascii=False)


def _earlier_answers(out: Path, items: list[Item]) -> dict[int, dict]:
    """Rows of an earlier run of the same command, by the index of the record they answer.

    --out may only continue a file that `generate` wrote: anything else is the user's own file
    and is refused untouched, never replaced."""
    if not out.exists():
        return {}
    earlier: dict[str, list[dict]] = {}
    for row in _prediction_rows(out):
        earlier.setdefault(_key(row), []).append(row)
    found = {}
    for index, item in enumerate(items):
        rows = earlier.get(_key(item.record))
        if rows:
            found[index] = rows.pop()
    left = sum(map(len, earlier.values()))
    if left:
        raise DataError(
            f"{out}: {left} earlier predictions answer records that are not in this data file; "
            "choose another --out, or delete the file to start over"
        )
    return found


def _prediction_rows(out: Path) -> list[dict]:
    """The rows of a prediction file. Only its last line may be cut off (a run killed while
    writing): that record is answered again. Any other line that is not a prediction row means
    the file is not ours."""
    refuse = f"{out}: not a prediction file written by `lmtune generate`, so it is left as it is; choose another --out"
    if not out.is_file():
        raise DataError(f"{out}: is a folder; --out must be a .jsonl file")
    try:
        lines = out.read_bytes().decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise DataError(f"{refuse} (it is not UTF-8 text)") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and rows and line.startswith("{"):
                break  # the half-written last line of an interrupted run
            raise DataError(f"{refuse} (line {number} is not JSON)") from None
        if not isinstance(row, dict) or "prediction" not in row:
            raise DataError(f"{refuse} (line {number} has no 'prediction')")
        rows.append(row)
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(partial, path)


# ---------------------------------------------------------------- distillation


def write_dataset(items: list[Item], rows: list[dict], fmt: str, path: Path) -> Counter:
    """The teacher's answers as a training set (sequence-level distillation). Answers that hit
    max_new_tokens stop mid-sentence (or inside their reasoning): they are left out and counted,
    never trained on. A thinking teacher's reasoning stays apart from its answer (Turn.reasoning,
    written as each format keeps it: data.convert), so the student learns to think, then answer."""
    counts: Counter = Counter()
    records = []
    for item, row in zip(items, rows):
        parsed = parsed_row(row)
        if row["finish_reason"] != "stop" or not parsed.closed or not parsed.answer.strip():
            counts["left out: cut off by max_new_tokens, or empty"] += 1
            continue
        answered = replace(item.prompt, turns=[*item.prompt.turns, Turn(ASSISTANT, parsed.answer, reasoning=parsed.reasoning)])
        try:
            records.append(from_conversation(answered, fmt))
        except RecordError as exc:
            raise DataError(f"{item.prompt.source}: {exc}") from None
        counts["written"] += 1
    _write_jsonl(path, records)
    return counts

