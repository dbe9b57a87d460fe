"""GRPO (data.stage: grpo) on tiny models built here: a short SFT stage teaches two answers per prompt,
one of them right; GRPO, rewarded for the right one, makes it win. Plus the prompt layouts and the
checks on the user's reward functions."""

from __future__ import annotations

import re

import pytest

from conftest import write_json
from test_pref import encoded_layouts
from lmtune.config import DataConfig, validate_config
from lmtune.data.encode import Encoder
from lmtune.data.load import load_data
from lmtune.data.prompts import encode_prompts
from lmtune.errors import ConfigError, DataError
from lmtune.templates.hf import template_for
from lmtune.train.callbacks import read_metrics
from lmtune.train.guards import TrainingStopped
from lmtune.train.rewards import reward_functions
from lmtune.train.run import train

# Each question once with its right answer and once with a wrong one: after SFT the model says
# either about as often, which gives GRPO's groups both rewards to compare.
QUESTIONS = {"Name the capital of France.": ("Paris.", "Tea."), "What is two plus two?": ("Four.", "Paris."),
             "Name a drink.": ("Tea.", "Four."), "What is the capital?": ("Paris.", "Four.")}


def run_config(model, data, out, stage, method="full", **train):
    return validate_config({
        "model": {"path": str(model)},
        "data": {"path": str(data), "template": "alpaca", "stage": stage, "cutoff_len": 64, "cache": False},
        "finetune": {"method": method, "lora": {"r": 8, "alpha": 16}},
        "train": {"output_dir": str(out), "warmup_ratio": 0.0, "logging_steps": 1, "lr_scheduler_type": "constant", **train},
        "grpo": {"num_generations": 8, "max_new_tokens": 6, "temperature": 1.0},
    })


@pytest.fixture(scope="module")
def half_right(tmp_path_factory, llama_dir):
    """The tiny model after SFT on both answers of every question."""
    tmp = tmp_path_factory.mktemp("grpo-sft")
    rows = [{"instruction": q, "input": "", "output": a} for q, answers in QUESTIONS.items() for a in answers]
    data = write_json(tmp / "sft.json", rows)
    return train(run_config(llama_dir, data, tmp / "sft", "sft", max_steps=60, learning_rate=1e-2, per_device_train_batch_size=8)).output_dir


def test_grpo_raises_the_reward_of_the_right_answer(tmp_path, half_right):
    data = write_json(tmp_path / "prompts.json", [{"instruction": q, "input": "", "output": a} for q, (a, _) in QUESTIONS.items()])
    # Every step samples 8 answers to each of the 4 questions; seeds 0-2 all went from ~0.6 to ~0.9.
    config = run_config(half_right, data, tmp_path / "out", "grpo", method="lora", max_steps=40, learning_rate=5e-3,
                        per_device_train_batch_size=32, seed=0)
    result = train(config)

    rewards = [r["reward"] for r in read_metrics(result.output_dir) if "loss" in r]
    assert len(rewards) == 40 and {"reward_std", "rewards/exact_match/mean"} <= set(read_metrics(result.output_dir)[0])
    first, last = sum(rewards[:5]) / 5, sum(rewards[-10:]) / 10
    assert 0.3 < first < 0.75, rewards  # the SFT stage left both answers likely
    assert last > first + 0.2, rewards
    assert (result.output_dir / "adapter_model.safetensors").is_file()


PROMPT = {"instruction": "What is two plus two?", "input": ""}
LAYOUTS = {
    "alpaca": {**PROMPT, "output": "Four."},
    "alpaca_answer": {**PROMPT, "answer": "Four."},
    "sharegpt": {"conversations": [{"from": "human", "value": PROMPT["instruction"]}, {"from": "gpt", "value": "Four."}]},
    "messages": {"messages": [{"role": "user", "content": PROMPT["instruction"]}], "solution": "Four."},
    "prompt": {"prompt": PROMPT["instruction"], "answer": "Four."},
    "prompt_messages": {"prompt": [{"role": "user", "content": PROMPT["instruction"]}], "answer": "Four."},
}


