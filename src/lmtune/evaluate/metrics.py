"""Generation metrics against references: BLEU-4 and ROUGE-1/2/L (F1), bilingual.

Chinese is segmented into words by jieba (characters when jieba is not installed), English into
lowercased words, so the scores mean the same thing in both languages. Also the two bad cases
users meet after SFT: answers that never stopped (hit max_new_tokens) and answers stuck in a loop.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from functools import lru_cache

from lmtune.templates.reasoning import CLOSE, Parsed, parse_output, split_answer

HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
WORD = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+|[A-Za-z0-9]+(?:'[A-Za-z]+)?|[^\sA-Za-z0-9]")


def tokens(text: str) -> list[str]:
    """Words: jieba for runs of Chinese characters, lowercased words for the rest; punctuation dropped."""
    out = []
    for piece in WORD.findall(text):
        if HAN.match(piece):
            out += _segment(piece)
        elif piece[0].isalnum():
            out.append(piece.lower())
    return out


@lru_cache(maxsize=1)
def _jieba():
    try:
        import jieba

        jieba.setLogLevel(60)  # it announces its dictionary on first use
        return jieba
    except ImportError:
        return None


def _segment(chinese: str) -> list[str]:
    jieba = _jieba()
    return list(jieba.cut(chinese)) if jieba else list(chinese)


def ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def bleu4(prediction: str, reference: str) -> float:
    """Sentence BLEU-4 as a percentage, smoothed as NLTK's method 3 (NIST): an n-gram order with no
    match counts 1 / (2^k * its n-gram count), k = 1, 2, … over such orders. LLaMA-Factory and
    ChatGLM's fine-tuning scripts report this bleu-4, so the numbers compare."""
    hyp, ref = tokens(prediction), tokens(reference)
    if not hyp or not ref:
        return 0.0
    logs, misses = [], 0
    for n in range(1, 5):
        overlap = sum((ngrams(hyp, n) & ngrams(ref, n)).values())
        total = max(len(hyp) - n + 1, 1)
        if overlap == 0:
            if n == 1:
                return 0.0
            misses += 1
            logs.append(math.log(1 / (2**misses * total)))
        else:
            logs.append(math.log(overlap / total))
    brevity = min(0.0, 1 - len(ref) / len(hyp))
    return 100 * math.exp(brevity + sum(logs) / 4)


def rouge_n(prediction: str, reference: str, n: int) -> float:
    hyp, ref = ngrams(tokens(prediction), n), ngrams(tokens(reference), n)
    overlap = sum((hyp & ref).values())
    return 100 * _f1(overlap, sum(hyp.values()), sum(ref.values()))


def rouge_l(prediction: str, reference: str) -> float:
    hyp, ref = tokens(prediction), tokens(reference)
    return 100 * _f1(_lcs(hyp, ref), len(hyp), len(ref))


def _lcs(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        previous = 0
        for j, y in enumerate(b, start=1):
            previous, row[j] = row[j], previous + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def _f1(overlap: int, predicted: int, expected: int) -> float:
    if not overlap:
        return 0.0
    precision, recall = overlap / predicted, overlap / expected
    return 2 * precision * recall / (precision + recall)


def has_loop(text: str, n: int = 3, repeats: int = 3) -> bool:
    """Some n-gram of words (or characters, for Chinese) occurs `repeats` times: a degenerate loop."""
    words = tokens(text)
    return any(count >= repeats for count in ngrams(words, n).values())


# The fields `lmtune generate` adds to each record; the rest is the record that was answered.
REASONING_FIELDS = ("reasoning", "reasoning_closed")  # only where the output had a think block
ADDED = ("prediction", "finish_reason", "reference", *REASONING_FIELDS)


def parse_prediction(text: str, opened: bool | None = None) -> Parsed:
    """A model's output as reasoning and answer. `opened`: whether its prompt ended inside an open
    think block; None when that is not known (a prediction file from elsewhere, a completion
    without its prompt): then a `</think>` with no `<think>` before it still ends the reasoning,
    as it does after DeepSeek-R1's prompt, which opens the block itself."""
    parsed = parse_output(text, bool(opened))
    if opened is None and parsed.reasoning is None and CLOSE in text:
        return parse_output(text, opened=True)
    return parsed


def parsed_row(row: dict) -> Parsed:
    """A prediction row's reasoning and answer: `lmtune generate` writes them apart (`reasoning`,
    `reasoning_closed`, `prediction`); a row from elsewhere may still hold its think block."""
    if "reasoning" in row:
        return Parsed(row["reasoning"], row["prediction"], row.get("reasoning_closed") is not False)
    return parse_prediction(row["prediction"])


def reference(row: dict) -> str | None:
    """The answer a prediction is scored against: `reference` (written by generate for formats
    other than alpaca), else alpaca's `output`; without the think block an answer in the data may
    open with (predictions are scored on their answer alone)."""
    value = row.get("reference", row.get("output"))
    if not isinstance(value, str):
        return None
    try:
        return split_answer(value)[1]
    except ValueError:  # a block that never closes: no answer to take apart, so all of it
        return value


def record_scores(prediction: str, expected: str) -> dict[str, float]:
    return {
        "bleu-4": bleu4(prediction, expected),
        "rouge-1": rouge_n(prediction, expected, 1),
        "rouge-2": rouge_n(prediction, expected, 2),
        "rouge-l": rouge_l(prediction, expected),
    }


def score(rows: list[dict]) -> dict:
    """Mean metrics of the answers (a thinking model's reasoning apart, see `parsed_row`) against the
    references (see `reference`), plus the two bad-case shares; and where some output reasoned, how
    many did and the share whose think block never closed (cut off by max_new_tokens inside it)."""
    parsed = [parsed_row(r) for r in rows]
    per_row = [record_scores(p.answer, reference(r)) for p, r in zip(parsed, rows)]
    summary = {key: sum(m[key] for m in per_row) / len(per_row) for key in per_row[0]} if per_row else {}
    summary["hit_max_new_tokens"] = sum(r.get("finish_reason") == "length" for r in rows) / max(len(rows), 1)
    summary["repetition_loop"] = sum(has_loop(p.answer) for p in parsed) / max(len(rows), 1)
    reasoned = [p for p in parsed if p.reasoning is not None]
    if reasoned:
        summary["with_reasoning"] = len(reasoned)
        summary["reasoning_unclosed"] = sum(not p.closed for p in reasoned) / len(rows)
    summary["records"] = len(rows)
    return summary


def read_predictions(path) -> list[tuple[int, dict]]:
    """(line, row) of a prediction file; every row needs a prediction and a reference to score."""
    from lmtune.data.readers import read_records
    from lmtune.errors import DataError

    rows = list(read_records(path))
    for line, row in rows:
        if not isinstance(row.get("prediction"), str) or reference(row) is None:
            raise DataError(
                f"{path}:{line}: needs string fields 'prediction' and 'output' or 'reference' (the expected answer); "
                "use a file written by `lmtune generate` from data with answers"
            )
    if not rows:
        raise DataError(f"{path}: no prediction rows")
    return rows


def score_file(path) -> dict:
    """Scores a prediction file and writes PATH.metrics.json beside it."""
    import json
    from pathlib import Path

    result = score([row for _, row in read_predictions(path)])
    out = Path(path).with_suffix(".metrics.json")
    out.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    return {**result, "written_to": str(out)}
