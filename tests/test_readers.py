import json

import pytest

from lmtune.data.readers import read_conversations
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
    path.write_bytes("[{\"instruction\": \"中文\", \"output\": \"b\"}]".encode("gbk"))
    with pytest.raises(DataError, match="not UTF-8 text"):
        convs(path)


def test_text_records_become_one_trained_turn(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "plain text"}\n', encoding="utf-8")
    (conv,) = convs(path)
    assert [(t.role, t.content) for t in conv.turns] == [(ASSISTANT, "plain text")]
