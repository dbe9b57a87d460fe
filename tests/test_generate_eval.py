"""Batch prediction (resume, distillation sets), sampling settings, dev loss, and `lmtune eval`
comparing a fine-tune with its base, on the memorised model of `full_run`."""

import json

import pytest
import torch

from conftest import RECORDS, lmtune
from lmtune.config import GenerateConfig
from lmtune.data.encode import Encoder
from lmtune.data.readers import read_conversations
from lmtune.errors import DataError
from lmtune.evaluate.suite import dev_loss
from lmtune.infer.engine import load_engine
from lmtune.infer.generate import generate_file, read_items

GREEDY = {"temperature": 0, "repetition_penalty": 1.0, "max_new_tokens": 32}


@pytest.fixture(scope="module")
def engine(full_run):
    return load_engine(str(full_run / "out"), settings=GenerateConfig(**GREEDY))


class Counting:
    """The engine, counting the prompts it is asked to answer."""

    def __init__(self, engine):
        self.engine, self.encoder, self.asked = engine, engine.encoder, 0

    def generate(self, convs):
        self.asked += len(convs)
        return self.engine.generate(convs)


def test_generate_resumes_where_an_interrupted_run_stopped(engine, full_run, tmp_path):
    items = read_items(full_run / "train.json")
    out = tmp_path / "preds.jsonl"
    first = generate_file(engine, items, out, batch_size=2)
    assert [r["prediction"] for r in first.rows] == [r["output"] for r in RECORDS]
    # An interrupted run: two answers written (in length order), then half a line.
    lines = out.read_text(encoding="utf-8").splitlines()
    out.write_text(lines[2] + "\n" + lines[0] + "\n" + lines[1][:15], encoding="utf-8")
    counting = Counting(engine)
    again = generate_file(counting, items, out, batch_size=2)
    assert counting.asked == 2 and again.answered == 2 and again.records == 4
    assert out.read_text(encoding="utf-8").splitlines() == lines  # input order, nothing half-written
    finished = Counting(engine)
    generate_file(finished, items, out, batch_size=2)
    assert finished.asked == 0


def test_generate_refuses_an_output_file_of_other_records(engine, full_run, tmp_path):
    out = tmp_path / "preds.jsonl"
    out.write_text(json.dumps({"instruction": "something else", "output": "", "prediction": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="1 earlier predictions answer records that are not in this data file"):
        generate_file(engine, read_items(full_run / "train.json"), out, batch_size=2)


def test_user_stop_strings_end_the_answer(full_run):
    engine = load_engine(str(full_run / "out"), settings=GenerateConfig(**GREEDY, stop=["capital"]))
    reply = engine.generate([read_items(full_run / "train.json")[0].prompt])[0]
    assert (reply.text, reply.finish_reason) == ("Paris is the", "stop")


def test_a_seed_makes_sampling_repeatable(full_run):
    settings = GenerateConfig(temperature=1.5, top_k=0, top_p=1.0, max_new_tokens=12, seed=7)
    engine = load_engine(str(full_run / "out"), settings=settings)
    prompt = [read_items(full_run / "train.json")[0].prompt]
    assert engine.generate(prompt)[0].text == engine.generate(prompt)[0].text


def test_dev_loss_is_the_token_weighted_mean_of_the_training_loss(engine, full_run):
    convs = [c for c, _ in read_conversations(full_run / "train.json")]
    per_sample = []
    for conv in convs:
        sample = Encoder(engine.tokenizer, engine.template, 128).encode(conv)
        ids, labels = torch.tensor([sample.input_ids]), torch.tensor([sample.labels])
        with torch.no_grad():
            loss = engine.model(input_ids=ids, labels=labels).loss.item()  # transformers' own masked mean
        per_sample.append((loss, sum(1 for x in sample.labels[1:] if x != -100)))
    result = dev_loss(engine, convs, cutoff_len=128, train_on="all_assistant", batch_size=3)  # padded batches
    expected = sum(loss * n for loss, n in per_sample) / sum(n for _, n in per_sample)
    assert result["tokens"] == sum(n for _, n in per_sample)
    assert result["loss"] == pytest.approx(expected, abs=1e-5)
    assert result["perplexity"] == pytest.approx(torch.tensor(expected).exp().item(), rel=1e-5)


def test_generate_writes_a_distillation_set_and_counts_what_it_left_out(full_run, tmp_path):
    out = tmp_path / "teacher.jsonl"
    # 6 new tokens: the short English answers finish, the others are cut off and must not be trained on.
    result = lmtune("generate", "--model", full_run / "out", "--data", full_run / "train.json", "--out", out,
                    "--max-new-tokens", 7, "--as-dataset", "sharegpt")
    assert result.returncode == 0, result.stderr
    preds = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    finished = [p for p in preds if p["finish_reason"] == "stop"]
    assert 0 < len(finished) < 4
    dataset = [json.loads(line) for line in (tmp_path / "teacher.sharegpt.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [d["conversations"][-1] for d in dataset] == [{"from": "gpt", "value": p["prediction"]} for p in finished]
    assert dataset[0]["conversations"][0]["from"] == "human"
    assert f"{len(finished)} written" in result.stderr and f"{4 - len(finished)} left out" in result.stderr
    again = lmtune("data", "inspect", tmp_path / "teacher.sharegpt.jsonl")  # it reads back as training data
    assert again.returncode == 0, again.stderr


def test_eval_compares_the_fine_tune_with_its_base_in_one_table(full_run, tmp_path):
    out = tmp_path / "eval"
    result = lmtune("eval", "--model", full_run / "out", "--data", full_run / "train.json", "--with-base", "--out", out)
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    base, tuned = results["base"], results["fine-tune"]
    assert tuned["generation"]["rouge-l"] == 100 and base["generation"]["rouge-l"] < 50
    assert tuned["dev"]["loss"] < 0.5 < base["dev"]["loss"]
    assert tuned["dev"]["tokens"] == base["dev"]["tokens"] > 0
    for needle in ("dev loss", "perplexity", "ROUGE-L", "base", "fine-tune", "change"):
        assert needle in result.stdout
    html = (out / "compare.html").read_text(encoding="utf-8")
    assert all(r["output"] in html for r in RECORDS)


def test_eval_with_nothing_to_evaluate_says_what_to_pass(full_run):
    result = lmtune("eval", "--model", full_run / "out")
    assert result.returncode == 2
    assert "nothing to evaluate: pass --data DEV_FILE and/or --choice CSV_OR_FOLDER" in result.stderr
    assert "Traceback" not in result.stderr
