"""File level: which files, which text encoding, and each record with the line it starts on.

Turning a record into a Conversation is formats.py's work; here a bad record is not an error
yet but a RawRecord that says why it could not be parsed, so the caller can stop or skip it.
Only what cannot be skipped raises DataError: a missing file, a .json file that is not a
JSON array, a syntax error inside one, text that no supported encoding decodes.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.data.formats import detect_format, to_conversation, type_name
from lmtune.data.records import Conversation
from lmtune.errors import DataError, RecordError

SUPPORTED_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")
SAMPLE_BYTES = 1 << 20  # what detect_encoding looks at; a detector needs far less, UTF-8 checks are cheap

# ---------------------------------------------------------------- files


def data_files(paths: list[str]) -> list[Path]:
    """Files as given; folders expanded into the supported files under them, sorted."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += _folder_files(path)
        else:
            files.append(_data_file(path))
    return files


def _data_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise DataError(f"{path}: unsupported file type; data files must end in {', '.join(SUPPORTED_SUFFIXES)}")
    return path


def _folder_files(folder: Path) -> list[Path]:
    # Hidden entries are tool state (.ipynb_checkpoints, .cache), never data; a LLaMA-Factory
    # registry sitting among its data files describes them and is not data itself.
    found = sorted(
        path for path in folder.rglob("*")
        if path.is_file() and path.suffix.lower() in SUPPORTED_SUFFIXES and path.name != "dataset_info.json"
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    if not found:
        raise DataError(f"{folder}: no data files in this folder ({', '.join(SUPPORTED_SUFFIXES)})")
    return found


# ---------------------------------------------------------------- encodings

_BOMS = (  # UTF-32's BOMs begin with UTF-16's, so they are checked first
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)
_TIE_PREFERENCE = ("gb18030", "big5")
_SUPERSETS = {"gbk": "gb18030", "gb2312": "gb18030"}  # decode GBK-detected text with its superset


def detect_encoding(path: Path, declared: str = "auto") -> str:
    """The text encoding of a file, named as Python's codecs know it ("utf-8", "gb18030", …).

    `declared` (data.encoding) names it instead of detecting; a name Python does not know is an error."""
    if declared != "auto":
        try:
            return codecs.lookup(declared).name
        except LookupError:
            raise DataError(f"data.encoding: unknown text encoding '{declared}' (e.g. utf-8, gb18030, big5, cp1252)") from None
    with open(path, "rb") as handle:
        sample = handle.read(SAMPLE_BYTES)
        complete = not handle.read(1)
    for bom, name in _BOMS:
        if sample.startswith(bom):
            return name
    # Strict UTF-8 first: by far the most common, and detectors mislabel short UTF-8 files.
    if _is_utf8(sample, complete):
        return "utf-8"
    if not complete:
        # The detector rejects a codec that fails on the sample's cut-off last character;
        # a newline byte is never part of a GB18030 or Big5 character, so cut after one.
        sample = sample[: sample.rfind(b"\n") + 1] or sample
    _refuse_mixed_utf8(path, sample)
    return _guess(path, sample)


def _is_utf8(sample: bytes, complete: bool) -> bool:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=complete)  # the sample may end mid-character
    except UnicodeDecodeError:
        return False
    return True


def _refuse_mixed_utf8(path: Path, sample: bytes) -> None:
    """Some lines UTF-8 with non-ASCII text, others not: no single encoding reads both right
    (GB18030 decodes UTF-8 bytes into wrong Chinese without an error), so say which line breaks."""
    utf8_line = None
    for number, line in enumerate(sample.split(b"\n"), start=1):
        if line.isascii():
            continue
        if _is_utf8(line, True):
            utf8_line = utf8_line or number
        elif utf8_line:
            raise DataError(
                f"{path}:{number}: this line is not UTF-8, while line {utf8_line} is: the file mixes text encodings; "
                "save every line as UTF-8"
            )


def _guess(path: Path, sample: bytes) -> str:
    """The detector's best encodings, when they agree on the text. Several code pages often fit
    equally well and read the same bytes as different letters (cp1252 'Crème', cp1250 'Crčme'):
    one is never picked silently, the user is asked to name it."""
    from charset_normalizer import from_bytes  # imported here: only non-UTF-8 files need it

    matches = list(from_bytes(sample))
    if not matches:
        raise DataError(f"{path}: cannot tell its text encoding; is it text? Save it as UTF-8")
    least = min(match.chaos for match in matches)
    tied = list(dict.fromkeys(_SUPERSETS.get(n, n) for n in (codecs.lookup(m.encoding).name for m in matches if m.chaos == least)))
    # lmtune's users bring Chinese data, and GBK text scores as well as Korean cp949 on short samples.
    preferred = next((name for name in _TIE_PREFERENCE if name in tied), None)
    if preferred:
        return preferred
    readings = {name: sample.decode(name, errors="replace") for name in tied}
    if len(set(readings.values())) == 1:
        return tied[0]
    raise DataError(f"{path}: {_ambiguity(readings)}; name the right one (data.encoding, or --encoding in lmtune data commands), or save the file as UTF-8")


