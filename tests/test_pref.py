"""Preference training (data.stage: dpo) on tiny models built here: pairs in the layouts users bring,
DPO that turns the model's preferences around while the reference stays as it was, and the guards."""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import RECORDS, lmtune, write_json
from lmtune.config import DataConfig, validate_config
from lmtune.data.encode import Encoder
from lmtune.data.load import load_data
from lmtune.data.pref import encode_pairs
from lmtune.errors import DataError
from lmtune.evaluate.pref import pair_logps, preference_accuracy
from lmtune.templates.hf import template_for
from lmtune.train.callbacks import read_metrics
from lmtune.train.run import train

# English answers of similar length: the random base model's gaps between them are small enough
# for a few LoRA steps to turn around (a long Chinese answer sits 25 nats below them all).
ANSWERS = [r["output"] for r in RECORDS if r["output"].isascii()]


def oriented_pairs(llama_dir, tokenizer):
    """Every prompt with two answers, chosen being the one the base model finds LESS likely."""
    from lmtune.model.load import load_model

    model = load_model(llama_dir, "float32")
    rows = [{"instruction": r["instruction"], "input": r["input"], "chosen": a, "rejected": b}
            for r in RECORDS for a in ANSWERS for b in ANSWERS if a < b]
    encoder = Encoder(tokenizer, template_for("alpaca", tokenizer, None), 128)
    pairs = load_data(DataConfig(path=[str(write_json(llama_dir.parent / "pairs-probe.json", rows))], stage="dpo")).train
    chosen, rejected = pair_logps(model, encode_pairs(pairs, encoder), tokenizer.pad_token_id, 16)
    return [r if c < j else {**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r, c, j in zip(rows, chosen, rejected)]


def dpo_config(llama_dir, data, out, source=None, **pref):
    return validate_config({
        "model": {"path": str(llama_dir)},
        "data": {**(source or {"path": str(data)}), "template": "alpaca", "stage": "dpo", "cutoff_len": 128},
        "finetune": {"method": "lora", "lora": {"r": 8, "alpha": 16}},
        "train": {"output_dir": str(out), "max_steps": 30, "learning_rate": 2e-2, "per_device_train_batch_size": 8,
                  "logging_steps": 5, "warmup_ratio": 0.0},
        "pref": pref,
    })


def test_dpo_turns_the_preference_around_and_the_reference_stays_bit_identical(tmp_path, llama_dir, tokenizer):
    from lmtune.infer.engine import load_engine

    rows = oriented_pairs(llama_dir, tokenizer)
    data = write_json(tmp_path / "pairs.json", rows)
    pairs = load_data(DataConfig(path=[str(data)], stage="dpo")).train
    base = load_engine(str(llama_dir), None, "alpaca")
    before = preference_accuracy(base, pairs, 128, 16)
    samples = encode_pairs(pairs, Encoder(tokenizer, base.template, 128))
    assert before["accuracy"] < 0.5

    result = train(dpo_config(llama_dir, data, tmp_path / "out", beta=0.1))

    tuned = load_engine(str(llama_dir), str(result.output_dir))
    assert preference_accuracy(tuned, pairs, 128, 16)["accuracy"] >= 0.9
    with tuned.model.disable_adapter():  # the reference: the base, adapter off, bit for bit as before
        reference = pair_logps(tuned.model, samples, tokenizer.pad_token_id, 16)
    original = pair_logps(base.model, samples, tokenizer.pad_token_id, 16)
    assert all(torch.equal(a, b) for a, b in zip(reference, original))
    rows = [r for r in read_metrics(result.output_dir) if "loss" in r]
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(rows[-1])
    assert rows[-1]["rewards/margins"] > rows[0]["rewards/margins"]
    assert not (result.output_dir / "ref").exists()  # no copy of the adapter saved as the reference


LAYOUTS = {
    "alpaca": {"instruction": "Hi", "input": "", "chosen": "Hello!", "rejected": "Go away."},
    "sharegpt": {"conversations": [{"from": "human", "value": "Hi"}], "chosen": {"from": "gpt", "value": "Hello!"},
                 "rejected": {"from": "gpt", "value": "Go away."}},
    "messages": {"messages": [{"role": "user", "content": "Hi"}], "chosen": {"role": "assistant", "content": "Hello!"},
                 "rejected": "Go away."},
    "ultrafeedback": {"prompt": "Hi", "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                      "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]},
    "trl": {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
            "rejected": [{"role": "assistant", "content": "Go away."}]},
    "plain": {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
}


def encoded_layouts(folder, layouts: dict, stage: str, encode, encoder) -> dict:
    """Each layout's one record, loaded for the stage and encoded."""
    encoded = {}
    for name, record in layouts.items():
        loaded = load_data(DataConfig(path=[str(write_json(folder / f"{name}.jsonl", [record], jsonl=True))], stage=stage)).train
        encoded[name] = encode(loaded, encoder)[0]
    return encoded


def test_every_layout_gives_the_same_pair(tmp_path, tokenizer):
    encoded = encoded_layouts(tmp_path, LAYOUTS, "dpo", encode_pairs, Encoder(tokenizer, template_for("qwen", tokenizer, None), 64))
    first = encoded["alpaca"]
    assert all(s == first for s in encoded.values())
    assert tokenizer.decode(first.chosen_ids) == "Hello!<|im_end|>" and not first.truncated


def test_truncation_cuts_the_prompt_start_and_keeps_the_answers(tmp_path, tokenizer):
    long = {"prompt": "Name the capital of France. " * 20, "chosen": "Paris is the capital of France.", "rejected": "Two plus two is four."}
    pairs = load_data(DataConfig(path=[str(write_json(tmp_path / "long.jsonl", [long], jsonl=True))], stage="dpo")).train
    full = encode_pairs(pairs, Encoder(tokenizer, template_for("alpaca", tokenizer, None), 1024))[0]
    cut = encode_pairs(pairs, Encoder(tokenizer, template_for("alpaca", tokenizer, None), 48))[0]
    assert cut.truncated and len(cut.prompt_ids) + max(len(cut.chosen_ids), len(cut.rejected_ids)) <= 48
    assert (cut.chosen_ids, cut.rejected_ids) == (full.chosen_ids, full.rejected_ids)
    assert cut.prompt_ids[-5:] == full.prompt_ids[-5:]  # the prompt's end leads into the answers


@pytest.mark.parametrize("record, message", [
    ({"prompt": "Hi", "chosen": "Hello!", "rejected": "Hello!"}, "'chosen' and 'rejected' are the same answer"),
    ({"prompt": "Hi", "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
      "rejected": [{"role": "user", "content": "Ho"}, {"role": "assistant", "content": "No."}]}, "answer different prompts"),
    ({"instruction": "Hi", "output": "Hello!"}, "no 'chosen' field; preference data (data.stage: dpo or rm) needs"),
])
def test_bad_pairs_name_their_line(tmp_path, record, message):
    path = write_json(tmp_path / "bad.jsonl", [LAYOUTS["plain"], record], jsonl=True)
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}:2: .*{re.escape(message)}"):
        load_data(DataConfig(path=[str(path)], stage="dpo"))
    assert len(load_data(DataConfig(path=[str(path)], stage="dpo", on_error="skip")).report.rejected) == 1


