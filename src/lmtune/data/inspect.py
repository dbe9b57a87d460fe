"""`lmtune data inspect`: what a data file holds, before any training."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from lmtune.config import DataConfig
from lmtune.data.encode import Encoder
from lmtune.data.filters import conversation_text, detect_language
from lmtune.data.load import LoadReport, read_dataset
from lmtune.data.records import Conversation
from lmtune.data.registry import dataset_parts, resolve_datasets

LANGUAGE_SAMPLE = 5000  # language ID on a seeded sample keeps inspect quick on big files
PERCENTILES = (50, 90, 99, 100)


@dataclass
class FileStats:
    path: str
    encoding: str
    format: str
    read: int
    rejected: list[dict]
    turns: tuple[int, float, int] | None  # min, mean, max turns per conversation
    token_lengths: dict[int, int] | None  # percentile -> tokens (100 = longest)
    languages: Counter = field(default_factory=Counter)
    examples: list[Conversation] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)  # fields the format does not use -> records
    media_dropped: Counter = field(default_factory=Counter)  # with data.drop_media
    reasoning: int = 0  # valid records with reasoning in some answer


def inspect_data(data: DataConfig, encoder: Encoder | None = None, examples: int = 2) -> list[FileStats]:
    """Per file: format, encoding, counts, turns, token lengths (with a tokenizer), languages, examples."""
    stats = []
    for spec in resolve_datasets(data):
        for part in dataset_parts(spec):
            report = LoadReport()
            convs = read_dataset(part, data, report)
            stats += [_file_stats(report, source, convs, encoder, examples) for source in report.files]
    return stats


def _file_stats(report: LoadReport, path: str, convs: list[Conversation], encoder, examples: int) -> FileStats:
    file_report = report.files[path]
    turns = [len(c.turns) for c in convs]
    return FileStats(
        path=path,
        encoding=file_report.encoding,
        format=file_report.format,
        read=file_report.read,
        rejected=report.rejected,
        turns=(min(turns), sum(turns) / len(turns), max(turns)) if turns else None,
        token_lengths=_token_lengths(convs, encoder) if encoder and convs else None,
        languages=_languages(convs),
        examples=convs[:examples],
        ignored=file_report.ignored,
        media_dropped=file_report.media_dropped,
        reasoning=file_report.reasoning,
    )


def _token_lengths(convs: list[Conversation], encoder: Encoder) -> dict[int, int]:
    """Whole rendered samples (template included), before any truncation."""
    uncut = Encoder(encoder.tokenizer, encoder.template, 2**31, encoder.train_on, encoder.rewritten_answers)
    lengths = np.array([len(s.input_ids) for s in uncut.encode_many(convs)])
    return {p: int(np.percentile(lengths, p)) for p in PERCENTILES}


def _languages(convs: list[Conversation]) -> Counter:
    sample = convs if len(convs) <= LANGUAGE_SAMPLE else random.Random(0).sample(convs, LANGUAGE_SAMPLE)
    return Counter(detect_language(conversation_text(c)) for c in sample)
