"""The real entry point, as a user runs it: `python -m lmtune ...` in a subprocess."""

import json

import yaml

from conftest import RECORDS, lmtune


def test_full_training_then_generate_answers_every_record(full_run):
    preds = full_run / "preds.jsonl"
    result = lmtune("generate", "--model", full_run / "out", "--data", full_run / "train.json", "--out", preds, "--batch-size", 3)
    assert result.returncode == 0, result.stderr
    assert "wrote 4 predictions" in result.stderr
    text = preds.read_text(encoding="utf-8")
    assert "中国的首都是北京。" in text  # written as UTF-8, not \u escapes
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["instruction"] for r in rows] == [r["instruction"] for r in RECORDS]  # input order, despite length sorting
    assert all(set(r) == {"instruction", "input", "output", "prediction", "finish_reason"} for r in rows)
    assert all(r["finish_reason"] == "stop" for r in rows)
    assert [r["prediction"] for r in rows] == [r["output"] for r in RECORDS]  # memorised, and it stopped at EOS


def test_training_writes_everything_later_commands_need(full_run):
    out = full_run / "out"
    run = yaml.safe_load((out / "run.yaml").read_text(encoding="utf-8"))
    assert run["train"]["logging_steps"] == 10 and run["data"]["template"] == "alpaca"
    assert (out / "model.safetensors").stat().st_size > 0 and (out / "tokenizer.json").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(10, 121, 10))
    assert set(rows[0]) == {"step", "epoch", "samples", "loss", "learning_rate", "grad_norm", "tokens_per_second", "padding_share"}
    assert [r["samples"] for r in rows] == [4 * r["step"] for r in rows]  # 4 records a step, counted as trained
    assert 0 <= rows[0]["padding_share"] < 1
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[0]["tokens_per_second"] > 0
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (full_run / "train.log").read_text(encoding="utf-8")
    assert "data: read 4 records from 1 file(s); kept 4; 0 truncated to cutoff_len" in log
    assert "step 120/120  loss " in log and "it/s" not in log  # one line per log step, no tqdm flood


def test_lora_training_chat_and_generate_with_adapter(full_run):
    adapter = full_run / "lora"
    result = lmtune(
        "train", full_run / "run.yaml", f"model.path={full_run / 'out'}", "finetune.method=lora",
        f"train.output_dir={adapter}", "train.max_steps=20", "train.learning_rate=1e-3",
    )
    assert result.returncode == 0, result.stderr
    assert (adapter / "adapter_model.safetensors").stat().st_size > 10_000
    assert "lora: " in result.stderr and "trainable parameters" in result.stderr

    # The base model and the template come from the adapter's run.yaml.
    chat = lmtune("chat", "--adapter", adapter, stdin="中国的首都是哪里？\nWhat is two plus two?\n/exit\n")
    assert chat.returncode == 0, chat.stderr
    assert "assistant> 中国的首都是北京。\n" in chat.stdout
    assert "assistant> Two plus two is four.\n" in chat.stdout

    preds = full_run / "lora.jsonl"
    result = lmtune("generate", "--adapter", adapter, "--data", full_run / "train.json", "--out", preds)
    assert result.returncode == 0, result.stderr
    assert len(preds.read_text(encoding="utf-8").splitlines()) == 4

    # --with-base switches the adapter off: the base column is the base model's own evaluation.
    both = lmtune("eval", "--adapter", adapter, "--data", full_run / "train.json", "--with-base", "--json", "--out", full_run / "e1")
    alone = lmtune("eval", "--model", full_run / "out", "--data", full_run / "train.json", "--json", "--out", full_run / "e2")
    assert both.returncode == 0 and alone.returncode == 0, both.stderr + alone.stderr
    both, alone = json.loads(both.stdout), json.loads(alone.stdout)
    assert both["base"]["dev"] == alone["model"]["dev"]
    assert both["fine-tune"]["dev"]["loss"] != both["base"]["dev"]["loss"]


def test_chat_prompt_is_the_training_prefix_and_the_saved_chat_template_agrees(full_run, llama_dir):
    from lmtune.data.encode import Encoder
    from lmtune.data.readers import read_conversations
    from lmtune.infer.engine import load_engine
    from lmtune.model.load import load_tokenizer
    from lmtune.templates.template import get_template

    engine = load_engine(model=str(full_run / "out"))  # everything from the output folder alone
    assert (full_run / "out" / "template.yaml").is_file()
    for conv, record in read_conversations(full_run / "train.json"):
        training = Encoder(load_tokenizer(llama_dir), get_template("alpaca"), 128).encode(conv)
        prompt = engine.encoder.prompt_ids(conv.without_last_answer()[0])
        assert training.input_ids[: len(prompt)] == prompt
        assert training.labels[len(prompt) - 1] == -100 and training.labels[len(prompt)] != -100
        user = record["instruction"] + (f"\n{record['input']}" if record["input"] else "")
        text = engine.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
        if not record["input"]:  # chat messages have no separate input field; Alpaca's with-input prompt differs
            assert [engine.tokenizer.bos_token_id] + engine.tokenizer(text, add_special_tokens=False)["input_ids"] == prompt
