"""File-to-file data tools behind `lmtune data convert | split | filter | mix | encode`.

They all read through `load_data`, so what they keep, reject and filter is exactly what training
would. Split and filter write the surviving records untouched; convert and mix write them in the
target format. Whatever is set aside goes to rejected.jsonl / filtered.jsonl next to the output.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lmtune.config import DataConfig
from lmtune.data.convert import from_conversation
from lmtune.data.encode import Encoder
from lmtune.data.load import LoadReport, gc_paused, load_data, open_sources
from lmtune.data.records import Conversation
from lmtune.data.registry import resolve_datasets
from lmtune.errors import RecordError


@dataclass
class Written:
    files: dict[str, int]  # output path -> records written
    report: LoadReport
    set_aside: list[Path]  # rejected.jsonl / filtered.jsonl


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def convert(data: DataConfig, target: str, out: Path, seed: int = 42) -> Written:
    """Every record (or the mixture, with data.mix) in the target format."""
    loaded = load_data(data, seed=seed)
    rows = []
    for conv in loaded.train + loaded.dev:
        try:
            rows.append(from_conversation(conv, target))
        except RecordError as exc:
            loaded.report.rejected.append({"source": conv.source, "reason": str(exc)})
    return _finish({str(out): write_jsonl(out, rows)}, loaded.report, out.parent)


def split(data: DataConfig, out_dir: Path, seed: int = 42) -> Written:
    """train.jsonl and dev.jsonl of the original records (data.val_size decides the dev share)."""
    loaded = load_data(data, seed=seed)
    dev = {conv.origin for conv in loaded.dev}
    originals = list(_originals(data, {conv.origin for conv in loaded.train} | dev))
    files = {
        str(out_dir / "train.jsonl"): write_jsonl(out_dir / "train.jsonl", (r for o, r in originals if o not in dev)),
        str(out_dir / "dev.jsonl"): write_jsonl(out_dir / "dev.jsonl", (r for o, r in originals if o in dev)),
    }
    return _finish(files, loaded.report, out_dir)


def filter_records(data: DataConfig, tokenizer, out: Path, seed: int = 42) -> Written:
    """The original records that pass data.filters, in input order."""
    loaded = load_data(data, tokenizer, seed)
    kept = {conv.origin for conv in loaded.train + loaded.dev}
    written = write_jsonl(out, (record for _, record in _originals(data, kept)))
    return _finish({str(out): written}, loaded.report, out.parent)


def encode(data: DataConfig, encoder: Encoder, out: Path, seed: int = 42) -> Written:
    """{"input_ids", "labels"} per record, exactly as training sees them."""
    with gc_paused():
        loaded = load_data(data, seed=seed)
        convs: list[Conversation] = loaded.train + loaded.dev
        rows = ({"input_ids": s.input_ids, "labels": s.labels} for s in encoder.encode_stream(convs))  # written as encoded
        written = write_jsonl(out, rows)
    return _finish({str(out): written}, loaded.report, out.parent)


def _originals(data: DataConfig, wanted: set[tuple[str, int]]):
    """Re-read the files and yield ((file, index), record) for the wanted records, untouched."""
    for spec in resolve_datasets(data):
        for source, _, records in open_sources(spec, data):
            for index, raw in enumerate(records):
                if (source, index) in wanted:
                    yield (source, index), raw.record


def _finish(files: dict[str, int], report: LoadReport, folder: Path) -> Written:
    return Written(files, report, report.write(folder))
