import json

import pytest

from lmtune.config import DataConfig
from lmtune.data.load import load_data
from lmtune.errors import DataError


def jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def qa(i, prefix="q"):
    return {"instruction": f"{prefix} question {i}", "input": "", "output": f"answer {i}"}


def balanced(report):
    return all(f.read == f.kept + f.rejected + sum(f.filtered.values()) for f in report.files.values())


@pytest.fixture
def mixed_file(tmp_path):
    rows = [qa(0), "{not json", qa(2), {"instruction": "no output here"}, qa(4), {"instruction": "x", "output": ""}]
    return jsonl(tmp_path / "mixed.jsonl", rows)


def test_skip_rejects_exactly_the_bad_records_and_the_report_balances(tmp_path, mixed_file):
    loaded = load_data(DataConfig(path=[mixed_file], on_error="skip"))
    assert [c.turns[0].content for c in loaded.train] == ["q question 0", "q question 2", "q question 4"]
    assert [c.source for c in loaded.train] == [f"{mixed_file}:1", f"{mixed_file}:3", f"{mixed_file}:5"]
    report = loaded.report
    assert [r["source"] for r in report.rejected] == [f"{mixed_file}:2", f"{mixed_file}:4", f"{mixed_file}:6"]
    assert report.rejected[0]["raw"] == "{not json" and "malformed JSON" in report.rejected[0]["reason"]
    assert report.rejected[1]["record"] == {"instruction": "no output here"} and "output" in report.rejected[1]["reason"]
    (file_report,) = report.files.values()
    assert (file_report.read, file_report.kept, file_report.rejected) == (6, 3, 3) and balanced(report)
    written = report.write(tmp_path)
    assert [p.name for p in written] == ["rejected.jsonl"]
    lines = [json.loads(line) for line in written[0].read_text(encoding="utf-8").splitlines()]
    assert [line["source"] for line in lines] == [r["source"] for r in report.rejected]


def test_raise_stops_at_the_first_bad_record_with_file_and_line(mixed_file):
    with pytest.raises(DataError, match=rf"^{mixed_file}:2: malformed JSON.*\(set data.on_error: skip to set bad records aside in rejected.jsonl\)$"):
        load_data(DataConfig(path=[mixed_file]))


def test_registry_with_renamed_columns_and_tags(tmp_path):
    jsonl(tmp_path / "qa.jsonl", [{"question": "What is 2+2?", "answer": "4", "sys": "Be brief."}])
    jsonl(
        tmp_path / "chat.jsonl",
        [{"dialog": [{"speaker": "me", "text": "Hi"}, {"speaker": "bot", "text": "Hello!"}]}],
    )
    (tmp_path / "dataset_info.json").write_text(
        json.dumps(
            {
                "qa": {"file_name": "qa.jsonl", "columns": {"prompt": "question", "response": "answer", "system": "sys"}},
                "chat": {
                    "file_name": "chat.jsonl",
                    "formatting": "sharegpt",
                    "columns": {"messages": "dialog"},
                    "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"},
                },
            }
        ),
        encoding="utf-8",
    )
    loaded = load_data(DataConfig(dataset=["qa", "chat"], dataset_dir=str(tmp_path)))
    qa_conv, chat_conv = loaded.train
    assert qa_conv.system == "Be brief."
    assert [(t.role, t.content) for t in qa_conv.turns] == [("user", "What is 2+2?"), ("assistant", "4")]
    assert [(t.role, t.content) for t in chat_conv.turns] == [("user", "Hi"), ("assistant", "Hello!")]


def test_registry_errors_say_what_is_there(tmp_path):
    (tmp_path / "dataset_info.json").write_text(json.dumps({"a": {"file_name": "a.json"}, "b": {"ms_hub_url": "org/b"}}))
    with pytest.raises(DataError, match=r"dataset 'c' is not in .*dataset_info.json \(it has: a, b\)"):
        load_data(DataConfig(dataset=["c"], dataset_dir=str(tmp_path)))
    with pytest.raises(DataError, match=r"dataset 'b' .* is read from ModelScope \(ms_hub_url\); lmtune reads local files and Hugging Face"):
        load_data(DataConfig(dataset=["b"], dataset_dir=str(tmp_path)))


