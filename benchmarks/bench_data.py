"""Whole-process data encoding: `lmtune data encode` on alpaca data in every file layout.

    .venv/bin/python benchmarks/bench_data.py [--records 50000] [--large] [--repeat 2]
                                              [--layouts json-line json-indented jsonl parquet]
                                              [--peer /tmp/lf-venv/bin/llamafactory-cli] [--work DIR]
                                              [--tokenizer SmolLM2-135M-Instruct.Q4_1.gguf]

Writes the same synthetic bilingual alpaca records as a one-line .json array, an indented .json
array, .jsonl and .parquet, then times the whole `lmtune data encode --template alpaca
--cutoff-len 512` process on each from outside: wall clock and CPU time (user + system) from
interpreter start through imports, tokenizer load, reading, encoding and writing the output. The
machine may be shared: CPU time moves far less with other load than wall time. Every layout must
give byte-identical output. `--large` adds 500,000 records. `--peer` runs LLaMA-Factory's SFT
preprocessing of the one-line .json file with the same tokenizer and template (see run_peer) and
prints the ratio; benchmarks/RESULTS.md says how its virtual environment was made.

The tokenizer is a 32,000-token byte-level BPE trained here (src/lmtune/tiny.py) on text drawn
like the records: a Zipf-distributed lexicon of 30,000 English-like pseudo-words and 20,000
Chinese words of 1-3 characters from 3,500 common CJK code points, so its merges and its
per-word cache see a realistic spread of words (a vocabulary of a few hundred tokens would make
tokenization unrealistically cheap or dear). With `--work DIR` the data files, the tokenizer and
the peer's model folder are kept and reused. `--tokenizer` uses a real model's tokenizer instead
(a folder or a .gguf file, dequantized once by lmtune; issue 23: SmolLM2's 49,152-token BPE).
Results go in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LAYOUTS = ("json-line", "json-indented", "jsonl", "parquet")
VOCAB = 32_000
ONSETS = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr", "pl", "ch", "th", "sh"]
VOWELS = ["a", "e", "i", "o", "u", "ea", "ou", "io", "ai"]
CODAS = ["", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "st", "ck"]


# ---------------------------------------------------------------- synthetic data


class Text:
    """Sentences from two Zipf-distributed lexicons, drawn in bulk with numpy."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        lexicon_rng = np.random.default_rng(1234)  # the same words for every seed: data and tokenizer share them
        # Shorter words are the more frequent ones, as in real text.
        self.en = sorted(_english_words(lexicon_rng, 30_000), key=len)
        self.zh = sorted(_chinese_words(lexicon_rng, 20_000), key=len)

    def sentences(self, lengths: np.ndarray, chinese: np.ndarray) -> list[str]:
        en = self._draw(self.en, int(lengths[~chinese].sum()))
        zh = self._draw(self.zh, int(lengths[chinese].sum()))
        out, at = [], {False: 0, True: 0}
        for length, is_zh in zip(lengths.tolist(), chinese.tolist()):
            words = (zh if is_zh else en)[at[is_zh] : at[is_zh] + length]
            at[is_zh] += length
            out.append(_zh_sentence(words) if is_zh else _en_sentence(words))
        return out

    def _draw(self, lexicon: list[str], count: int) -> list[str]:
        ranks = np.arange(1, len(lexicon) + 1)
        cumulative = np.cumsum(1.0 / ranks**1.07)
        picks = np.searchsorted(cumulative, self.rng.random(count) * cumulative[-1])
        return [lexicon[i] for i in picks.tolist()]


def _english_words(rng: np.random.Generator, count: int) -> list[str]:
    words: dict[str, None] = {}
    while len(words) < count:
        syllables = int(rng.choice([1, 1, 1, 2, 2, 3]))
        words["".join(ONSETS[rng.integers(len(ONSETS))] + VOWELS[rng.integers(len(VOWELS))] + CODAS[rng.integers(len(CODAS))]
                      for _ in range(syllables))] = None
    return list(words)


