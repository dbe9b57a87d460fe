"""data.stage: pt — raw documents joined with EOS and cut into blocks, or packed per document;
no token of a long document is lost."""

import json

import pytest

from lmtune.config import validate_config
from lmtune.data.encode import Encoder
from lmtune.data.pretrain import blocks, document_samples
from lmtune.data.readers import read_conversations
from lmtune.errors import DataError
from lmtune.templates.template import get_template
from lmtune.train.run import train

LONG = "北京是中国的首都。Paris is the capital of France. " * 12
SHORT = "Two plus two is four."


@pytest.fixture
def documents(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in (LONG, SHORT, LONG[:40])), encoding="utf-8")
    return path


def test_documents_become_eos_joined_blocks_with_nothing_dropped(tokenizer, documents):
    encoder = Encoder(tokenizer, get_template("raw"), cutoff_len=32)
    convs = [conv for conv, _ in read_conversations(documents)]
    pieces = document_samples(convs, encoder)
    expected = []
    for conv in convs:
        expected += tokenizer.encode(conv.turns[0].content) + [tokenizer.eos_token_id]  # BOS as the tokenizer adds it
    assert len(expected) > 3 * 32  # the long document alone is several blocks
    assert [t for p in pieces for t in p.input_ids] == expected  # every token, in order, each document [BOS] … EOS
    assert all(len(p.input_ids) <= 32 and p.labels == p.input_ids and not p.truncated for p in pieces)
    rows = blocks(pieces, 32)
    assert [t for r in rows for t in r["input_ids"]] == expected
    assert all(len(r["input_ids"]) == 32 for r in rows[:-1]) and 0 < len(rows[-1]["input_ids"]) <= 32
    assert all(r["labels"] == r["input_ids"] for r in rows)


def test_a_conversation_in_pre_training_data_is_named(tokenizer, data_file):
    encoder = Encoder(tokenizer, get_template("raw"), cutoff_len=32)
    convs = [conv for conv, _ in read_conversations(data_file)]
    with pytest.raises(DataError, match=r"train\.json:\d+: data.stage: pt trains on raw text, and this record is a conversation"):
        document_samples(convs, encoder)


@pytest.mark.parametrize("packing", [False, True])
def test_continued_pre_training_runs_on_every_token(tmp_path, llama_dir, documents, packing):
    config = validate_config(
        {
            "model": {"path": str(llama_dir)},
            "data": {"path": str(documents), "stage": "pt", "template": "raw", "cutoff_len": 32, "packing": packing, "cache": False},
            "finetune": {"method": "full"},
            "train": {"output_dir": str(tmp_path / "out"), "max_steps": 4, "per_device_train_batch_size": 2, "logging_steps": 1},
        }
    )
    result = train(config)
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["loss"] > 0 for r in rows)
    assert rows[0]["padding_share"] < 0.5  # full 32-token blocks (or packed rows), not one padded row per document
