"""Files → Conversations → filters → mix → train/dev split, with a report that always balances.

For every file: records read = kept + rejected + filtered. Rejected records (unparseable or
invalid) stop the run when `data.on_error: raise`; with `skip` they are kept aside, untouched,
with their reason, and written to rejected.jsonl. Filtered ones (length, language, duplicates,
mix sampling, num_samples, max_samples) are counted per filter and written to filtered.jsonl.
Within a kept record, every field the conversion did not use is counted by name ("ignored
fields: id (120)"), and so are media dropped with data.drop_media: nothing goes uncounted.
"""

from __future__ import annotations

import contextlib
import gc
import json
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmtune.config import DataConfig
from lmtune.data.filters import apply_filters
from lmtune.data.formats import detect_format, to_conversation
from lmtune.data.hub import hub_records
from lmtune.data.pref import (
    LABEL_STAGES,
    PAIR_STAGES,
    PROMPT_STAGES,
    detect_labeled_format,
    detect_pair_format,
    to_labeled,
    to_pair,
)
from lmtune.data.prompts import detect_prompt_format, to_prompted
from lmtune.data.readers import RawRecord, open_records
from lmtune.data.records import Conversation
from lmtune.data.registry import DatasetSpec, check_record, media_columns, resolve_datasets
from lmtune.errors import BadRecordError, DataError, RecordError

REJECTED_FILE = "rejected.jsonl"
FILTERED_FILE = "filtered.jsonl"
# Where a multimodal record's media sat in its text (LLaMA-Factory's placeholders).
_MEDIA_PLACEHOLDER = re.compile(r"<(?:image|video|audio)>\n?")


@dataclass
class FileReport:
    path: str
    dataset: str
    encoding: str = ""
    format: str = ""
    read: int = 0
    rejected: int = 0
    filtered: Counter = field(default_factory=Counter)
    ignored: Counter = field(default_factory=Counter)  # field name -> kept records whose field went unused
    media_dropped: Counter = field(default_factory=Counter)  # media field -> records it was dropped from
    reasoning: int = 0  # valid records with reasoning in some answer (the others have none)

    @property
    def kept(self) -> int:
        return self.read - self.rejected - sum(self.filtered.values())

    @property
    def valid(self) -> int:
        return self.read - self.rejected


@dataclass
class LoadReport:
    files: dict[str, FileReport] = field(default_factory=dict)
    rejected: list[dict] = field(default_factory=list)  # {"source", "reason", "record" | "raw"}
    filtered: list[dict] = field(default_factory=list)  # {"source", "filter", "reason"}
    rewritten: int = 0  # identity rewrites (kept records, changed text)
    repeated: int = 0  # extra copies drawn when a mix count exceeds a dataset
    dev: int = 0

    @property
    def read(self) -> int:
        return sum(f.read for f in self.files.values())

    @property
    def kept(self) -> int:
        return sum(f.kept for f in self.files.values())

    def summary(self) -> str:
        filtered = Counter()
        for f in self.files.values():
            filtered.update(f.filtered)
        parts = [f"read {self.read} records from {len(self.files)} file(s)", f"kept {self.kept}"]
        if self.rejected:
            parts.append(f"rejected {len(self.rejected)}")
        parts += [f"filtered {n} by {name}" for name, n in sorted(filtered.items())]
        if self.rewritten:
            parts.append(f"identity rewritten in {self.rewritten}")
        if self.repeated:
            parts.append(f"{self.repeated} repeated to reach mix counts or num_samples")
        if self.dev:
            parts.append(f"{self.dev} held out as dev")
        parts += [f"{label}: {counts}" for label, counts in self._field_counts()]
        if any(f.reasoning for f in self.files.values()):
            parts.append("with reasoning: " + ", ".join(f"{f.reasoning} of {f.valid} in {Path(p).name}" for p, f in self.files.items()))
        return "; ".join(parts)

    def _field_counts(self) -> Iterator[tuple[str, str]]:
        """("ignored fields", "id (120), category (120) in firefly; …") and the same for media."""
        for label, name in (("ignored fields", "ignored"), ("media dropped (data.drop_media)", "media_dropped")):
            by_dataset: dict[str, Counter] = {}
            for f in self.files.values():
                by_dataset.setdefault(f.dataset, Counter()).update(getattr(f, name))
            listed = [", ".join(f"{key} ({n})" for key, n in c.most_common()) + f" in {d}" for d, c in by_dataset.items() if c]
            if listed:
                yield label, "; ".join(listed)

    def to_dict(self) -> dict:
        # asdict rebuilds a Counter from its (key, count) pairs, counting the pairs: plain dicts instead.
        files = {p: {**asdict(f), **{k: dict(getattr(f, k)) for k in _COUNTERS}} for p, f in self.files.items()}
        return {**asdict(self), "files": files}

    @classmethod
    def from_dict(cls, data: dict) -> LoadReport:
        files = {
            p: FileReport(**{**f, **{k: Counter(f.get(k, {})) for k in _COUNTERS}})  # older caches lack some
            for p, f in data["files"].items()
        }
        return cls(**{**data, "files": files})

    def write(self, folder: Path) -> list[Path]:
        """rejected.jsonl and filtered.jsonl, when there is anything to write."""
        written = []
        for name, rows in ((REJECTED_FILE, self.rejected), (FILTERED_FILE, self.filtered)):
            if rows:
                path = Path(folder) / name
                # default=str: a hub dataset's rows may hold dates and other non-JSON values.
                path.write_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows), encoding="utf-8")
                written.append(path)
        return written


