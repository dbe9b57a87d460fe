"""`lmtune eval compare`: two models' answers side by side with the reference, in one HTML file.

The rows of two prediction files (from `lmtune generate` on the same data file) are paired by
position and must answer the same records. Every score comes from metrics.py. The page is one
self-contained file, inline CSS and no scripts, so it opens offline and can be mailed around.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from lmtune.data.formats import detect_format, to_conversation
from lmtune.data.records import USER
from lmtune.errors import DataError
from lmtune.evaluate.metrics import ADDED, has_loop, parsed_row, read_predictions, record_scores, reference, score

METRICS = {"bleu-4": "BLEU-4", "rouge-1": "ROUGE-1", "rouge-2": "ROUGE-2", "rouge-l": "ROUGE-L"}
# reasoning_unclosed only where some output reasoned (metrics.score)
SHARES = {
    "hit_max_new_tokens": "hit max_new_tokens",
    "repetition_loop": "repetition loop",
    "reasoning_unclosed": "think block never closed",
}
_SAME_DATA = "compare predictions of the same data file"


def write_comparison(pred_a: Path, pred_b: Path, out: Path, names: tuple[str, str] = ("A", "B")) -> dict:
    """Writes the report to `out` and returns its summary: per-model means and bad-case shares
    ("a", "b"), their "difference" (b - a), and how often B's ROUGE-L beats, ties or loses to A's."""
    rows_a, rows_b = _paired(Path(pred_a), Path(pred_b))
    summary_a, summary_b = score(rows_a), score(rows_b)
    per_a = [_record(row) for row in rows_a]
    per_b = [_record(row) for row in rows_b]
    outcome = {"wins": 0, "ties": 0, "losses": 0}
    for a, b in zip(per_a, per_b):
        outcome[_outcome(a, b)] += 1
    summary = {
        "names": list(names),
        "a": summary_a,
        "b": summary_b,
        "difference": {
            key: summary_b.get(key, 0.0) - summary_a.get(key, 0.0)
            for key in (*METRICS, *SHARES)
            if key in summary_a or key in summary_b
        },
        "rouge_l_b_vs_a": outcome,
        "records": len(rows_a),
    }
    records = zip(rows_a, rows_b, per_a, per_b)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_page(summary, names, records, (Path(pred_a), Path(pred_b))), encoding="utf-8")
    return {**summary, "written_to": str(out)}


# ---------------------------------------------------------------- reading


def _paired(path_a: Path, path_b: Path) -> tuple[list[dict], list[dict]]:
    a, b = read_predictions(path_a), read_predictions(path_b)
    if len(a) != len(b):
        (longer, more), (shorter, fewer) = sorted([(path_a, a), (path_b, b)], key=lambda pair: -len(pair[1]))
        first_extra = more[len(fewer)][0]
        raise DataError(
            f"{longer}:{first_extra}: row {len(fewer) + 1} has no counterpart: {longer} has {len(more)} "
            f"prediction rows, {shorter} {len(fewer)}; {_SAME_DATA}"
        )
    for (line_a, row_a), (line_b, row_b) in zip(a, b):
        if _answered(row_a) != _answered(row_b):
            raise DataError(f"{path_a}:{line_a} and {path_b}:{line_b} answer different records; {_SAME_DATA}")
    return [row for _, row in a], [row for _, row in b]


def _answered(row: dict) -> dict:
    return {key: value for key, value in row.items() if key not in ADDED}


def _record(row: dict) -> dict:
    answer = parsed_row(row).answer
    return {**record_scores(answer, reference(row)), "loop": has_loop(answer)}


def _outcome(scores_a: dict, scores_b: dict) -> str:
    """B against A on ROUGE-L; equal F1s computed by different routes may differ in the last bit."""
    ra, rb = scores_a["rouge-l"], scores_b["rouge-l"]
    return "ties" if math.isclose(ra, rb, abs_tol=1e-9) else "wins" if rb > ra else "losses"


def prompt_text(row: dict) -> str:
    """The question: the last user message (alpaca: instruction and input), else the record as JSON."""
    record = _answered(row)
    try:
        conv = to_conversation(record, detect_format(record), prompt_only=True)
    except DataError:  # RecordError included: a format the converters reject still gets shown
        conv = None
    users = [turn for turn in conv.turns if turn.role == USER] if conv else []
    if not users:
        return json.dumps(record, ensure_ascii=False, indent=1)
    last = users[-1]
    return f"{last.content}\n\n{last.input}" if last.input else last.content


# ---------------------------------------------------------------- the page

_CSS = """
body { font-family: system-ui, "Noto Sans CJK SC", "PingFang SC", "Microsoft YaHei", sans-serif;
       margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: .4em .6em; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
#summary td.num { text-align: right; font-variant-numeric: tabular-nums; }
#records { table-layout: fixed; width: 100%; }
#records col.index { width: 3em; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; }
.scores { margin-top: .4em; font-size: .85em; color: #555; }
.scores span { white-space: nowrap; }
.flag { display: inline-block; margin: .3em .3em 0 0; padding: 0 .4em; border-radius: 3px;
        font-size: .85em; background: #c62828; color: #fff; }
td.better { background: #eef8ee; }
.better-value { color: #1b5e20; } .worse-value { color: #b71c1c; }
"""


def _page(summary: dict, names: tuple[str, str], records, paths: tuple[Path, Path]) -> str:
    a, b = (html.escape(name) for name in names)
    title = f"{a} vs {b}: {summary['records']} answers side by side"
    sources = " and ".join(f"{name}: {html.escape(str(path))}" for name, path in zip((a, b), paths))
    rows = "\n".join(_record_row(i, *record) for i, record in enumerate(records, start=1))
    return f"""<!DOCTYPE html>
<html lang="zh">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{title}</h1>
<p>{sources}</p>
{_summary_table(summary, a, b)}
<h2>Answers</h2>
<table id="records">
<colgroup><col class="index"><col><col><col><col></colgroup>
<thead><tr><th>#</th><th>prompt</th><th>reference</th><th>{a}</th><th>{b}</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
</body>
</html>
"""


def _summary_table(summary: dict, a: str, b: str) -> str:
    lines = []
    for key, label in METRICS.items():
        lines.append(_summary_row(label, summary["a"][key], summary["b"][key], "{:.2f}", higher_is_better=True))
    for key, label in SHARES.items():  # shown as percentages; fewer is better
        if key not in summary["difference"]:
            continue
        share_a, share_b = summary["a"].get(key, 0.0) * 100, summary["b"].get(key, 0.0) * 100
        lines.append(_summary_row(label, share_a, share_b, "{:.1f}%", higher_is_better=False))
    outcome = summary["rouge_l_b_vs_a"]
    return f"""<h2>Summary</h2>
<table id="summary">
<thead><tr><th>metric</th><th>{a}</th><th>{b}</th><th>{b} − {a}</th></tr></thead>
<tbody>
{chr(10).join(lines)}
</tbody>
</table>
<p id="outcome">ROUGE-L per record: {b} beats {a} on <b>{outcome["wins"]}</b>, ties on <b>{outcome["ties"]}</b>,
loses on <b>{outcome["losses"]}</b> of {summary["records"]}.</p>"""


def _summary_row(label: str, value_a: float, value_b: float, fmt: str, higher_is_better: bool) -> str:
    change = value_b - value_a
    better = change > 0 if higher_is_better else change < 0
    css = "" if abs(change) < 1e-9 else "better-value" if better else "worse-value"
    diff = ("+" if change >= 0 else "−") + fmt.format(abs(change))
    cells = (f'<td class="num">{fmt.format(value)}</td>' for value in (value_a, value_b))
    return f'<tr><th>{label}</th>{"".join(cells)}<td class="num {css}">{diff}</td></tr>'


def _record_row(index: int, row_a: dict, row_b: dict, scores_a: dict, scores_b: dict) -> str:
    outcome = _outcome(scores_a, scores_b)
    return (
        f'<tr id="r{index}"><td>{index}</td>'
        f"<td>{_text(prompt_text(row_a))}</td><td>{_text(reference(row_a))}</td>"
        f"{_answer(row_a, scores_a, outcome == 'losses')}{_answer(row_b, scores_b, outcome == 'wins')}</tr>"
    )


def _answer(row: dict, scores: dict, better: bool) -> str:
    parsed, flags = parsed_row(row), []
    if row.get("finish_reason") == "length":
        flags.append('<span class="flag">hit max_new_tokens</span>')
    if not parsed.closed:
        flags.append('<span class="flag">think block never closed</span>')
    if scores["loop"]:
        flags.append('<span class="flag">repetition loop</span>')
    numbers = " · ".join(f"<span>{label} {scores[key]:.1f}</span>" for key, label in METRICS.items())
    css = ' class="better"' if better else ""
    # The reasoning folded away above the answer it led to (<details>: no script needed).
    thought = "" if parsed.reasoning is None else f"<details><summary>reasoning</summary>{_text(parsed.reasoning)}</details>"
    return f'<td{css}>{thought}{_text(parsed.answer)}<div class="scores">{numbers}</div>{"".join(flags)}</td>'


def _text(value: str) -> str:
    return f'<div class="text">{html.escape(value)}</div>'