def test_pairs_cut_to_the_same_answer_stop_the_run(tmp_path, tokenizer):
    same_start = {"prompt": "Hi", "chosen": "Paris is the capital of France. Yes", "rejected": "Paris is the capital of France. No"}
    pairs = load_data(DataConfig(path=[str(write_json(tmp_path / "p.jsonl", [same_start], jsonl=True))], stage="dpo")).train
    with pytest.raises(DataError, match="every pair's chosen and rejected answers are the same once cut to data.cutoff_len=8"):
        encode_pairs(pairs, Encoder(tokenizer, template_for("alpaca", tokenizer, None), 8))


def test_llama_factory_ranking_entry_trains_through_data_dataset(tmp_path, llama_dir):
    folder = tmp_path / "data"
    folder.mkdir()
    write_json(folder / "dpo_en_demo.json", [LAYOUTS["sharegpt"]] * 4)
    (folder / "dataset_info.json").write_text(json.dumps({"dpo_en_demo": {
        "file_name": "dpo_en_demo.json", "ranking": True, "formatting": "sharegpt",
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}}), encoding="utf-8")
    source = {"dataset": "dpo_en_demo", "dataset_dir": str(folder)}
    config = dpo_config(llama_dir, None, tmp_path / "out", source, loss="ipo", ftx=0.5)
    config.train.max_steps = 2
    result = train(config)
    assert result.report.kept == 4 and (result.output_dir / "adapter_model.safetensors").is_file()
    evaluated = lmtune("eval", "--adapter", result.output_dir, "--data", folder / "dpo_en_demo.json", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    preference = json.loads(evaluated.stdout.strip().splitlines()[-1])["model"]["preference"]
    assert preference["pairs"] == 4 and 0 <= preference["accuracy"] <= 1


def test_an_sft_run_is_scored_on_pairs_too_so_before_and_after_dpo_compare(tmp_path, full_run):
    """`lmtune eval --data PAIRS` on a plain SFT run: the same preference accuracy a DPO run gets."""
    wrong = [RECORDS[(i + 1) % len(RECORDS)]["output"] for i in range(len(RECORDS))]
    pairs = write_json(tmp_path / "pairs.json", [{**r, "chosen": r["output"], "rejected": w} for r, w in zip(RECORDS, wrong)])
    evaluated = lmtune("eval", "--model", full_run / "out", "--data", pairs, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    preference = json.loads(evaluated.stdout.strip().splitlines()[-1])["model"]["preference"]
    assert preference["pairs"] == 4 and preference["accuracy"] == 1.0  # it memorised the chosen answers


def marked_pairs(prompts, bodies):
    """Chosen answers end in 'Yes.', rejected ones in 'No.': a reward model can learn the word."""
    return [{"instruction": p, "input": "", "chosen": f"{b} Yes.", "rejected": f"{b} No."} for p in prompts for b in bodies]


def test_reward_model_ranks_held_out_pairs_and_saves_its_score_head(tmp_path, llama_dir):
    from lmtune.infer.engine import load_engine

    instructions = [r["instruction"] for r in RECORDS]
    data = write_json(tmp_path / "pairs.json", marked_pairs(instructions[:2], ANSWERS))
    held_out = write_json(tmp_path / "held_out.json", marked_pairs(instructions[2:], ["I like tea.", "Two is four."]))
    config = dpo_config(llama_dir, data, tmp_path / "out")
    config.data.stage, config.train.max_steps = "rm", 20
    result = train(config)

    saved = json.loads((result.output_dir / "adapter_config.json").read_text())
    assert "score" in saved["modules_to_save"]  # the new head is saved with the adapter
    pairs = load_data(DataConfig(path=[str(held_out)], stage="rm")).train
    accuracy = preference_accuracy(load_engine(None, str(result.output_dir)), pairs, 128, 16)
    assert accuracy["accuracy"] == 1.0 and accuracy["margin"] > 0
    rows = [r for r in read_metrics(result.output_dir) if "loss" in r]
    assert {"accuracy", "margin"} <= set(rows[-1]) and rows[-1]["margin"] > rows[0]["margin"]


def test_kto_raises_desirable_answers_above_undesirable_ones(tmp_path, llama_dir, tokenizer):
    from lmtune.model.load import load_model

    pairs_file = write_json(tmp_path / "pairs.json", oriented_pairs(llama_dir, tokenizer))
    rows = [{"instruction": p["instruction"], "input": "", "output": p[side], "label": side == "chosen"}
            for p in json.loads(pairs_file.read_text()) for side in ("chosen", "rejected")]
    data = write_json(tmp_path / "kto.json", rows)
    samples = encode_pairs(load_data(DataConfig(path=[str(pairs_file)], stage="dpo")).train,
                           Encoder(tokenizer, template_for("alpaca", tokenizer, None), 128))

    def margin(model) -> float:  # mean log-probability gap, desirable minus undesirable, on the training answers
        desirable, undesirable = pair_logps(model, samples, tokenizer.pad_token_id, 16)
        return float((desirable - undesirable).mean())

    before = margin(load_model(llama_dir, "float32"))
    config = dpo_config(llama_dir, data, tmp_path / "out", beta=0.1)
    config.data.stage = "kto"
    result = train(config)
    from lmtune.infer.engine import load_engine

    assert before < 0 and margin(load_engine(None, str(result.output_dir)).model) > before + 2.0
    logged = [r for r in read_metrics(result.output_dir) if "loss" in r]
    assert {"rewards/chosen", "rewards/rejected", "kl"} <= set(logged[-1])


def test_llama_factory_kto_tag_entry_trains_through_data_dataset(tmp_path, llama_dir):
    folder = tmp_path / "data"
    folder.mkdir()
    answers = [("Hello!", True), ("Go away.", False)] * 2
    write_json(folder / "kto_en_demo.json", [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": a}], "label": good} for a, good in answers])
    (folder / "dataset_info.json").write_text(json.dumps({"kto_en_demo": {
        "file_name": "kto_en_demo.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "kto_tag": "label"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}), encoding="utf-8")
    config = dpo_config(llama_dir, None, tmp_path / "out", {"dataset": "kto_en_demo", "dataset_dir": str(folder)})
    config.data.stage, config.train.max_steps = "kto", 2
    result = train(config)
    assert result.report.kept == 4 and (result.output_dir / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("record, message", [
    ({"instruction": "Hi", "output": "Hello!"}, "no 'label' field; KTO data (data.stage: kto) tags each answer"),
    ({"instruction": "Hi", "output": "Hello!", "label": "yes"}, "'label' must be true (a desirable answer) or false"),
])
def test_bad_kto_records_name_their_line(tmp_path, record, message):
    path = write_json(tmp_path / "bad.jsonl", [{"prompt": "Hi", "completion": "Hello!", "label": True}, record], jsonl=True)
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}:2: .*{re.escape(message)}"):
        load_data(DataConfig(path=[str(path)], stage="kto"))


@pytest.mark.parametrize("loss", ["orpo", "simpo"])
def test_reference_free_losses_learn_the_chosen_ending(tmp_path, llama_dir, loss):
    from lmtune.infer.engine import load_engine

    rows = marked_pairs([r["instruction"] for r in RECORDS[:2]], ANSWERS)
    data = write_json(tmp_path / "pairs.json", rows)
    if preference_accuracy(load_engine(str(llama_dir), None, "alpaca"), load_data(DataConfig(path=[str(data)], stage="dpo")).train, 128, 16)["accuracy"] > 0.5:
        data = write_json(tmp_path / "pairs.json", [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows])  # the base's dispreferred ending is chosen
    pairs = load_data(DataConfig(path=[str(data)], stage="dpo")).train
    config = dpo_config(llama_dir, data, tmp_path / "out", loss=loss, beta=0.1)
    config.train.max_steps = 12
    result = train(config)

    assert preference_accuracy(load_engine(None, str(result.output_dir)), pairs, 128, 16)["accuracy"] == 1.0
    logged = [r for r in read_metrics(result.output_dir) if "loss" in r]
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins"} <= set(logged[-1])
    assert logged[-1]["rewards/margins"] > logged[0]["rewards/margins"]