_COUNTERS = ("filtered", "ignored", "media_dropped")


@dataclass
class LoadedData:
    train: list[Conversation]
    dev: list[Conversation]
    report: LoadReport


@dataclass
class ReadData:
    """Every dataset's records as conversations, before filters, sampling and the split."""

    by_dataset: dict[str, list[Conversation]]
    report: LoadReport


def read_data(data: DataConfig) -> ReadData:
    """Reads and checks every record (no tokenizer, no torch), so `lmtune train` can refuse a bad
    record before it imports and loads anything heavy."""
    report = LoadReport()
    with gc_paused():
        return ReadData({spec.name: read_dataset(spec, data, report) for spec in resolve_datasets(data)}, report)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Reading and encoding make millions of small objects, none of them in reference cycles, so
    none for the cycle collector to free; yet it walks them again and again as they pile up
    (~10% of `lmtune data encode`). Paused while they are made, on again after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_data(data: DataConfig, tokenizer=None, seed: int = 42, read: ReadData | None = None) -> LoadedData:
    """The conversations to train and evaluate on; `read` holds the records when read_data read them already."""
    specs = resolve_datasets(data)
    read = read or read_data(data)
    by_dataset, report = dict(read.by_dataset), read.report
    everything = [conv for convs in by_dataset.values() for conv in convs]
    kept, dropped, report.rewritten = apply_filters(everything, data.filters, tokenizer)
    for item in dropped:
        _count_filtered(report, item.conv, item.filter, item.reason)
    survivors = {id(conv) for conv in kept}
    by_dataset = {name: [c for c in convs if id(c) in survivors] for name, convs in by_dataset.items()}
    for spec in specs:
        if spec.num_samples:  # LLaMA-Factory draws them before cutting at max_samples
            setting, rng = f"num_samples={spec.num_samples} of dataset '{spec.name}'", random.Random(seed)
            by_dataset[spec.name] = _draw(by_dataset[spec.name], spec.num_samples, rng, report, "num_samples", setting)
    if data.max_samples:
        by_dataset = {name: _cap(convs, data.max_samples, report) for name, convs in by_dataset.items()}
    mixed = _mix(by_dataset, data.mix, seed, report) if data.mix else [c for cs in by_dataset.values() for c in cs]
    if not mixed:
        raise DataError(f"no usable records left: {report.summary()}")
    train, dev = split(mixed, data.val_size, seed)
    report.dev = len(dev)
    return LoadedData(train, dev, report)


# ---------------------------------------------------------------- reading and validation


def read_dataset(spec: DatasetSpec, data: DataConfig, report: LoadReport) -> list[Conversation]:
    convs = []
    detect, convert = _READERS.get(data.stage, (detect_format, to_conversation))
    for source, encoding, records in open_sources(spec, data):
        file_report = report.files.setdefault(source, FileReport(source, spec.name, encoding))
        file_format = None if spec.format == "auto" else spec.format
        for index, raw in enumerate(records):
            file_report.read += 1
            try:
                record = _parsed(raw)
                check_record(record, spec, data, raw.where)  # a DataError for the dataset, not a bad record
                file_format = file_format or detect(record)
                conv = _conversation(record, file_format, spec, file_report, convert)
            except RecordError as exc:
                _reject(report, file_report, raw, str(exc), data.on_error)
                continue
            conv.source, conv.origin = raw.where, (source, index)
            convs.append(conv)
        file_report.format = file_format or "unknown"
    return convs


# How each stage's records are read: the SFT formats, or the stage's own layouts on top of them.
_READERS = {**{stage: (detect_pair_format, to_pair) for stage in PAIR_STAGES},
            **{stage: (detect_labeled_format, to_labeled) for stage in LABEL_STAGES},
            **{stage: (detect_prompt_format, to_prompted) for stage in PROMPT_STAGES}}


def open_sources(spec: DatasetSpec, data: DataConfig) -> Iterator[tuple[str, str, Iterator[RawRecord]]]:
    """(source, encoding, records) for each file of a dataset, or for its one hub dataset."""
    if spec.hub:
        yield spec.hub.name, "utf-8", hub_records(spec.hub)  # Arrow strings are UTF-8
        return
    for path in spec.files:
        encoding, records = open_records(path, streaming=data.streaming, encoding=data.encoding, txt_lines=spec.txt_lines)
        yield str(path), encoding, records


