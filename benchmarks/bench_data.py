"""Encoding throughput: 50,000 synthetic alpaca records, one at a time vs batched.

    .venv/bin/python benchmarks/bench_data.py [--records 50000]

Prints records/s and tokens/s for `Encoder.encode` called per record (the naive loop) and for
the batched path training uses (`lmtune.data.prepare.encode_all`), and checks both give the
same samples. Results go in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

from lmtune.data.encode import Encoder
from lmtune.data.prepare import encode_all
from lmtune.data.records import ASSISTANT, USER, Conversation, Turn
from lmtune.model.load import load_tokenizer
from lmtune.templates.template import get_template
from lmtune.tiny import train_tokenizer

EN = "the model learns to answer questions about data training tokens language people city water time".split()
ZH = list("模型学习回答问题数据训练语言城市时间天气中国北京上海工作生活学生老师")


def sentence(rng: random.Random, words: int) -> str:
    if rng.random() < 0.5:
        return " ".join(rng.choice(EN) for _ in range(words)).capitalize() + "."
    return "".join(rng.choice(ZH) for _ in range(words * 2)) + "。"


def synthetic(n: int, seed: int = 0) -> list[Conversation]:
    rng = random.Random(seed)
    convs = []
    for _ in range(n):
        length = int(rng.lognormvariate(3.0, 0.8)) + 3  # long-tailed answers, as in real SFT data
        context = sentence(rng, rng.randint(5, 30)) if rng.random() < 0.3 else ""
        convs.append(Conversation([Turn(USER, sentence(rng, rng.randint(4, 20)), input=context), Turn(ASSISTANT, sentence(rng, length))]))
    return convs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=50_000)
    args = parser.parse_args()
    convs = synthetic(args.records)
    with tempfile.TemporaryDirectory() as folder:
        corpus = [t.content for c in synthetic(5000, seed=1) for t in c.turns]
        train_tokenizer(corpus, folder, vocab_size=4000)
        tokenizer = load_tokenizer(folder)
    encoder = Encoder(tokenizer, get_template("alpaca"), cutoff_len=1024)

    start = time.perf_counter()
    naive = [encoder.encode(c) for c in convs]
    naive_s = time.perf_counter() - start
    start = time.perf_counter()
    batched = encode_all(convs, encoder)
    batched_s = time.perf_counter() - start

    assert [s.input_ids for s in naive] == [s.input_ids for s in batched]
    assert [s.labels for s in naive] == [s.labels for s in batched]
    tokens = sum(len(s.input_ids) for s in batched)
    print(f"{len(convs)} records, {tokens} tokens, {sum(s.truncated for s in batched)} truncated")
    for name, seconds in (("one at a time", naive_s), ("batched", batched_s)):
        print(f"{name:>14}: {seconds:6.2f} s  {len(convs) / seconds:9.0f} records/s  {tokens / seconds:10.0f} tokens/s")
    print(f"speed-up: {naive_s / batched_s:.1f}x")


if __name__ == "__main__":
    main()
