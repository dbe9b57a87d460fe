import pytest
import torch

from lmtune.config import validate_config
from lmtune.errors import ModelError
from lmtune.tiny import build_model
from lmtune.train.callbacks import smoothed
from lmtune.train.run import train


def config(model_dir, data_path, out, **data_settings):
    return validate_config(
        {
            "model": {"path": str(model_dir)},
            "data": {"path": str(data_path), "template": "chatml", "cutoff_len": 64, "cache": False, **data_settings},
            "train": {"output_dir": str(out), "max_steps": 3, "per_device_train_batch_size": 2, "logging_steps": 1},
        }
    )


def test_lora_on_a_tiny_bloom(tmp_path, tokenizer, data_file):
    bloom = tmp_path / "bloom"
    build_model(tokenizer, bloom, arch="bloom", hidden_size=32, layers=2, heads=2)
    result = train(config(bloom, data_file, tmp_path / "out"))
    assert (result.output_dir / "adapter_model.safetensors").is_file()  # verify_adapter ran and passed
    assert result.report.kept == 4


def test_token_ids_beyond_the_embedding_table_stop_the_run(tmp_path, tokenizer, data_file):
    small = tmp_path / "small"
    model = build_model(tokenizer, small, hidden_size=32, layers=1, heads=2)
    model.resize_token_embeddings(100)  # a tokenizer/model mismatch, as after adding tokens carelessly
    model.save_pretrained(small)
    with pytest.raises(ModelError, match=r"token id \d+ is outside the model's embedding table \(100 rows\)"):
        train(config(small, data_file, tmp_path / "out"))


def test_smoothed_loss_has_no_start_up_bias():
    assert smoothed([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])
    assert smoothed([1.0, 3.0], 0.0) == [1.0, 3.0]


def test_every_format_trains_from_one_folder_with_no_conversion(tmp_path, llama_dir):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    data.mkdir()
    q, a = "中国的首都是哪里？", "中国的首都是北京。"
    lines = {
        "alpaca.json": json.dumps([{"instruction": q, "input": "", "output": a}]),
        "sharegpt.jsonl": json.dumps({"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}),
        "messages.jsonl": json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}),
        "moss.jsonl": json.dumps({"meta_instruction": "You are MOSS.", "chat": {"turn_1": {"Human": f"<|Human|>: {q}<eoh>\n", "MOSS": f"<|MOSS|>: {a}<eom>\n"}}}),
        "firefly.jsonl": json.dumps({"conversation": [{"human": q, "assistant": a}]}),
        "belle.json": json.dumps([{"instruction": f"Human: hi\nAssistant: hello\nHuman: {q}\nAssistant:", "input": "", "output": a}]),
        "notes.txt": "plain text for continued pre-training",
        "table.csv": f"instruction,input,output\n{q},,{a}\n",
    }
    for name, text in lines.items():
        (data / name).write_text(text + "\n", encoding="utf-8")
    (data / "gbk.jsonl").write_bytes((json.dumps({"instruction": q, "output": a}, ensure_ascii=False) + "\n").encode("gbk"))
    pq.write_table(pa.table({"instruction": [q], "input": [""], "output": [a]}), data / "rows.parquet")
    (data / "bad.jsonl").write_text('{"instruction": "q"}\n', encoding="utf-8")

    out = tmp_path / "out"
    settings = config(llama_dir, data, out, val_size=2, on_error="skip")
    result = train(settings)
    report = result.report
    assert len(report.files) == 11 and report.read == 11 and report.kept == 10 and report.dev == 2
    assert {f.format for f in report.files.values()} >= {"alpaca", "sharegpt", "messages", "moss", "firefly", "belle_multiturn", "text"}
    assert report.files[str(data / "gbk.jsonl")].encoding == "gb18030"
    assert json.loads((out / "rejected.jsonl").read_text(encoding="utf-8"))["record"] == {"instruction": "q"}
    assert any("eval_loss" in line for line in (out / "metrics.jsonl").read_text().splitlines())



def test_report_to_tensorboard_writes_the_logged_losses(tmp_path, llama_dir, data_file):
    pytest.importorskip("tensorboard", reason="tensorboard is a dev dependency; pip install tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = config(llama_dir, data_file, tmp_path / "out")
    run.train.report_to = "tensorboard"
    train(run)
    events = sorted((tmp_path / "out").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file under the output folder"
    scalars = EventAccumulator(str(events[0].parent)).Reload()
    assert [e.step for e in scalars.Scalars("train/loss")] == [1, 2, 3]


def test_gradient_accumulation_weighs_every_answer_token_alike(tmp_path, llama_dir, data_file, monkeypatch):
    """Batch 4 in one step and batch 2 accumulated twice give the same gradient, though the
    micro-batches hold different numbers of answer tokens (averaging their means would not).

    The gradients are compared as the optimizer receives them, not the weights after a step:
    Adam's first update is about lr * sign(grad), so a rounding difference in a tiny gradient
    would become a whole lr step, and the test would depend on the CPU's summation order."""
    seen: list[list[torch.Tensor]] = []
    sgd_step = torch.optim.SGD.step

    def recording_step(optimizer, *args, **kwargs):
        seen.append([p.grad.clone() for group in optimizer.param_groups for p in group["params"] if p.grad is not None])
        return sgd_step(optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)

    def gradients(name, batch, accumulation):
        run = config(llama_dir, data_file, tmp_path / name)
        run.finetune.method = "full"
        run.train.per_device_train_batch_size, run.train.gradient_accumulation_steps = batch, accumulation
        run.train.max_steps, run.train.warmup_ratio, run.train.optim, run.train.max_grad_norm = 1, 0.0, "sgd", 0.0
        train(run)
        return seen.pop()

    whole, accumulated = gradients("whole", 4, 1), gradients("accumulated", 2, 2)
    assert len(whole) == len(accumulated) > 0
    for a, b in zip(whole, accumulated):
        assert a.abs().max() > 0  # every weight of a full fine-tune gets a gradient
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())


def test_a_thinking_template_trained_without_reasoning_prompts_with_thinking_off(tmp_path, llama_dir, data_file):
    """Every answer was trained after Qwen3's empty think block, so chat and serve prompt the same way."""
    from lmtune.data.records import USER, Conversation, Turn
    from lmtune.templates.template import get_template

    plain = train(config(llama_dir, data_file, tmp_path / "plain", template="qwen3", cutoff_len=128)).output_dir
    saved = get_template("qwen3", plain / "template.yaml")
    assert saved.thinking_default is False
    prompt = "".join(s.text for s in saved.render(Conversation([Turn(USER, "hi")])))
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    reasoning = tmp_path / "reasoning.jsonl"
    reasoning.write_text('{"instruction": "2+2?", "output": "<think>\\n2 and 2\\n</think>\\n\\n4"}\n', encoding="utf-8")
    thinking = train(config(llama_dir, reasoning, tmp_path / "thinking", template="qwen3", cutoff_len=128)).output_dir
    assert get_template("qwen3", thinking / "template.yaml").thinking_default is True
