"""Read instruction data files into Conversations, with file:line in every error.

First cut: Alpaca/BELLE records (`instruction`, `input`, `output`, optional `system`
and `history` as [[query, response], ...]) and raw `text` records, from a `.json`
array or a `.jsonl` file, UTF-8 with or without BOM.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmtune.data.records import ASSISTANT, USER, Conversation, Turn
from lmtune.errors import DataError

FORMATS = ("alpaca", "text")


def read_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) for every object in a .json array or .jsonl file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
    records = _jsonl_records(path, text) if path.suffix == ".jsonl" else _json_array_records(path, text)
    for line, record in records:
        if not isinstance(record, dict):
            raise DataError(f"{path}:{line}: expected a JSON object per record, got {type(record).__name__}")
        yield line, record


def _jsonl_records(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}:{exc.colno}: malformed JSON: {exc.msg}") from exc


def _json_array_records(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """Walk the array element by element so each record knows its line."""
    decoder = json.JSONDecoder()
    pos = _skip_space(text, 0)
    if text[pos : pos + 1] != "[":
        line = text.count("\n", 0, pos) + 1
        raise DataError(f"{path}:{line}: a .json data file must hold one JSON array; use .jsonl for one object per line")
    pos = _skip_space(text, pos + 1)
    if text[pos : pos + 1] == "]":
        return
    while True:
        try:
            record, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON: {exc.msg}") from exc
        yield text.count("\n", 0, pos) + 1, record
        pos = _skip_space(text, end)
        char = text[pos : pos + 1]
        if char == "]":
            rest = _skip_space(text, pos + 1)
            if rest < len(text):
                raise DataError(f"{path}:{text.count(chr(10), 0, rest) + 1}: unexpected text after the JSON array")
            return
        if char != ",":
            line = text.count("\n", 0, pos) + 1
            raise DataError(f"{path}:{line}: malformed JSON: expected ',' or ']' between records")
        pos = _skip_space(text, pos + 1)


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


# ---------------------------------------------------------------- formats


def detect_format(record: dict[str, Any], where: str) -> str:
    if "instruction" in record:
        return "alpaca"
    if "text" in record:
        return "text"
    keys = ", ".join(sorted(record)) or "none"
    raise DataError(
        f"{where}: cannot tell the data format from keys ({keys}); "
        "expected alpaca records (instruction, input, output) or text records (text)"
    )


def to_conversation(record: dict[str, Any], fmt: str, where: str) -> Conversation:
    if fmt == "alpaca":
        return _alpaca(record, where)
    if fmt == "text":
        return Conversation([Turn(ASSISTANT, _text_field(record, "text", where))], source=where)
    raise DataError(f"unknown data format '{fmt}'; known: {', '.join(FORMATS)}")


def _alpaca(record: dict[str, Any], where: str) -> Conversation:
    for key in ("instruction", "output"):
        if key not in record:
            raise DataError(f"{where}: record has no '{key}' field; alpaca records need 'instruction' and 'output'")
    turns: list[Turn] = []
    history = record.get("history") or []
    if not isinstance(history, list):
        raise DataError(f"{where}: 'history' must be a list of [query, response] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise DataError(f"{where}: history[{i}] must be a [query, response] pair of strings")
        turns += [Turn(USER, pair[0]), Turn(ASSISTANT, pair[1])]
    turns.append(Turn(USER, _text_field(record, "instruction", where), input=_text_field(record, "input", where)))
    turns.append(Turn(ASSISTANT, _text_field(record, "output", where)))
    system = record.get("system") or None
    if system is not None and not isinstance(system, str):
        raise DataError(f"{where}: 'system' must be a string")
    return Conversation(turns, system=system, source=where)


def _text_field(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
    return value


def read_conversations(path: str | Path, fmt: str = "auto") -> Iterator[tuple[Conversation, dict[str, Any]]]:
    """Yield (conversation, original record) for every record of one file."""
    file_format = None if fmt == "auto" else fmt
    for line, record in read_records(path):
        where = f"{path}:{line}"
        file_format = file_format or detect_format(record, where)
        yield to_conversation(record, file_format, where), record
