"""`lmtune eval compare`'s HTML report: what a reader sees, read back from the page itself."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from lmtune.data.readers import read_records
from lmtune.errors import DataError
from lmtune.evaluate.metrics import record_scores, score
from lmtune.evaluate.report import prompt_text, write_comparison

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

QUESTIONS = [
    {"instruction": "中国的首都是哪里？", "input": "", "output": "中国的首都是北京。"},
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris is the capital of France."},
    {"instruction": "把下面的句子翻译成英文。", "input": "我喜欢喝茶。", "output": "I like drinking tea."},
    {"instruction": "Describe the cat.", "input": "", "output": "The cat sat on the mat."},
]
HOSTILE = "Paris & Lyon <script>alert(1)</script>"
ANSWERS_A = [  # right on 1 and 4, hostile and cut off on 2
    ("中国的首都是北京。", "stop"), (HOSTILE, "length"), ("I like tea.\nReally.", "stop"), ("The cat sat on the mat.", "stop"),
]
ANSWERS_B = [  # wrong on 1, right on 2, the same as A on 3, a loop on 4
    ("我不知道。", "stop"), ("Paris is the capital of France.", "stop"), ("I like tea.\nReally.", "stop"),
    ("the cat sat the cat sat the cat sat", "stop"),
]


def write_rows(path, records, answers):
    rows = [{**r, "prediction": p, "finish_reason": f} for r, (p, f) in zip(records, answers)]
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


class Page(HTMLParser):
    """Tags seen, the texts of div.text, and each table (by id) as rows of cell texts."""

    def __init__(self, markup: str):
        super().__init__()
        self.tags, self.texts, self.tables = set(), [], {}
        self._table = self._cell = self._text = None
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id"), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._table[-1].append("")
            self._cell = True
        elif tag == "div" and attrs.get("class") == "text":
            self.texts.append("")
            self._text = True

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag in ("td", "th"):
            self._cell = False
        elif tag == "div":
            self._text = False  # a div.text holds no other div

    def handle_data(self, data):
        if self._cell:
            self._table[-1][-1] += data
        if self._text:
            self.texts[-1] += data


def rendered(path, how: str, tmp_path) -> str:
    """The page as written, or the DOM a real browser built from it."""
    if how == "file":
        return path.read_text(encoding="utf-8")
    if CHROMIUM is None:
        pytest.skip("no Chromium to render the page (Debian: apt-get install chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    done = subprocess.run([CHROMIUM, *flags, "--dump-dom", path.as_uri()], check=False, capture_output=True,
                          encoding="utf-8", timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def pair(tmp_path):
    return write_rows(tmp_path / "A.jsonl", QUESTIONS, ANSWERS_A), write_rows(tmp_path / "B.jsonl", QUESTIONS, ANSWERS_B)


@pytest.mark.parametrize("how", ["file", "chromium"])
def test_the_report_shows_every_answer_escaped_with_the_summary_metrics_compute(pair, tmp_path, how):
    out = tmp_path / "report" / "compare.html"
    summary = write_comparison(*pair, out, names=("base", "lora"))
    markup = out.read_bytes().decode("utf-8")
    assert '<meta charset="utf-8">' in markup and "中国的首都是北京。" in markup  # Chinese as itself, not entities
    page = Page(rendered(out, how, tmp_path))

    assert "script" not in page.tags  # the prediction's <script> is text, not an element
    rows_a, rows_b = ([row for _, row in read_records(path)] for path in pair)
    for a, b in zip(rows_a, rows_b):
        for text in (a["prediction"], b["prediction"], a["output"]):
            assert text in page.texts  # whole, newlines and all
    assert HOSTILE in page.texts and "I like tea.\nReally." in page.texts
    assert "把下面的句子翻译成英文。\n\n我喜欢喝茶。" in page.texts  # alpaca's prompt: instruction and input

    expected_a, expected_b = score(rows_a), score(rows_b)
    assert (summary["a"], summary["b"]) == (expected_a, expected_b)
    assert summary["rouge_l_b_vs_a"] == {"wins": 1, "ties": 1, "losses": 2}
    assert summary["records"] == 4 and summary["written_to"] == str(out)
    table = {row[0]: row[1:] for row in page.tables["summary"][1:]}
    for key, label in (("bleu-4", "BLEU-4"), ("rouge-1", "ROUGE-1"), ("rouge-2", "ROUGE-2"), ("rouge-l", "ROUGE-L")):
        change = f"{expected_b[key] - expected_a[key]:+.2f}".replace("-", "−")
        assert table[label] == [f"{expected_a[key]:.2f}", f"{expected_b[key]:.2f}", change]
    assert table["hit max_new_tokens"] == ["25.0%", "0.0%", "−25.0%"]
    assert table["repetition loop"] == ["0.0%", "25.0%", "+25.0%"]

    records = page.tables["records"][1:]  # after the header row
    assert [row[0] for row in records] == ["1", "2", "3", "4"]
    flagged = [(i, side) for i, row in enumerate(records, 1) for side, cell in zip("AB", row[3:])
               if "hit max_new_tokens" in cell or "repetition loop" in cell]
    assert flagged == [(2, "A"), (4, "B")]
    assert "hit max_new_tokens" in records[1][3] and "repetition loop" in records[3][4]
    rouge_l = record_scores(ANSWERS_B[3][0], QUESTIONS[3]["output"])["rouge-l"]
    assert f"ROUGE-L {rouge_l:.1f}" in records[3][4]  # per-record metrics under each answer


def test_a_report_with_every_record_a_tie(tmp_path):
    a = write_rows(tmp_path / "a.jsonl", QUESTIONS, ANSWERS_A)
    summary = write_comparison(a, a, tmp_path / "same.html")
    assert summary["rouge_l_b_vs_a"] == {"wins": 0, "ties": 4, "losses": 0}
    assert all(value == 0 for value in summary["difference"].values())


def test_the_prompt_is_the_last_user_message_or_the_record_itself():
    sharegpt = {"conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！"},
                                  {"from": "human", "value": "Tell me a joke."}, {"from": "gpt", "value": "No."}]}
    messages = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]}
    assert prompt_text({**sharegpt, "prediction": "x", "reference": "No."}) == "Tell me a joke."
    assert prompt_text(messages) == "Hi?"
    assert prompt_text({"instruction": "Say hi.", "input": "", "output": "hi"}) == "Say hi."
    assert json.loads(prompt_text({"question": "什么?", "prediction": "x"})) == {"question": "什么?"}


@pytest.mark.parametrize("short_side", ["A", "B"])
def test_files_of_different_lengths_are_refused_at_the_first_unmatched_row(tmp_path, short_side):
    full = write_rows(tmp_path / "full.jsonl", QUESTIONS, ANSWERS_A)
    short = write_rows(tmp_path / "short.jsonl", QUESTIONS[:3], ANSWERS_B)
    files = (short, full) if short_side == "A" else (full, short)
    with pytest.raises(DataError) as caught:
        write_comparison(*files, tmp_path / "out.html")
    message = str(caught.value)
    assert message.startswith(f"{full}:4: row 4 has no counterpart")
    assert f"{short} 3" in message and "compare predictions of the same data file" in message
    assert not (tmp_path / "out.html").exists()


def test_rows_that_answer_different_records_are_refused_with_both_places(tmp_path):
    other = [dict(r) for r in QUESTIONS]
    other[2]["input"] = "我喜欢喝咖啡。"
    a = write_rows(tmp_path / "A.jsonl", QUESTIONS, ANSWERS_A)
    b = write_rows(tmp_path / "B.jsonl", other, ANSWERS_B)
    with pytest.raises(DataError, match="A.jsonl:3 and .*B.jsonl:3 answer different records; compare predictions"):
        write_comparison(a, b, tmp_path / "out.html")


def test_a_row_without_a_prediction_is_refused_with_its_place(tmp_path):
    a = write_rows(tmp_path / "A.jsonl", QUESTIONS, ANSWERS_A)
    b = tmp_path / "B.jsonl"
    b.write_text(a.read_text(encoding="utf-8") + json.dumps(QUESTIONS[0], ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"B\.jsonl:5: needs string fields"):
        write_comparison(a, b, tmp_path / "out.html")
