"""`lmtune kb add` end to end, as a user runs it: one process per ingest, today's code beside an older one.

    .venv/bin/python benchmarks/bench_kb_ingest.py [--backends auto,torch,onnx-int8,openvino-bf16] \
        [--baseline ../lmtune-old/src] [--corpus cmrc,mixed] [--repeats 2]

Each ingest is `python -m lmtune kb create` then `kb add` of a whole folder, timed from the start of
`kb add` to its exit, in a process of its own: backends measured in one process disturb each other
(one's thread pool still spinning while the next runs; onnx-int8 measured 45 chunks/s alone and 28
right after openvino in the same process). The ingest runs are interleaved across `--repeats`, so
a change in machine load hits every backend alike.

`--baseline` is the `src` folder of another lmtune checkout (say `git worktree add ../lmtune-old
<rev>`), run with this virtual environment and its own defaults: the "before" of a change.
Every run gets the same LMTUNE_HOME, so a backend's one-off ONNX export is made by a warm-up ingest
of one chunk before its first timed run, not timed. Each run also times a `kb add` of one chunk: what
any add pays before its first chunk (interpreter start, imports, model load); the rate beyond it is
the one a large ingest approaches.

Corpora: `cmrc` is CMRC 2018 dev (../shared/reference/retrieval/cmrc2018), one file per article, 848
Chinese passages; `mixed` is 300 paragraphs of ~450 characters, half pseudo-English, half common
Chinese characters (bench_kb's text), 100 per file. The chunk count is the one `kb add` reports.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_kb import CMRC, paragraph


def write_cmrc(folder: Path) -> None:
    for article in json.loads(CMRC.read_text(encoding="utf-8"))["data"]:
        text = "\n\n".join(p["context"] for p in article["paragraphs"])
        (folder / f"{article['id']}.txt").write_text(text, encoding="utf-8")


def write_mixed(folder: Path) -> None:
    rng = random.Random(0)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(5000)]
    for f in range(3):
        (folder / f"doc{f}.txt").write_text("\n\n".join(paragraph(rng, words) for _ in range(100)), encoding="utf-8")


def lmtune(args: list[str], home: Path, src: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "LMTUNE_HOME": str(home), "PYTHONPATH": src or os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", "lmtune", *args], env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"lmtune {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


def timed_add(label: str, backend: str | None, src: str | None, path: Path, home: Path) -> tuple[float, int]:
    """Seconds a `kb add` of `path` into a new knowledge base took, and the chunks it stored."""
    name = f"{label}-{time.monotonic_ns()}"
    lmtune(["kb", "create", name, *(["--backend", backend] if backend else [])], home, src)
    started = time.perf_counter()
    added = lmtune(["kb", "add", name, str(path)], home, src)
    seconds = time.perf_counter() - started
    return seconds, int(re.search(r"(\d+) chunk\(s\) added", added.stdout + added.stderr).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="auto,torch,onnx-int8,openvino-bf16")
    parser.add_argument("--baseline", help="The src folder of another lmtune checkout, ingested with its defaults.")
    parser.add_argument("--corpus", default="cmrc,mixed")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    runs = [(backend, backend, None) for backend in args.backends.split(",")]
    if args.baseline:
        runs.insert(0, ("baseline", None, str(Path(args.baseline).resolve())))
    with tempfile.TemporaryDirectory(prefix="bench-kb-ingest-") as tmp:
        home, warm = Path(tmp) / "home", set()
        one = Path(tmp) / "one.txt"
        one.write_text("A single chunk: what every kb add pays before its first chunk (start, imports, model load).\n")
        for corpus_name in args.corpus.split(","):
            corpus = Path(tmp) / corpus_name
            corpus.mkdir()
            {"cmrc": write_cmrc, "mixed": write_mixed}[corpus_name](corpus)
            for repeat in range(args.repeats):
                for label, backend, src in runs:
                    if label not in warm:  # the one-off export (and the OS file cache) outside the timed runs
                        timed_add(label, backend, src, one, home)
                        warm.add(label)
                    fixed, _ = timed_add(label, backend, src, one, home)
                    seconds, chunks = timed_add(label, backend, src, corpus, home)
                    print(f"{corpus_name:5s} {label:14s} run {repeat + 1}: {chunks} chunks in {seconds:6.1f} s = "
                          f"{chunks / seconds:5.1f} chunks/s; a one-chunk add {fixed:4.1f} s, beyond it "
                          f"{(chunks - 1) / (seconds - fixed):5.1f} chunks/s; load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
