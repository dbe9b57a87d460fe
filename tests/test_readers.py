import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmtune.data.readers import (
    RawRecord, _json_array_records, data_files, detect_encoding, open_records, read_conversations, read_records,
)
from lmtune.data.records import ASSISTANT, USER
from lmtune.errors import DataError


def convs(path):
    return [conv for conv, _ in read_conversations(path)]


def test_alpaca_array_with_history_system_and_input(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(
        json.dumps(
            [
                {"instruction": "q1", "input": "", "output": "a1"},
                {"instruction": "q3", "input": "ctx", "output": "a3", "system": "sys", "history": [["q2", "a2"]]},
            ],
            indent=2,
        ),
        encoding="utf-8",
    )
    first, second = convs(path)
    assert [(t.role, t.content) for t in first.turns] == [(USER, "q1"), (ASSISTANT, "a1")]
    assert second.system == "sys"
    assert [(t.role, t.content, t.input) for t in second.turns] == [
        (USER, "q2", ""), (ASSISTANT, "a2", ""), (USER, "q3", "ctx"), (ASSISTANT, "a3", ""),
    ]
    assert first.source.endswith("d.json:2") and second.source.endswith("d.json:7")


def test_utf8_bom_and_unicode_escapes_read_back_as_the_same_text(tmp_path):
    record = {"instruction": "用中文回答", "input": "", "output": "好的。"}
    escaped = tmp_path / "escaped.jsonl"
    escaped.write_text(json.dumps(record) + "\n", encoding="utf-8")  # ensure_ascii: \u7528...
    assert "\\u7528" in escaped.read_text(encoding="utf-8")
    bom = tmp_path / "bom.json"
    bom.write_text(json.dumps([record], ensure_ascii=False), encoding="utf-8-sig")
    for path in (escaped, bom):
        conv = convs(path)[0]
        assert (conv.turns[0].content, conv.turns[1].content) == ("用中文回答", "好的。")


def test_malformed_json_reports_file_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}\n]', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.json:3:22: malformed JSON: Expecting ',' delimiter"):
        convs(path)
    lines = tmp_path / "bad.jsonl"
    lines.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c",}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2:21: malformed JSON"):
        convs(lines)


def test_record_without_output_is_named_by_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "c"}\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        convs(path)
    assert str(err.value) == f"{path}:3: record has no 'output' field; alpaca records need 'instruction' and 'output'"


def test_wrong_shapes_are_explained(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"instruction": "a", "output": "b"}', encoding="utf-8")
    with pytest.raises(DataError, match="must hold one JSON array; use .jsonl"):
        convs(path)
    path.write_text('[{"prompt": "a", "completion": "b"}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"cannot tell the data format from keys \(completion, prompt\)"):
        convs(path)
    path.write_text('[{"instruction": "a", "output": 3}]', encoding="utf-8")
    with pytest.raises(DataError, match="'output' must be a string, got int"):
        convs(path)
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match="cannot tell its text encoding"):
        convs(path)


def test_text_records_become_one_trained_turn(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "plain text"}\n', encoding="utf-8")
    (conv,) = convs(path)
    assert [(t.role, t.content) for t in conv.turns] == [(ASSISTANT, "plain text")]


# ---------------------------------------------------------------- files, encodings, raw records

CHINESE = {"instruction": "請用中文回答：台灣最高的山是哪一座？", "input": "", "output": "玉山。"}


def records(path, streaming=False):
    return list(open_records(path, streaming=streaming)[1])


@pytest.mark.parametrize(
    ("encoding", "detected"),
    [("gbk", "gb18030"), ("big5", "big5"), ("utf-16-le", "utf-16"), ("utf-16-be", "utf-16"), ("utf-8-sig", "utf-8-sig")],
)
def test_chinese_files_in_every_encoding_read_back_as_the_same_text(tmp_path, encoding, detected):
    path = tmp_path / "d.jsonl"
    text = "\n".join(json.dumps(CHINESE, ensure_ascii=False) for _ in range(2)) + "\n"
    bom = "\ufeff" if encoding.startswith("utf-16") else ""  # Python's utf-16-le/-be codecs write no BOM
    path.write_bytes((bom + text).encode(encoding))
    assert detect_encoding(path) == detected
    assert [r.record for r in records(path)] == [CHINESE, CHINESE]


def test_escaped_and_plain_utf8_are_utf8(tmp_path):
    escaped, plain = tmp_path / "e.json", tmp_path / "p.json"
    escaped.write_text(json.dumps([CHINESE]), encoding="utf-8")
    plain.write_text(json.dumps([CHINESE], ensure_ascii=False), encoding="utf-8")
    assert detect_encoding(escaped) == detect_encoding(plain) == "utf-8"
    assert records(escaped)[0].record == records(plain)[0].record == CHINESE


