"""`lmtune eval --tasks`: lm-evaluation-harness tasks on a trained run, over the local task YAMLs of
tests/lm_eval_tasks (C-Eval, MMLU in shared/reference/mcq), offline; and the bad inputs refused in
one line before any model loads."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from conftest import lmtune, lmtune_process

TASKS = Path(__file__).parent / "lm_eval_tasks"
MCQ = Path(__file__).resolve().parents[2] / "shared" / "reference" / "mcq"
needs_reference = pytest.mark.skipif(not MCQ.is_dir(), reason=f"{MCQ} (the local C-Eval/CMMLU/MMLU subsets) is not on this machine")
needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="lm-eval is not installed (pip install 'lmtune[eval]')")

# The form docs/evaluation.md shows users: lm_eval's csv loader over files named by absolute path.
USER_YAML = """\
task: my_mmlu_csv
dataset_path: csv
dataset_kwargs:
  column_names: [question, A, B, C, D, answer]
  data_files:
    dev: {mmlu}/dev/computer_security_dev.csv
    test: {mmlu}/val/computer_security_val.csv
test_split: test
fewshot_split: dev
output_type: multiple_choice
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{A}}}}\\nB. {{{{B}}}}\\nC. {{{{C}}}}\\nD. {{{{D}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: "{{{{['A', 'B', 'C', 'D'].index(answer)}}}}"
metric_list:
  - metric: acc
"""


@needs_lm_eval
@needs_reference
def test_harness_tasks_score_a_run_offline_beside_its_base(full_run, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "my_mmlu_csv.yaml").write_text(USER_YAML.format(mmlu=MCQ / "mmlu"), encoding="utf-8")
    # A process of its own: huggingface_hub and datasets read the offline switches once, at import.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = tmp_path / "eval"
    ran = lmtune_process(
        "eval", "--model", full_run / "out", "--with-base", "--out", out, "--max-samples", "6", "--num-fewshot", "1",
        "--tasks", "lmtune_ceval_local,lmtune_mmlu_generate_local,my_mmlu_csv",
        "--include-path", TASKS, "--include-path", tmp_path / "mine", env=env,
    )
    assert ran.returncode == 0, ran.stderr
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert list(results) == ["base", "fine-tune"]
    for model in results.values():
        assert set(model) == {"harness"}  # --tasks alone: not the run's dev split too
        harness = model["harness"]
        assert {t: harness[t]["samples"] for t in harness} == {"lmtune_ceval_local": 6, "lmtune_mmlu_generate_local": 6, "my_mmlu_csv": 6}
        for task in ("lmtune_ceval_local", "my_mmlu_csv"):
            assert 0 <= harness[task]["metrics"]["acc"] <= 1 and harness[task]["chat_template"] is False
        assert 0 <= harness["lmtune_mmlu_generate_local"]["metrics"]["exact_match,letter"] <= 1
        assert harness["lmtune_mmlu_generate_local"]["chat_template"] is True  # generation: the run's template
        assert harness["lmtune_ceval_local"]["num_fewshot"] == 1
    samples = [json.loads(line) for line in (out / "fine-tune_harness_samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(samples) == 18 and {s["task"] for s in samples} == {"lmtune_ceval_local", "lmtune_mmlu_generate_local", "my_mmlu_csv"}
    # the generation prompt went through the run's template (alpaca's "### Instruction:")
    generated = next(s for s in samples if s["task"] == "lmtune_mmlu_generate_local")
    assert "### Instruction:" in json.dumps(generated["arguments"], ensure_ascii=False)
    for row in ("lmtune_ceval_local acc %", "lmtune_mmlu_generate_local exact_match,letter %", "my_mmlu_csv acc %"):
        assert row in ran.stdout
    assert f"results in {out / 'results.json'}" in ran.stderr.replace("\n", "")


@needs_lm_eval
@pytest.mark.parametrize(("args", "message"), [
    (["--tasks", "lmtune_no_such_task", "--include-path", TASKS], "--tasks lmtune_no_such_task: no such lm-evaluation-harness task or in"),
    (["--tasks", "lmtune_ceval_local", "--include-path", "nowhere"], "--include-path nowhere: no such folder"),
    (["--include-path", TASKS], "--include-path, --num-fewshot and --chat-template go with --tasks"),
])
def test_bad_harness_input_is_one_line_and_exit_2(llama_dir, tmp_path, args, message):
    ran = lmtune("eval", "--model", llama_dir, "--out", tmp_path, *args)  # refused before the model loads: any model will do
    assert ran.returncode == 2 and message in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr and len(ran.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results.json").exists()


@needs_lm_eval
def test_a_hub_task_offline_without_its_dataset_is_one_line(llama_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # an empty cache
    ran = lmtune_process("eval", "--model", llama_dir, "--out", tmp_path, "--tasks", "mmlu_college_medicine", env=env)
    assert ran.returncode == 2 and "Traceback" not in ran.stderr, ran.stderr
    assert "--tasks mmlu_college_medicine: Couldn't reach 'cais/mmlu' on the Hub" in ran.stderr and "--include-path DIR" in ran.stderr


def test_tasks_without_lm_eval_name_the_extra(llama_dir, tmp_path, monkeypatch):
    from lmtune.evaluate import harness

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(harness.importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else find_spec(name, *a))
    ran = lmtune("eval", "--model", llama_dir, "--out", tmp_path, "--tasks", "mmlu")
    assert ran.returncode == 2 and "pip install 'lmtune[eval]'" in ran.stderr and "Traceback" not in ran.stderr
