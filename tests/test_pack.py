"""Packing: per-token losses equal those of unpacked samples, and row-mates never see each other."""

import pytest
import torch
import torch.nn.functional as F

from lmtune.config import validate_config
from lmtune.data.encode import Encoder, Sample
from lmtune.data.pack import PackedCollator, pack
from lmtune.data.records import ASSISTANT, USER, Conversation, Turn
from lmtune.errors import ConfigError
from lmtune.model.load import load_model
from lmtune.templates.template import get_template
from lmtune.tiny import build_model
from lmtune.train.run import train


def samples(tokenizer, *pairs):
    encoder = Encoder(tokenizer, get_template("alpaca"), 256)
    return [encoder.encode(Conversation([Turn(USER, q), Turn(ASSISTANT, a)])) for q, a in pairs]


def token_losses(logits, labels):
    """Loss of every position, as the model's own shift computes it (NaN where nothing is trained)."""
    loss = F.cross_entropy(logits[0, :-1], labels[1:].clamp(min=0), reduction="none")
    return torch.where(labels[1:] >= 0, loss, torch.nan)


def test_packed_per_token_losses_equal_unpacked(llama_dir, tokenizer):
    model = load_model(llama_dir).eval()
    parts = samples(tokenizer, ("Name the capital of France.", "Paris."), ("2+2?", "Four."), ("中国的首都是哪里？", "北京。"))
    (row,) = pack(parts, cutoff_len=512)
    batch = PackedCollator(tokenizer.pad_token_id)([row])
    with torch.no_grad():
        packed = token_losses(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]).logits, batch["labels"][0])
        start = 0
        for sample in sorted(parts, key=lambda s: len(s.input_ids), reverse=True):  # pack() orders by length
            n = len(sample.input_ids)
            alone = token_losses(model(torch.tensor([sample.input_ids])).logits, torch.tensor(sample.labels))
            mine = packed[start : start + n - 1]
            trained = ~torch.isnan(alone)
            assert torch.equal(trained, ~torch.isnan(mine))
            assert torch.allclose(mine[trained], alone[trained], atol=1e-5)
            start += n
    assert batch["position_ids"][0].tolist() == [p for s in row["lengths"] for p in range(s)]


def test_a_sample_does_not_see_its_row_mate(llama_dir, tokenizer):
    model = load_model(llama_dir).eval()
    first, mate_a, mate_b = samples(tokenizer, ("Name the capital of France.", "Paris is the capital."), ("2+2?", "Four."), ("中国？", "北京。"))
    logits = []
    for mate in (mate_a, mate_b):
        row = {"input_ids": first.input_ids + mate.input_ids, "labels": first.labels + mate.labels, "lengths": [len(first.input_ids), len(mate.input_ids)]}
        batch = PackedCollator(tokenizer.pad_token_id)([row])
        with torch.no_grad():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]).logits
        logits.append(out[0, : len(first.input_ids)])
    assert torch.allclose(logits[0], logits[1], atol=1e-6)


def test_rows_are_filled_first_fit_and_nothing_is_lost():
    parts = [Sample([1] * n, [1] * n) for n in (7, 2, 5, 3, 6, 1)]
    rows = pack(parts, cutoff_len=8)
    assert [row["lengths"] for row in rows] == [[7, 1], [6, 2], [5, 3]]
    assert all(len(row["input_ids"]) <= 8 for row in rows)


def test_packed_training_runs_and_bloom_says_why_it_cannot(tmp_path, llama_dir, tokenizer, data_file):
    def config(model_dir):
        return validate_config(
            {
                "model": {"path": str(model_dir)},
                "data": {"path": str(data_file), "template": "alpaca", "cutoff_len": 256, "packing": True, "cache": False},
                "train": {"output_dir": str(tmp_path / f"{model_dir.name}-out"), "max_steps": 3, "per_device_train_batch_size": 2, "logging_steps": 1},
            }
        )

    result = train(config(llama_dir))
    assert result.final_loss == pytest.approx(result.final_loss) and result.final_loss > 0  # finite
    bloom = tmp_path / "bloom"
    build_model(tokenizer, bloom, arch="bloom", hidden_size=32, layers=1, heads=2)
    with pytest.raises(ConfigError, match="bloom derives positions from a 2D attention mask"):
        train(config(bloom))