def test_jsonl_bad_lines_become_raw_records_and_reading_goes_on(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b" "x": 1}\n[1, 2]\n{"text": "c"}\n', encoding="utf-8")
    first, bad, listed, last = records(path)
    assert (first.line, first.record) == (1, {"text": "a"})
    error = "malformed JSON: Expecting ',' delimiter (column 14)"
    assert bad == RawRecord(str(path), 3, None, '{"text": "b" "x": 1}', error, column=14)
    assert bad.where == f"{path}:3"
    assert (listed.line, listed.record, listed.raw, listed.error) == (4, None, "[1, 2]", "expected a JSON object, got list")
    assert (last.line, last.record, last.where) == (5, {"text": "c"}, f"{path}:5")
    with pytest.raises(DataError, match=r"d\.jsonl:3:14: malformed JSON: Expecting ',' delimiter"):
        list(read_records(path))


class _ScanCountingText(str):
    """Text that adds up how many characters str.count is asked to scan."""

    scanned = 0

    def count(self, sub, start=0, end=None):
        end = len(self) if end is None else end
        _ScanCountingText.scanned += max(0, end - start)
        return super().count(sub, start, end)


def test_json_array_lines_stay_exact_and_each_character_is_counted_once(tmp_path):
    # Records of 1 to 18 lines, blank lines and a CRLF between them: every start line must be
    # exact, yet the newlines are counted once over the file, not again from the start for each
    # record (that made a 21 MB array take minutes).
    rng = random.Random(0)
    pieces, starts, line = ["[\n"], [], 2
    for i in range(3000):
        record = {"instruction": f"q{i}", "output": "a\nb", "history": [["q", "a"]] * rng.randint(0, 3)}
        text = json.dumps(record, indent=rng.choice([None, 1, 2])) if i % 3 else json.dumps(record)
        gap = ",\n" + "\n" * rng.randint(0, 2) if i < 2999 else "\r\n\n"
        starts.append(line)
        pieces += [text, gap]
        line += text.count("\n") + gap.count("\n")
    text = _ScanCountingText("".join(pieces + ["]\n"]))
    _ScanCountingText.scanned = 0
    read = list(_json_array_records(tmp_path / "big.json", text))
    assert [r.line for r in read] == starts
    assert [r.record["instruction"] for r in read] == [f"q{i}" for i in range(3000)]
    assert _ScanCountingText.scanned <= len(text)
    for bad, reason in ((text + "\n[]", "unexpected text after the JSON array"), ("".join(pieces[:-1]) + " 1]", "malformed JSON: expected")):
        where = len(bad) - 2
        with pytest.raises(DataError, match=rf"big\.json:{bad.count(chr(10), 0, where) + 1}: {reason}"):
            list(_json_array_records(tmp_path / "big.json", _ScanCountingText(bad)))


def test_json_array_elements_that_are_not_objects(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n {"text": "a"},\n "just a string"\n]', encoding="utf-8")
    assert [(r.line, r.record, r.raw, r.error) for r in records(path)] == [
        (2, {"text": "a"}, None, None), (3, None, '"just a string"', "expected a JSON object, got str"),
    ]


def test_streaming_jsonl_is_lazy_and_reads_the_same_records(tmp_path, monkeypatch):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"第{i}段"}, ensure_ascii=False) + "\n" for i in range(50)), encoding="utf-8")
    whole = records(path)
    monkeypatch.setattr(Path, "read_text", lambda *a, **k: pytest.fail("streaming read the whole file"))
    monkeypatch.setattr(Path, "read_bytes", lambda *a, **k: pytest.fail("streaming read the whole file"))
    encoding, lazy = open_records(path, streaming=True)
    assert encoding == "utf-8" and isinstance(lazy, Iterator)
    assert list(lazy) == whole and len(whole) == 50


