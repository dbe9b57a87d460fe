"""A mistake costs a second: the commands that need no model never import torch, and train, chat and
generate refuse a bad config, flag or record before they import torch or transformers. Each case
runs in a fresh interpreter, the only place where what a command imports can be seen."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import RECORDS, lmtune_process, write_config, write_json

HEAVY = ("torch", "transformers", "peft", "trl", "datasets", "accelerate")

# Runs each command through lmtune.cli.main in one interpreter, then lists the heavy modules it imported.
PROBE = textwrap.dedent("""
    import json, sys
    from lmtune.cli import main
    codes = []
    for argv in json.loads(sys.argv[1]):
        try:
            main(argv)
        except SystemExit as exc:
            codes.append(exc.code)
    print(json.dumps({"codes": codes, "imported": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,))


def probe(commands: list[list[str]], cwd) -> dict:
    run = subprocess.run([sys.executable, "-c", PROBE, json.dumps(commands)], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_commands_that_need_no_model_never_import_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("LMTUNE_HOME", str(tmp_path / "home"))
    write_json(tmp_path / "a.json", RECORDS)
    write_json(tmp_path / "b.jsonl", RECORDS, jsonl=True)
    commands = [
        ["templates"],
        ["templates", "show", "qwen"],
        ["data", "convert", "a.json", "--to", "sharegpt", "--out", "a.sharegpt.jsonl"],
        ["data", "split", "a.json", "--val-size", "0.25", "--out-dir", "split"],
        ["data", "mix", "a.json=2", "b.jsonl=2", "--out", "mixed.jsonl"],
        ["kb", "list"],
        ["env"],
    ]
    result = probe(commands, tmp_path)
    assert result["codes"] == [0] * len(commands)
    assert (tmp_path / "a.sharegpt.jsonl").is_file() and (tmp_path / "mixed.jsonl").is_file()
    assert result["imported"] == []


@pytest.fixture
def project(tmp_path, llama_dir):
    write_json(tmp_path / "train.json", RECORDS)
    (tmp_path / "bad.jsonl").write_text(json.dumps(RECORDS[0]) + "\n" + '{"instruction": "oops", "output": \n', encoding="utf-8")
    (tmp_path / "model").symlink_to(llama_dir)
    write_config(tmp_path / "run.yaml", model={"path": str(llama_dir)}, data={"path": "train.json"},
                 train={"output_dir": "out", "max_steps": 1})
    return tmp_path


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "run.yaml", "train.learning_rat=1e-4"], "train.learning_rat: unknown key (not a TrainingArguments field); did you mean 'learning_rate'?"),
    (["train", "run.yaml", "train.learning_rate=fast"], "train.learning_rate: Input should be a valid number"),
    (["train", "run.yaml", "train.eval_strategy=[1]"], "train.eval_strategy: Input should be"),
    (["train", "run.yaml", "data.path=bad.jsonl"], "bad.jsonl:2: malformed JSON"),
    (["train", "run.yaml", "--no-such-flag"], "No such option: --no-such-flag"),
    (["chat", "--model", "model", "--temperature", "-1"], "--temperature must be ≥ 0.0 (got -1.0)"),
    (["generate", "--model", "model", "--data", "bad.jsonl", "--out", "o.jsonl"], "bad.jsonl:2:35: malformed JSON"),
])
def test_a_mistake_is_refused_before_importing_torch(project, argv, message):
    result = probe([argv], project)
    assert result == {"codes": [2], "imported": []}
    ran = lmtune_process(*argv, cwd=project)  # and the console script says it in one line
    assert ran.returncode == 2 and message in ran.stderr and "Traceback" not in ran.stderr