def _chinese_words(rng: np.random.Generator, count: int) -> list[str]:
    chars = [chr(0x4E00 + int(i)) for i in rng.permutation(0x9FA5 - 0x4E00)[:3500]]
    weights = 1.0 / np.arange(1, len(chars) + 1)
    weights /= weights.sum()
    words: dict[str, None] = {}
    while len(words) < count:
        size = int(rng.choice([1, 2, 2, 2, 3]))
        words["".join(chars[i] for i in rng.choice(len(chars), size=size, p=weights))] = None
    return list(words)


def _en_sentence(words: list[str]) -> str:
    text = " ".join(w + "," if i % 9 == 8 and i < len(words) - 1 else w for i, w in enumerate(words))
    return text[:1].upper() + text[1:] + "."


def _zh_sentence(words: list[str]) -> str:
    return "".join(w + "，" if i % 7 == 6 and i < len(words) - 1 else w for i, w in enumerate(words)) + "。"


def alpaca_records(n: int, seed: int = 0) -> list[dict]:
    """Instruction 5-29 words, an input in 30% of records, long-tailed answers (lognormal)."""
    text = Text(seed)
    rng = text.rng
    chinese = rng.random(n) < 0.5  # a record is all Chinese or all English
    has_input = rng.random(n) < 0.3
    instructions = text.sentences(rng.integers(5, 30, n), chinese)
    inputs = text.sentences(rng.integers(5, 40, n), chinese)
    outputs = text.sentences(rng.lognormal(3.8, 0.8, n).astype(np.int64) + 3, chinese)
    return [
        {"instruction": q, "input": c if keep else "", "output": a}
        for q, c, a, keep in zip(instructions, inputs, outputs, has_input.tolist())
    ]


def write_layouts(n: int, folder: Path, layouts: list[str]) -> dict[str, Path]:
    """The files of n records in each layout; ones already there (--work) are reused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = {
        "json-line": folder / "alpaca-line.json", "json-indented": folder / "alpaca-indented.json",
        "jsonl": folder / "alpaca.jsonl", "parquet": folder / "alpaca.parquet",
    }
    missing = [layout for layout in layouts if not paths[layout].exists()]
    records = alpaca_records(n) if missing else []
    for layout in missing:
        path = paths[layout]
        if layout == "parquet":
            pq.write_table(pa.Table.from_pylist(records), path)
        elif layout == "jsonl":
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        else:
            path.write_text(json.dumps(records, ensure_ascii=False, indent=2 if layout == "json-indented" else None), encoding="utf-8")
    return {layout: paths[layout] for layout in layouts}


def tokenizer_folder(work: Path, given: str | None = None) -> Path:
    if given:
        from lmtune.model.hub import resolve_model

        return resolve_model(given)[0]  # a .gguf is dequantized once
    folder = work / f"tokenizer-{VOCAB}"
    if not (folder / "tokenizer.json").is_file():
        from lmtune.tiny import train_tokenizer

        corpus = [value for r in alpaca_records(40_000, seed=1) for value in r.values() if value]
        train_tokenizer(corpus, folder, vocab_size=VOCAB)
    return folder


# ---------------------------------------------------------------- runs


def timed(command: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system, the process and its children) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def run_lmtune(data: Path, tokenizer: Path, out: Path) -> tuple[float, float]:
    lmtune = Path(sys.executable).parent / "lmtune"
    return timed([str(lmtune), "data", "encode", "--data", str(data), "--template", "alpaca",
                  "--tokenizer", str(tokenizer), "--cutoff-len", "512", "--out", str(out)])


def peer_model(work: Path, tokenizer: Path) -> Path:
    """A folder LLaMA-Factory accepts as a model: the tokenizer and a tiny Llama config."""
    folder = work / f"peer-model-{tokenizer.name}"
    if not (folder / "config.json").is_file():
        from lmtune.model.load import load_tokenizer
        from lmtune.tiny import build_model

        build_model(load_tokenizer(str(tokenizer)), folder, hidden_size=64, layers=1)
    return folder


def run_peer(cli: str, data: Path, model: Path, work: Path, attempt: int) -> float:
    """LLaMA-Factory's SFT preprocessing of the same file: with `tokenized_path` set and not yet
    there, it tokenizes, saves the dataset and exits before loading the model. A fresh datasets
    cache each time, so no run reuses an earlier one's Arrow files."""
    run_dir = work / f"peer-run-{data.stem}-{attempt}"
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    run_dir.mkdir(parents=True)
    (run_dir / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": str(data)}}))
    config = {
        "model_name_or_path": str(model), "stage": "sft", "do_train": False, "finetuning_type": "lora",
        "dataset": "bench", "dataset_dir": str(run_dir), "template": "alpaca", "cutoff_len": 512,
        "overwrite_cache": True, "tokenized_path": str(run_dir / "tokenized"),
        "output_dir": str(run_dir / "out"), "report_to": "none",
    }
    # YAML (each value as JSON, which YAML reads): LLaMA-Factory 0.9.5 fails on a .json config.
    (run_dir / "config.yaml").write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in config.items()))
    env = {**os.environ, "HF_DATASETS_CACHE": str(run_dir / "hf-cache"), "HF_HUB_OFFLINE": "1",
           "DISABLE_VERSION_CHECK": "1", "CUDA_VISIBLE_DEVICES": ""}
    seconds = timed([cli, "train", str(run_dir / "config.yaml")], env)
    if not (run_dir / "tokenized").is_dir():
        sys.exit(f"{cli} finished without writing {run_dir / 'tokenized'}: it did not preprocess")
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    return seconds


def digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=8).hexdigest()


def bench(n: int, work: Path, layouts: list[str], repeat: int, peer: str | None, given: str | None) -> None:
    folder = work / f"records-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    files = write_layouts(n, folder, layouts)
    tokenizer = tokenizer_folder(work, given)
    print(f"\n{n:,} records; tokenizer: {given or f'{VOCAB:,}-token byte-level BPE'}; {repeat} run(s) each")
    print("| what | file MB | wall s, each run | CPU s (user + sys), each run | records/s (best wall) |")
    print("|---|---|---|---|---|")
    outputs, best = {}, {}
    for layout, path in files.items():
        out = folder / f"encoded-{layout}.jsonl"
        runs = [run_lmtune(path, tokenizer, out) for _ in range(repeat)]
        outputs[layout] = digest(out)
        out.unlink()
        best[layout] = _row(f"lmtune, {layout}", path, n, runs)
    if len(set(outputs.values())) > 1:
        sys.exit(f"the layouts gave different encodings: {outputs}")
    if peer and "json-line" in files:
        model = peer_model(work, tokenizer)
        runs = [run_peer(peer, files["json-line"], model, work, i) for i in range(repeat)]
        lf = _row("LLaMA-Factory, json-line", files["json-line"], n, runs)
        print(f"lmtune is {lf / best['json-line']:.1f}x faster than LLaMA-Factory on the one-line .json (best wall times)")


def _row(name: str, path: Path, n: int, runs: list[tuple[float, float]]) -> float:
    walls = " / ".join(f"{wall:.1f}" for wall, _ in runs)
    cpus = " / ".join(f"{cpu:.1f}" for _, cpu in runs)
    best = min(wall for wall, _ in runs)
    print(f"| {name} | {path.stat().st_size / 1e6:.1f} | {walls} | {cpus} | {n / best:,.0f} |", flush=True)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, nargs="+", default=[50_000])
    parser.add_argument("--large", action="store_true", help="also 500,000 records")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--repeat", type=int, default=2, help="runs per layout (the machine is shared: noisy)")
    parser.add_argument("--peer", help="path to llamafactory-cli, to time LLaMA-Factory on the same file")
    parser.add_argument("--work", type=Path, help="keep data, tokenizer and outputs here (reused on the next run)")
    parser.add_argument("--tokenizer", help="a real model's tokenizer (folder or .gguf) instead of the trained BPE")
    args = parser.parse_args()
    sizes = args.records + ([500_000] if args.large else [])
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        for n in sizes:
            bench(n, work, args.layouts, args.repeat, args.peer, args.tokenizer)


if __name__ == "__main__":
    main()