def test_txt_is_one_record_or_one_per_line_and_streaming_changes_neither(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("第一段，\n第一段的第二行。\n\n  \n第二段。\n", encoding="utf-8")
    for streaming in (False, True):
        assert [(r.line, r.record) for r in records(path, streaming)] == [(1, {"text": "第一段，\n第一段的第二行。\n\n  \n第二段。\n"})]
        lines = list(open_records(path, streaming=streaming, txt_lines=True)[1])
        assert [(r.line, r.record) for r in lines] == [
            (1, {"text": "第一段，"}), (2, {"text": "第一段的第二行。"}), (5, {"text": "第二段。"}),
        ]


def test_csv_rows_with_physical_line_numbers(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(
        'instruction,input,output\n"写一首诗","","床前明月光，\n疑是地上霜。"\n\nq2,,a2\nq3,a3\n', encoding="utf-8-sig"
    )
    rows = records(path)
    assert [(r.line, r.record) for r in rows[:2]] == [
        (2, {"instruction": "写一首诗", "input": "", "output": "床前明月光，\n疑是地上霜。"}),
        (5, {"instruction": "q2", "input": "", "output": "a2"}),
    ]
    assert (rows[2].line, rows[2].raw, rows[2].error) == (6, "q3,a3", "row has 2 fields, the header has 3")
    assert records(path, streaming=True) == rows
    with pytest.raises(DataError, match=r"d\.csv:6: row has 2 fields, the header has 3"):
        convs(path)


def test_parquet_rows_are_plain_python(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    rows = [
        {"conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！"}], "system": None},
        {"conversations": [{"from": "human", "value": "1+1?"}, {"from": "gpt", "value": "2"}], "system": "Be brief."},
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    read = records(path)
    assert [(r.line, r.record) for r in read] == [(1, rows[0]), (2, rows[1])]
    assert type(read[0].record["conversations"]) is list and type(read[0].record["conversations"][0]) is dict
    assert [c.system for c in convs(path)] == [None, "Be brief."]
    assert [c.source for c in convs(path)] == [f"{path}:1", f"{path}:2"]


def test_data_files_expands_folders_and_names_what_is_wrong(tmp_path):
    (tmp_path / "sub" / ".cache").mkdir(parents=True)
    for name in ("b.jsonl", "a.json", "sub/c.csv", "sub/d.parquet", "sub/e.txt", "README.md", "sub/.cache/x.json"):
        (tmp_path / name).write_text("", encoding="utf-8")
    single = tmp_path / "README.md"
    assert data_files([str(tmp_path), str(tmp_path / "b.jsonl")]) == [
        tmp_path / n for n in ("a.json", "b.jsonl", "sub/c.csv", "sub/d.parquet", "sub/e.txt", "b.jsonl")
    ]
    with pytest.raises(DataError, match=r"README\.md: unsupported file type; data files must end in \.json, \.jsonl"):
        data_files([str(single)])
    with pytest.raises(DataError, match="data file not found: .*missing.json"):
        data_files([str(tmp_path / "missing.json")])


def test_a_mixed_folder_reads_every_file(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([CHINESE], ensure_ascii=False), encoding="utf-8")
    (tmp_path / "b.jsonl").write_bytes((json.dumps(CHINESE, ensure_ascii=False) + "\n").encode("gbk"))
    (tmp_path / "c.csv").write_text("instruction,input,output\n請用中文回答：台灣最高的山是哪一座？,,玉山。\n", encoding="utf-8")
    got = [(path.name, open_records(path)[0], [c.turns[-1].content for c in convs(path)]) for path in data_files([str(tmp_path)])]
    assert got == [("a.json", "utf-8", ["玉山。"]), ("b.jsonl", "gb18030", ["玉山。"]), ("c.csv", "utf-8", ["玉山。"])]


def test_text_that_breaks_its_detected_encoding_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = 80_000  # 1.1 MB: UTF-8 all through the 1 MiB sample detect_encoding looks at
    path.write_bytes(b'{"text": "a"}\n' * lines + '{"text": "中文"}\n'.encode("gbk"))
    with pytest.raises(DataError, match=r"d\.jsonl:80001: not valid utf-8 text \(invalid continuation byte\); the file"):
        records(path)
    with pytest.raises(DataError, match=r"d\.jsonl: not valid utf-8 text within a few KB after line 79\d\d\d "):
        records(path, streaming=True)


def test_a_large_gbk_file_is_detected_from_its_first_mib(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_bytes((json.dumps(CHINESE, ensure_ascii=False) + "\n").encode("gbk") * 20_000)  # 1.8 MB
    assert detect_encoding(path) == "gb18030"  # the sample is cut after a newline, never inside a character


def test_line_separators_inside_json_strings_do_not_split_jsonl_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    record = {"text": "one\u2028two\x85three"}  # json.dumps(ensure_ascii=False) leaves these unescaped
    path.write_text(json.dumps(record, ensure_ascii=False) + "\r\n" + json.dumps(record) + "\n", encoding="utf-8")
    for streaming in (False, True):
        assert [(r.line, r.record) for r in records(path, streaming)] == [(1, record), (2, record)]