def _ambiguity(readings: dict[str, str]) -> str:
    """'cp1252 reads "Crème", cp1250 reads "Crčme"': the first word on which the candidates differ."""
    texts = list(readings.values())
    at = next(i for i, chars in enumerate(zip(*texts)) if len(set(chars)) > 1)
    words = {}
    for name, text in readings.items():
        start = max(text.rfind(" ", 0, at), text.rfind('"', 0, at)) + 1
        stop = min((i for i in (text.find(" ", at), text.find('"', at)) if i >= 0), default=len(text))
        words[name] = text[start:stop]
    shown = ", ".join(f"{name} reads {word!r}" for name, word in list(words.items())[:4])
    return f"the text encoding is ambiguous: {shown}"


_MIXED_HINT = "the file mixes encodings or is not text; save it as UTF-8"


def _read_text(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].decode(encoding, errors="replace").count("\n") + 1
        raise DataError(f"{path}:{line}: not valid {encoding} text ({exc.reason}); {_MIXED_HINT}") from exc


def _file_lines(path: Path, encoding: str, newline: str | None) -> Iterator[str]:
    """The file's lines, read lazily from the handle."""
    number = 0
    with open(path, encoding=encoding, newline=newline) as handle:
        try:
            for number, line in enumerate(handle, start=1):
                yield line
        except UnicodeDecodeError as exc:
            # The handle decodes in blocks of several KB, so only the last good line is known.
            where = f"{path}: not valid {encoding} text within a few KB after line {number}"
            raise DataError(f"{where} ({exc.reason}); {_MIXED_HINT}") from exc


# ---------------------------------------------------------------- records


@dataclass
class RawRecord:
    path: str
    line: int  # 1-based: the line the record starts on (.csv: header = line 1; .parquet: row index + 1)
    record: dict | None  # the parsed object, None if it could not be parsed
    raw: str | None  # the record's original text when record is None
    error: str | None  # why it could not be parsed
    column: int | None = None  # of a JSON syntax error, for FILE:LINE:COL messages that editors follow

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def open_records(
    path: Path, streaming: bool = False, encoding: str = "auto", txt_lines: bool = False
) -> tuple[str, Iterator[RawRecord]]:
    """(encoding, records) of one data file.

    .json: one JSON array, read whole (a syntax error in it raises DataError: nothing after it can
    be trusted). .jsonl: one object per line; a bad line is a RawRecord with its error, and reading
    goes on. .csv: a header, then one record per row, every column a string. .parquet: one record
    per row, read batch by batch. .txt: the whole file is one {"text"} record (a book, an article),
    or with txt_lines each non-blank line is one (how LLaMA-Factory reads .txt datasets).
    streaming=True reads .jsonl/.csv/.txt line by line from the file, never whole (.json is read
    whole either way); it never changes what a record is.
    """
    path = _data_file(Path(path))
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "utf-8", _parquet_records(path)  # Parquet strings are UTF-8 by specification
    encoding = detect_encoding(path, encoding)
    if suffix == ".json":
        return encoding, _json_array_records(path, _read_text(path, encoding))
    # Both ways give the same lines: \r\n and \r read as \n, except in .csv, which keeps line
    # breaks inside quoted fields itself. Never str.splitlines: it also splits at U+2028 and other
    # separators that json.dumps(ensure_ascii=False) leaves unescaped inside strings.
    newline = "" if suffix == ".csv" else None
    if streaming:
        lines: Iterable[str] = _file_lines(path, encoding, newline)
    else:
        lines = io.StringIO(_read_text(path, encoding), newline=newline)
    if suffix == ".jsonl":
        return encoding, _jsonl_records(path, lines)
    if suffix == ".csv":
        return encoding, _csv_records(path, lines)
    return encoding, _line_records(path, lines) if txt_lines else _whole_text(path, lines)


