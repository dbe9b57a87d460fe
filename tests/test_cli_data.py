"""`lmtune data …` through the real entry point."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import lmtune


@pytest.fixture(scope="module")
def char_tokenizer(tmp_path_factory):
    """One token per character, so expected ids can be worked out by hand: id = position in VOCAB."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = ["</s>"] + sorted(set("USER: ASSISTANT:hiok" + "A chat between."))
    core = Tokenizer(models.WordLevel({c: i for i, c in enumerate(vocab)}, unk_token="</s>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    path = tmp_path_factory.mktemp("chars")
    PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>").save_pretrained(path)
    return path, vocab


def test_encode_writes_ids_and_labels_as_worked_out_by_hand(tmp_path, char_tokenizer):
    tokenizer, vocab = char_tokenizer
    (tmp_path / "d.jsonl").write_text(json.dumps({"instruction": "hi", "output": "ok", "system": "A"}) + "\n", encoding="utf-8")
    result = lmtune("data", "encode", "--data", "d.jsonl", "--template", "vicuna", "--tokenizer", tokenizer, "--out", "enc.jsonl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (row,) = [json.loads(line) for line in (tmp_path / "enc.jsonl").read_text().splitlines()]
    ids = {c: vocab.index(c) for c in vocab}
    prompt = "A USER: hi ASSISTANT:"  # vicuna: "{system} USER: {q} ASSISTANT:" then " {a}</s>"
    assert row["input_ids"] == [ids[c] for c in prompt] + [ids[" "], ids["o"], ids["k"], 0]
    assert row["labels"] == [-100] * len(prompt) + [ids[" "], ids["o"], ids["k"], 0]


def test_encode_skip_writes_rejected_beside_the_output(tmp_path, char_tokenizer):
    tokenizer, _ = char_tokenizer
    (tmp_path / "d.jsonl").write_text('{"instruction": "hi", "output": "ok"}\n{"instruction": "hi"}\n', encoding="utf-8")
    result = lmtune("data", "encode", "--data", "d.jsonl", "--template", "vicuna", "--tokenizer", tokenizer,
                    "--out", "out/enc.jsonl", "--on-error", "skip", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "out/enc.jsonl").read_text().splitlines()) == 1
    (rejected,) = [json.loads(line) for line in (tmp_path / "out/rejected.jsonl").read_text().splitlines()]
    assert rejected["source"].endswith("d.jsonl:2") and rejected["record"] == {"instruction": "hi"}
    assert "read 2 records from 1 file(s); kept 1; rejected 1" in result.stderr


def test_convert_split_mix_and_inspect(tmp_path):
    rows = [{"instruction": f"问题 {i}", "input": "", "output": f"答案 {i}"} for i in range(20)]
    (tmp_path / "a.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    result = lmtune("data", "convert", "a.json", "--to", "sharegpt", "--out", "a_sharegpt.jsonl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first = json.loads((tmp_path / "a_sharegpt.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first == {"conversations": [{"from": "human", "value": "问题 0"}, {"from": "gpt", "value": "答案 0"}]}

    back = lmtune("data", "convert", "a_sharegpt.jsonl", "--to", "alpaca", "--out", "back.jsonl", cwd=tmp_path)
    assert back.returncode == 0, back.stderr
    assert [json.loads(line) for line in (tmp_path / "back.jsonl").read_text(encoding="utf-8").splitlines()] == rows

    split = lmtune("data", "split", "a.json", "--val-size", "0.25", "--out-dir", "split", cwd=tmp_path)
    assert split.returncode == 0, split.stderr
    train = (tmp_path / "split/train.jsonl").read_text(encoding="utf-8").splitlines()
    dev = (tmp_path / "split/dev.jsonl").read_text(encoding="utf-8").splitlines()
    assert (len(train), len(dev)) == (15, 5)
    assert sorted(json.loads(line)["instruction"] for line in train + dev) == sorted(r["instruction"] for r in rows)

    mix = lmtune("data", "mix", "a.json=5", "a_sharegpt.jsonl=10", "--out", "mix.jsonl", cwd=tmp_path)
    assert mix.returncode == 0, mix.stderr
    assert len((tmp_path / "mix.jsonl").read_text(encoding="utf-8").splitlines()) == 15

    inspect = lmtune("data", "inspect", "a.json", cwd=tmp_path)
    assert inspect.returncode == 0, inspect.stderr
    assert "alpaca / utf-8" in inspect.stdout and "20 read, 20 valid, 0 rejected" in inspect.stdout
    assert "zh 100%" in inspect.stdout and "问题 0" in inspect.stdout


def test_data_errors_are_one_line(tmp_path):
    result = lmtune("data", "inspect", "missing.json", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: data file not found: missing.json (and no data/dataset_info.json to look it up)"


def _cells(table: str) -> str:
    """The value column of an inspect table, lines joined and whitespace dropped (folding and wrapping move it)."""
    values = [line.split("│")[2] for line in table.splitlines() if line.count("│") == 3]
    return "".join("".join(values).split())


@pytest.mark.parametrize("width", ["200", "60"])
def test_inspect_shows_chinese_and_long_locations_in_full(tmp_path, width):
    zh = "这是一个很长的中文句子，没有空格可以换行。" * 12
    rows = [{"instruction": zh, "input": "", "output": "好。"}] + [{"instruction": f"q{i}", "output": "a"} for i in range(5817)]
    folder = tmp_path / "a-folder-name-long-enough-to-need-more-than-one-line"
    folder.mkdir()
    path = folder / "records.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + '{"instruction": "no answer"}\n', encoding="utf-8")
    env = {**os.environ, "COLUMNS": width}
    result = subprocess.run([sys.executable, "-m", "lmtune", "data", "inspect", str(path)], capture_output=True, text=True,
                            encoding="utf-8", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    shown = _cells(result.stdout)
    assert zh in shown and f"{path}:5819:recordhasno'output'field" in shown
    assert "│ line 1 " in result.stdout and "example" not in result.stdout  # a record's label is its line in the file


@pytest.mark.parametrize("command", ["encode", "convert"])
def test_a_bad_record_names_the_commands_own_flag(tmp_path, char_tokenizer, command):
    (tmp_path / "d.jsonl").write_text('{"instruction": "hi", "output": "ok"}\n{"instruction": "hi"}\n', encoding="utf-8")
    flags = {"encode": ["--template", "vicuna", "--tokenizer", char_tokenizer[0]], "convert": ["--to", "sharegpt"]}[command]
    result = lmtune("data", command, *(["--data"] if command == "encode" else []), "d.jsonl", *flags, "--out", "o.jsonl", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith("(pass --on-error skip to set bad records aside in rejected.jsonl)")
    assert "data.on_error" not in result.stderr
