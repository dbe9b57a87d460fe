"""`lmtune tokenizer extend`: grow a tokenizer with tokens learned from a corpus (the vocabulary
extension route of Chinese-LLaMA), and the model's embeddings with it.

New tokens come from a BPE trained on the corpus itself (on characters, not bytes, so a token is
a real string such as a Chinese word), taken in merge order (most frequent first), skipping any
the base tokenizer already has as one token and any with ASCII in it (see new_tokens). They are added as ordinary tokens; the new embedding
rows start at the mean of the old ones, a neutral point that training then moves.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from lmtune.config import DataConfig
from lmtune.data.filters import conversation_text
from lmtune.data.load import load_data
from lmtune.errors import DataError, LmtuneError
from lmtune.model.load import load_model, load_tokenizer


@dataclass
class Extension:
    added: list[str]
    tokens_before: int
    tokens_after: int


def extend_vocabulary(base: str, corpus: list[str], add: int, out: Path) -> Extension:
    texts = corpus_texts(corpus)
    tokenizer = load_tokenizer(base)
    before = count_tokens(tokenizer, texts)
    added = helpful_tokens(tokenizer, texts, new_tokens(tokenizer, texts, add * 3), add)
    if not added:
        raise LmtuneError("no new token makes this corpus shorter: the tokenizer already covers it well; nothing written")
    model = load_model(base, "float32")
    old_rows = model.get_input_embeddings().weight.shape[0]
    tokenizer.add_tokens(added)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    _mean_init(model, old_rows)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return Extension(added, before, count_tokens(tokenizer, texts))


def corpus_texts(files: list[str]) -> list[str]:
    """Every record's text, from any data file lmtune reads (.txt files are text records)."""
    try:
        loaded = load_data(DataConfig(path=files, on_error="skip", cache=False))
    except DataError as exc:
        raise DataError(f"--corpus {' '.join(files)}: no text to learn tokens from ({exc})") from None
    return [conversation_text(conv) for conv in loaded.train]


def count_tokens(tokenizer, texts: list[str]) -> int:
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])


def new_tokens(tokenizer, texts: list[str], add: int) -> list[str]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    learner = Tokenizer(models.BPE(unk_token="[UNK]"))
    learner.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    learner.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=add * 4 + 1000, show_progress=False, special_tokens=["[UNK]"]))
    merged = [a + b for a, b in (merge.split(" ") if isinstance(merge, str) else merge for merge in _merges(learner))]
    # Added tokens are matched anywhere in the text, even inside words: an English "th" would cut
    # "other" apart. So only strings with no ASCII at all (Chinese words, say) are added.
    wanted = (t for t in dict.fromkeys(merged) if not any(c.isascii() for c in t))
    return [t for t in wanted if len(tokenizer.encode(t, add_special_tokens=False)) > 1][:add]


def helpful_tokens(tokenizer, texts: list[str], candidates: list[str], add: int, rounds: int = 10) -> list[str]:
    """Candidates in chunks, each kept only if the corpus gets shorter with it: an added token is
    matched greedily and can cut across merges the tokenizer already had."""
    sample = texts[:2000]
    kept, best = [], count_tokens(tokenizer, sample)
    size = max(1, len(candidates) // rounds)
    for start in range(0, len(candidates), size):
        trial = copy.deepcopy(tokenizer)
        trial.add_tokens(kept + candidates[start : start + size])
        count = count_tokens(trial, sample)
        if count < best:
            kept, best = kept + candidates[start : start + size], count
        if len(kept) >= add:
            break
    return kept[:add]


def _merges(learner) -> list:
    import json

    return json.loads(learner.to_str())["model"]["merges"]  # in the order they were learned


def _mean_init(model, old_rows: int) -> None:
    with torch.no_grad():
        for embedding in {id(e): e for e in (model.get_input_embeddings(), model.get_output_embeddings()) if e is not None}.values():
            weight = embedding.weight
            weight[old_rows:] = weight[:old_rows].mean(dim=0, keepdim=True)