def _json_array_records(path: Path, text: str) -> Iterator[RawRecord]:
    """Walk the array element by element so each record knows its line. Lines are counted on from
    the previous record, never from the start of the file: that made reading quadratic."""
    decoder = json.JSONDecoder()
    lines = _LineCounter(text)
    pos = _skip_space(text, 0)
    if text[pos : pos + 1] != "[":
        raise DataError(
            f"{path}:{lines.at(pos)}: a .json data file must hold one JSON array; use .jsonl for one object per line"
        )
    pos = _skip_space(text, pos + 1)
    if text[pos : pos + 1] == "]":
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON: {exc.msg}") from exc
        yield _object_record(path, lines.at(pos), value, text[pos:end])
        pos = _skip_space(text, end)
        char = text[pos : pos + 1]
        if char == "]":
            rest = _skip_space(text, pos + 1)
            if rest < len(text):
                raise DataError(f"{path}:{lines.at(rest)}: unexpected text after the JSON array")
            return
        if char != ",":
            raise DataError(f"{path}:{lines.at(pos)}: malformed JSON: expected ',' or ']' between records")
        pos = _skip_space(text, pos + 1)


class _LineCounter:
    """The 1-based line of a position in text, for positions that only move forward."""

    def __init__(self, text: str):
        self.text, self.pos, self.line = text, 0, 1

    def at(self, pos: int) -> int:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


_SPACE = re.compile(r"[ \t\r\n]*")  # JSON's whitespace, nothing more (str.isspace would also take U+2028 …)


def _skip_space(text: str, pos: int) -> int:
    return _SPACE.match(text, pos).end()


def _jsonl_records(path: Path, lines: Iterable[str]) -> Iterator[RawRecord]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        text = line.rstrip("\r\n")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            error = f"malformed JSON: {exc.msg} (column {exc.colno})"
            yield RawRecord(str(path), number, None, text, error, column=exc.colno)
            continue
        yield _object_record(path, number, value, text)


def _object_record(path: Path, line: int, value: Any, text: str) -> RawRecord:
    if isinstance(value, dict):
        return RawRecord(str(path), line, value, None, None)
    return RawRecord(str(path), line, None, text, f"expected a JSON object, got {type_name(value)}")


def _csv_records(path: Path, lines: Iterable[str]) -> Iterator[RawRecord]:
    # csv.reader rather than DictReader: DictReader skips blank lines without saying, which
    # loses the line a record starts on, and pads or collects a wrong number of fields silently.
    reader = csv.reader(lines)
    try:
        header = next(reader, None)
        end = reader.line_num
        for row in reader:
            start, end = end + 1, reader.line_num  # a quoted field may span several lines
            if not row:
                continue
            if len(row) != len(header):
                error = f"row has {len(row)} fields, the header has {len(header)}"
                yield RawRecord(str(path), start, None, _csv_line(row), error)
            else:
                yield RawRecord(str(path), start, dict(zip(header, row)), None, None)
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV: {exc}") from exc


def _csv_line(row: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(row)
    return out.getvalue()


def _parquet_records(path: Path) -> Iterator[RawRecord]:
    import pyarrow as pa  # imported here: only .parquet files need it
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
    row = 0
    with parquet:
        for batch in parquet.iter_batches():
            for record in batch.to_pylist():  # plain lists, dicts and str, no numpy or arrow types
                row += 1
                yield RawRecord(str(path), row, record, None, None)


def _line_records(path: Path, lines: Iterable[str]) -> Iterator[RawRecord]:
    for number, line in enumerate(lines, start=1):
        if line.strip():  # blank lines separate documents, as in .jsonl; they are not records
            yield RawRecord(str(path), number, {"text": line.rstrip("\n")}, None, None)


def _whole_text(path: Path, lines: Iterable[str]) -> Iterator[RawRecord]:
    yield RawRecord(str(path), 1, {"text": "".join(lines)}, None, None)


# ---------------------------------------------------------------- one file, stop at the first problem


def read_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, record) for every record of one file; DataError "FILE:LINE[:COL]: reason" at the first bad one."""
    _encoding, records = open_records(Path(path))
    for raw in records:
        if raw.record is None:
            where = f"{raw.where}:{raw.column}" if raw.column else raw.where
            raise DataError(f"{where}: {raw.error}")
        yield raw.line, raw.record


def read_conversations(
    path: str | Path, fmt: str = "auto", prompt_only: bool = False
) -> Iterator[tuple[Conversation, dict[str, Any]]]:
    """(conversation, original record) for every record of one file, the format detected once per file.
    prompt_only: records to answer, whose answer may be missing (see formats.to_conversation)."""
    file_format = None if fmt == "auto" else fmt
    for line, record in read_records(path):
        where = f"{path}:{line}"
        try:
            file_format = file_format or detect_format(record)
            conv = to_conversation(record, file_format, prompt_only=prompt_only)
        except RecordError as exc:
            raise DataError(f"{where}: {exc}") from exc
        conv.source = where
        yield conv, record
