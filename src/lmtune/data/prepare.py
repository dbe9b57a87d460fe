"""Training data ready for the Trainer: load, filter, mix, split, encode, and cache the result.

The cache key covers everything the samples depend on: the records (data.fingerprints: each
file's content hash, the data settings), the template, the tokenizer and cutoff_len. A second run with the same inputs
starts training at once; change any of them and the data is encoded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmtune.config import DataConfig
from lmtune.data.encode import Encoder, Sample, adds_bos
from lmtune.data.fingerprints import READ_KEY_FILE, digest, read_key
from lmtune.data.load import LoadReport, ReadData, gc_paused, load_data
from lmtune.data.pref import PAIR_STAGES, PROMPT_STAGES, TRL_STAGES, encode_labeled, encode_pairs
from lmtune.data.pretrain import document_samples
from lmtune.data.prompts import encode_prompts

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    train: list[Sample]
    dev: list[Sample]
    report: LoadReport
    from_cache: bool = False
    conversations: int | None = None  # SFT training conversations the samples came from, when encoded now

    @property
    def truncated(self) -> int:
        return sum(s.truncated for s in self.train + self.dev)


def prepare(data: DataConfig, encoder: Encoder, seed: int, read: ReadData | None = None) -> Prepared:
    """`read`: the records, when read_data read them already."""
    if data.stage in TRL_STAGES:  # not cached: the cache holds SFT samples, and these encode in seconds
        loaded = load_data(data, encoder.tokenizer, seed, read)
        encode = encode_pairs if data.stage in PAIR_STAGES else encode_prompts if data.stage in PROMPT_STAGES else encode_labeled
        return Prepared(encode(loaded.train, encoder), encode(loaded.dev, encoder), loaded.report)
    records = read_key(data, seed) if data.cache else None
    folder = Path(data.cache_dir) / "encoded" / cache_key(records, encoder) if records else None
    if folder and (cached := _read_cache(folder)):
        log.info("data: encoded samples from the cache %s", folder)
        return cached
    with gc_paused():
        loaded = load_data(data, encoder.tokenizer, seed, read)
        encode = document_samples if data.stage == "pt" else encode_all
        prepared = Prepared(encode(loaded.train, encoder), encode(loaded.dev, encoder), loaded.report,
                            conversations=len(loaded.train) if data.stage == "sft" else None)
    if folder:
        _write_cache(folder, prepared, records)
    return prepared


def encode_all(convs, encoder: Encoder) -> list[Sample]:
    return list(encoder.encode_stream(convs))


# ---------------------------------------------------------------- cache


def cache_key(records: str, encoder: Encoder) -> str:
    """`records`: the read_key of the records encoded."""
    return digest({
        "read": records,
        "template": encoder.template.fingerprint(),
        "tokenizer": _tokenizer_digest(encoder.tokenizer),
        "cutoff_len": encoder.cutoff_len,
        "answers": [encoder.train_on, encoder.rewritten_answers, encoder.train_reasoning],
    })


def _tokenizer_digest(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    special = json.dumps([type(tokenizer).__name__, tokenizer.bos_token_id, tokenizer.eos_token_id, adds_bos(tokenizer)])
    return hashlib.blake2b((text + special).encode(), digest_size=16).hexdigest()


def _write_cache(folder: Path, prepared: Prepared, records_key: str) -> None:
    """Written to a temporary folder and renamed, so a killed run never leaves half a cache."""
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for split, samples in (("train", prepared.train), ("dev", prepared.dev)):
        lengths = np.array([len(s.input_ids) for s in samples], dtype=np.int64)
        np.savez(
            tmp / f"{split}.npz",
            input_ids=np.array([t for s in samples for t in s.input_ids], dtype=np.int64),
            labels=np.array([t for s in samples for t in s.labels], dtype=np.int64),
            lengths=lengths,
            truncated=np.array([s.truncated for s in samples], dtype=bool),
        )
    (tmp / READ_KEY_FILE).write_text(records_key, encoding="utf-8")
    (tmp / "report.json").write_text(json.dumps(prepared.report.to_dict(), ensure_ascii=False), encoding="utf-8")
    if folder.exists():  # another run finished the same cache first
        shutil.rmtree(tmp)
    else:
        tmp.rename(folder)


def _read_cache(folder: Path) -> Prepared | None:
    if not (folder / "report.json").is_file():
        return None
    splits = {}
    for split in ("train", "dev"):
        arrays = np.load(folder / f"{split}.npz")
        bounds = np.concatenate([[0], np.cumsum(arrays["lengths"])])
        ids, labels = arrays["input_ids"].tolist(), arrays["labels"].tolist()
        splits[split] = [
            Sample(ids[a:b], labels[a:b], bool(t)) for a, b, t in zip(bounds[:-1], bounds[1:], arrays["truncated"])
        ]
    report = LoadReport.from_dict(json.loads((folder / "report.json").read_text(encoding="utf-8")))
    return Prepared(splits["train"], splits["dev"], report, from_cache=True)