def _conversation(record: dict, fmt: str, spec: DatasetSpec, file_report: FileReport, convert=to_conversation) -> Conversation:
    """The record as a Conversation (or a preference Pair, or a KTO Labeled answer); the fields it leaves unused and the media
    it drops are counted."""
    media = [column for column in media_columns(spec).values() if column in record]
    dropped = [column for column in media if record[column]]  # empty ones hold nothing to lose
    ignored: list[str] = []
    conv = convert({k: v for k, v in record.items() if k not in media}, fmt, spec.columns, spec.tags, ignored=ignored)
    if dropped:  # only with data.drop_media: check_record refuses media otherwise
        for turn in conv.turns:
            turn.content, turn.input = _MEDIA_PLACEHOLDER.sub("", turn.content), _MEDIA_PLACEHOLDER.sub("", turn.input)
    file_report.ignored.update(ignored)
    file_report.media_dropped.update(dropped)
    file_report.reasoning += any(turn.reasoning is not None for turn in conv.turns)
    return conv


def _parsed(raw: RawRecord) -> dict:
    if raw.record is None:
        raise RecordError(raw.error or "unreadable record")
    return raw.record


def _reject(report: LoadReport, file_report: FileReport, raw: RawRecord, reason: str, on_error: str) -> None:
    if on_error == "raise":
        raise BadRecordError(f"{raw.where}: {reason}", f"to set bad records aside in {REJECTED_FILE}")
    file_report.rejected += 1
    row = {"source": raw.where, "reason": reason}
    row.update({"record": raw.record} if raw.record is not None else {"raw": raw.raw})
    report.rejected.append(row)


def _count_filtered(report: LoadReport, conv: Conversation, name: str, reason: str) -> None:
    report.files[conv.origin[0]].filtered[name] += 1
    report.filtered.append({"source": conv.source, "filter": name, "reason": reason})


# ---------------------------------------------------------------- sampling


def _cap(convs: list[Conversation], limit: int, report: LoadReport) -> list[Conversation]:
    for conv in convs[limit:]:
        _count_filtered(report, conv, "max_samples", f"beyond data.max_samples={limit}")
    return convs[:limit]


def _mix(by_dataset: dict[str, list[Conversation]], mix: dict[str, float], seed: int, report: LoadReport):
    """Shares (< 1): the largest mixture with those proportions that repeats nothing.
    Counts (>= 1): exactly that many from each dataset, repeating a dataset that is too small."""
    unknown = sorted(set(mix) - set(by_dataset))
    missing = sorted(set(by_dataset) - set(mix))
    if unknown or missing:
        raise DataError(
            f"data.mix must name every dataset exactly: unknown {unknown or 'none'}, not named {missing or 'none'} "
            f"(datasets: {', '.join(by_dataset)})"
        )
    shares = all(v < 1 for v in mix.values())
    if not shares and not all(v >= 1 and float(v).is_integer() for v in mix.values()):
        raise DataError("data.mix values must be all shares (< 1) or all whole counts (>= 1)")
    if shares:
        total_share = sum(mix.values())
        total = min(len(by_dataset[n]) / (v / total_share) for n, v in mix.items() if v > 0)
        counts = {n: int(total * v / total_share) for n, v in mix.items()}
    else:
        counts = {n: int(v) for n, v in mix.items()}
    rng = random.Random(seed)
    mixed = []
    for name, convs in by_dataset.items():
        mixed += _draw(convs, counts[name], rng, report, "mix", f"data.mix[{name}]={mix[name]}")
    rng.shuffle(mixed)
    return mixed


def _draw(convs, count, rng, report, filter_name, setting) -> list[Conversation]:
    """count of convs at random: without repeats if there are enough, else all of them repeated."""
    if not convs:
        return []
    if count <= len(convs):
        chosen = set(rng.sample(range(len(convs)), count))
        for i, conv in enumerate(convs):
            if i not in chosen:
                _count_filtered(report, conv, filter_name, f"not drawn: {setting} takes {count} of {len(convs)}")
        return [conv for i, conv in enumerate(convs) if i in chosen]
    whole, rest = divmod(count, len(convs))
    report.repeated += count - len(convs)
    return convs * whole + rng.sample(convs, rest)


def split(convs: list[Conversation], val_size: float, seed: int) -> tuple[list[Conversation], list[Conversation]]:
    """Seeded random dev split: val_size < 1 is a share, >= 1 a count."""
    if not val_size:
        return convs, []
    count = int(round(len(convs) * val_size)) if val_size < 1 else int(val_size)
    if not 0 < count < len(convs):
        raise DataError(f"data.val_size={val_size} leaves {len(convs) - count} of {len(convs)} records for training")
    order = list(range(len(convs)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [c for i, c in enumerate(convs) if i not in held], [c for i, c in enumerate(convs) if i in held]
