"""What random models cannot show, on the real SmolLM2-135M-Instruct (conftest.SMOLLM2): a short LoRA
run on its GGUF file lowers the loss on held-out records; its 49k-token vocabulary and ChatML template
give the same tokens in `data encode`, the server and `generate`; a merged export answers as the adapter.

One run trains for all of them: 8 steps on the real demo's data (src/lmtune/assets/real_demo_sft.jsonl).
"""

import json

import httpx
import pytest
import torch
import yaml
from openai import OpenAI

from conftest import SMOLLM2 as GGUF, lmtune, on_smollm2, write_config
from test_serve import KEY, live_server

from lmtune.demo_real import DATA_FILE, asset

pytestmark = on_smollm2
QUESTIONS = ["What is your name?", "lmtune 的吉祥物是什么？"]
CONVERSATION = [  # two turns, Chinese and English, no system prompt: the template adds SmolLM2's default one
    {"role": "user", "content": "你叫什么名字？"},
    {"role": "assistant", "content": "我叫 Tuna，是用 lmtune 微调的助手。"},
    {"role": "user", "content": "Who made you?"},
    {"role": "assistant", "content": "I was made by the lmtune team."},
]


@pytest.fixture(scope="module")
def tuned(home, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tuned")
    config = write_config(
        tmp / "run.yaml",
        model={"path": str(GGUF)},
        data={"path": str(asset(DATA_FILE)), "template": "auto", "cutoff_len": 128, "val_size": 10},
        finetune={"method": "lora", "lora": {"r": 16, "alpha": 32}},
        train={"output_dir": str(tmp / "run"), "max_steps": 8, "per_device_train_batch_size": 4, "learning_rate": 1.0e-3,
               "eval_on_start": True, "eval_steps": 8, "logging_steps": 4},
        generate={"temperature": 0, "repetition_penalty": 1.0, "max_new_tokens": 24},
    )
    ran = lmtune("train", str(config))
    assert ran.returncode == 0, ran.stderr
    return tmp / "run"


@pytest.fixture(scope="module")
def tokenizer(home):
    from lmtune.model.load import load_tokenizer

    return load_tokenizer(GGUF)


def test_a_short_lora_run_on_the_gguf_file_lowers_the_held_out_loss(tuned):
    dev = [row["eval_loss"] for row in map(json.loads, (tuned / "metrics.jsonl").read_text(encoding="utf-8").splitlines()) if "eval_loss" in row]
    assert len(dev) == 2 and dev[1] < 0.7 * dev[0], dev  # 10 held-out paraphrases (2.33 → 1.31 here), before step 1 and after step 8
    assert yaml.safe_load((tuned / "run.yaml").read_text(encoding="utf-8"))["model"]["path"] == str(GGUF)  # the file, as given


def test_data_encode_gives_the_tokens_of_the_models_own_chat_template(tokenizer, tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": CONVERSATION}, ensure_ascii=False) + "\n", encoding="utf-8")
    ran = lmtune("data", "encode", "--data", data, "--template", "auto", "--tokenizer", GGUF, "--out", tmp_path / "enc.jsonl")
    assert ran.returncode == 0, ran.stderr
    row = json.loads((tmp_path / "enc.jsonl").read_text(encoding="utf-8"))
    assert row["input_ids"] == tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=False)
    trained = [tokenizer.decode([t for t, label in run]) for run in _runs(row["input_ids"], row["labels"])]
    assert trained == ["我叫 Tuna，是用 lmtune 微调的助手。<|im_end|>", "I was made by the lmtune team.<|im_end|>"]


def test_the_server_and_generate_prompt_and_answer_as_training_encoded(tuned, tokenizer, tmp_path):
    first = CONVERSATION[:1]
    prompt = tokenizer.apply_chat_template(first, tokenize=True, add_generation_prompt=True, return_dict=False)
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps({"instruction": q}, ensure_ascii=False) + "\n" for q in QUESTIONS), encoding="utf-8")
    ran = lmtune("generate", "--adapter", tuned, "--data", data, "--out", tmp_path / "pred.jsonl")
    assert ran.returncode == 0, ran.stderr
    generated = [json.loads(line)["prediction"] for line in (tmp_path / "pred.jsonl").read_text(encoding="utf-8").splitlines()]

    with live_server(adapters={"tuna": str(tuned)}) as (url, _):
        tokens = httpx.post(f"{url}/tokenize", json={"model": "tuna", "messages": first}, headers={"Authorization": f"Bearer {KEY}"})
        assert tokens.json()["tokens"] == prompt
        client = OpenAI(base_url=f"{url}/v1", api_key=KEY)
        served = [
            client.chat.completions.create(model="tuna", messages=[{"role": "user", "content": q}], temperature=0, max_tokens=24)
            .choices[0].message.content
            for q in QUESTIONS
        ]
    assert served == generated
    assert all(answer for answer in served)


def test_export_merges_the_adapter_and_the_merged_model_answers_as_it_did(tuned, tokenizer, tmp_path):
    from lmtune.infer.engine import load_engine

    ran = lmtune("export", "--adapter", tuned, "--out", tmp_path / "merged")
    assert ran.returncode == 0, ran.stderr
    ids = torch.tensor([tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=False)])
    adapter, merged = load_engine(adapter=str(tuned)), load_engine(model=str(tmp_path / "merged"))
    with torch.inference_mode():
        difference = (adapter.model(ids).logits - merged.model(ids).logits).abs().max().item()
    assert difference < 1e-3, difference  # fp32 merge: W + BA once, instead of x·W + (x·B)·A per call
    question = [_conversation(QUESTIONS[0])]
    assert merged.generate(question)[0].text == adapter.generate(question)[0].text


def _conversation(question: str):
    from lmtune.data.records import USER, Conversation, Turn

    return Conversation([Turn(USER, question)])


def _runs(ids: list[int], labels: list[int]):
    """The trained stretches of a sample, as lists of (token, label)."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != -100:
            current.append((token, label))
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])