def test_mix_by_share_takes_the_largest_mixture_without_repeats(tmp_path):
    big = jsonl(tmp_path / "big.jsonl", [qa(i, "big") for i in range(100)])
    small = jsonl(tmp_path / "small.jsonl", [qa(i, "small") for i in range(30)])
    loaded = load_data(DataConfig(path=[big, small], mix={"big": 0.6, "small": 0.4}))
    sources = [c.turns[0].content.split()[0] for c in loaded.train]
    assert (sources.count("big"), sources.count("small")) == (45, 30)
    assert loaded.report.files[big].filtered == {"mix": 55} and balanced(loaded.report)
    again = load_data(DataConfig(path=[big, small], mix={"big": 0.6, "small": 0.4}))
    assert [c.source for c in again.train] == [c.source for c in loaded.train]  # seeded


def test_mix_by_count_repeats_a_small_dataset(tmp_path):
    big = jsonl(tmp_path / "big.jsonl", [qa(i, "big") for i in range(100)])
    small = jsonl(tmp_path / "small.jsonl", [qa(i, "small") for i in range(30)])
    loaded = load_data(DataConfig(path=[big, small], mix={"big": 10, "small": 70}))
    sources = [c.turns[0].content.split()[0] for c in loaded.train]
    assert (sources.count("big"), sources.count("small")) == (10, 70)
    assert loaded.report.repeated == 40 and loaded.report.files[small].kept == 30


def test_mix_must_name_every_dataset(tmp_path):
    a = jsonl(tmp_path / "a.jsonl", [qa(0)])
    b = jsonl(tmp_path / "b.jsonl", [qa(1)])
    with pytest.raises(DataError, match=r"unknown \['c'\], not named \['b'\]"):
        load_data(DataConfig(path=[a, b], mix={"a": 0.5, "c": 0.5}))
    with pytest.raises(DataError, match="all shares"):
        load_data(DataConfig(path=[a, b], mix={"a": 0.5, "b": 3}))


def test_dev_split_and_max_samples(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [qa(i) for i in range(50)])
    loaded = load_data(DataConfig(path=[path], val_size=0.2, max_samples=40), seed=7)
    assert (len(loaded.train), len(loaded.dev), loaded.report.dev) == (32, 8, 8)
    assert not {c.source for c in loaded.train} & {c.source for c in loaded.dev}
    assert loaded.report.files[path].filtered == {"max_samples": 10} and balanced(loaded.report)
    assert [c.source for c in load_data(DataConfig(path=[path], val_size=8), seed=7).dev] != []
    with pytest.raises(DataError, match="leaves 0 of 50 records for training"):
        load_data(DataConfig(path=[path], val_size=50))


def test_filters_are_counted_per_file(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [qa(1), qa(1), qa(2), {"instruction": "你好吗？", "output": "我很好。"}])
    loaded = load_data(DataConfig(path=[path], filters={"dedup": "exact", "languages": ["en"]}))
    assert len(loaded.train) == 2
    assert loaded.report.files[path].filtered == {"dedup": 1, "language": 1} and balanced(loaded.report)
    assert {row["filter"] for row in loaded.report.filtered} == {"dedup", "language"}


def test_the_report_counts_records_with_reasoning_per_file(tmp_path):
    thinking = tmp_path / "distill.jsonl"
    thinking.write_text(
        '{"input": "2+2?", "content": "4", "reasoning_content": "Two and two.", "repo_name": "x"}\n'
        '{"input": "3+3?", "content": "6", "reasoning_content": null, "repo_name": "x"}\n', encoding="utf-8")
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"instruction": "hi", "output": "<think>\\nA greeting.\\n</think>\\n\\nhello"}\n{"instruction": "a", "output": "b"}\n', encoding="utf-8")
    loaded = load_data(DataConfig(path=[str(thinking), str(plain)]))
    assert loaded.report.summary().endswith("with reasoning: 1 of 2 in distill.jsonl, 1 of 2 in plain.jsonl")
    assert [t.reasoning for c in loaded.train for t in c.turns if t.role == "assistant"].count(None) == 2