def test_every_prompt_layout_gives_the_same_prompt_and_reference(tmp_path, tokenizer):
    encoder = Encoder(tokenizer, template_for("alpaca", tokenizer, None), 64)
    samples = encoded_layouts(tmp_path, LAYOUTS, "grpo", encode_prompts, encoder)
    first = samples["alpaca"]
    assert all(s == first for s in samples.values())
    assert first.reference == "Four." and first.text.endswith("What is two plus two?\n\n### Response:\n")
    prompt = load_data(DataConfig(path=[str(tmp_path / "alpaca.jsonl")])).train[0].without_last_answer()[0]
    assert first.prompt_ids == encoder.prompt_ids(prompt)  # as `lmtune generate` and chat build it


def test_prompts_without_a_question_name_their_line(tmp_path):
    path = write_json(tmp_path / "bad.jsonl", [LAYOUTS["prompt"], {"prompt": [], "answer": "Four."}], jsonl=True)
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}:2: "):
        load_data(DataConfig(path=[str(path)], stage="grpo"))


def user_reward(tmp_path, body: str) -> str:
    module = tmp_path / "my_rewards.py"
    module.write_text(f"def score(prompts, completions, references):\n    {body}\n", encoding="utf-8")
    return f"{module}:score"


CALL = {"prompts": ["p"] * 3, "completions": ["Four.", " Four. ", "Tea."], "completion_ids": [[1], [1, 2], []],
        "reference": ["Four."] * 3}


@pytest.mark.parametrize("body, message", [
    ("return [1.0]", r"returned \[1.0\]: 1 values for 3 completions; it must return a list of 3 numbers"),
    ("return [1.0, 'yes', 0.0]", r"returned \[1.0, 'yes', 0.0\]: 'yes' is not a finite number"),
    ("return 1.0", r"returned 1.0: a float, not a list"),
    ("return [1 / 0]", r"raised ZeroDivisionError: division by zero"),
])
def test_a_bad_reward_function_is_named_with_what_it_did(tmp_path, body, message):
    spec = user_reward(tmp_path, body)
    (function,) = reward_functions([spec], 6, ())
    with pytest.raises(TrainingStopped, match=rf"^grpo.rewards: the reward function '{re.escape(spec)}' {message}"):
        function(**CALL)


def test_built_in_rewards(tmp_path):
    exact, fmt, short, near = reward_functions(["exact_match", r"format:[A-Z]\w+\.", "length", "length:2"], 4, ("Tea",))
    assert exact(**CALL) == [1.0, 1.0, 0.0]
    assert fmt(**CALL) == [1.0, 1.0, 0.0]  # "Tea." is cut at the stop string "Tea", like a generated reply
    assert short(**CALL) == [-0.25, -0.5, 0.0] and near(**CALL) == [-0.5, 0.0, -1.0]
    (good,) = reward_functions([user_reward(tmp_path, "return [len(c) for c in completions]")], 4, ())
    assert good(**CALL) == [5.0, 5.0, 4.0]


def test_a_reward_function_with_the_wrong_count_stops_the_run(tmp_path, llama_dir):
    data = write_json(tmp_path / "prompts.json", [{"instruction": q, "input": "", "output": a} for q, (a, _) in QUESTIONS.items()])
    config = run_config(llama_dir, data, tmp_path / "out", "grpo", method="lora", max_steps=1, per_device_train_batch_size=8)
    config.grpo.rewards = [user_reward(tmp_path, "return [0.0]")]
    with pytest.raises(TrainingStopped, match=r"returned \[0.0\]: 1 values for 8 completions"):
        train(config)


@pytest.mark.parametrize("rewards, message", [
    (["exact"], "'exact' is not one of exact_match, length, length:N, format:REGEX, or path/module.py:function"),
    (["format:("], "'format:\\(': not a valid regular expression"),
    (["length:0"], "length:N takes a whole number of tokens above 0"),
])
def test_unknown_rewards_are_config_problems(rewards, message):
    with pytest.raises(ConfigError, match=f"grpo.rewards: .*{message}"):
        validate_config({"model": {"path": "m"}, "data": {"path": "d", "stage": "grpo"}, "train": {"output_dir": "o"},
                         "grpo": {"rewards": rewards}})
