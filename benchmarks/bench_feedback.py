"""How long a mistake costs: `lmtune train` refusing a bad config key, a bad value, a bad data line
and a bad flag, each through the console script in a fresh process (median of --repeat runs), with
the machine's CPU model and vector flags. Start-up of `lmtune --help` and `import torch` alongside.

    .venv/bin/python benchmarks/bench_feedback.py [--repeat 5]

The suite's figure is measured from a fresh clone: git clone … && cd … && time make test
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LMTUNE = str(Path(sys.executable).with_name("lmtune"))
RECORD = {"instruction": "Name the capital of France.", "output": "Paris."}


def machine() -> str:
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"Model name:\s*(.+)", text)
    flags = set(re.search(r"Flags:\s*(.+)", text).group(1).split()) if "Flags:" in text else set()
    vector = sorted(f for f in flags if f.startswith(("avx", "amx")))
    cores = re.search(r"^CPU\(s\):\s*(\d+)", text, re.M)
    return f"{model.group(1).strip() if model else '?'}, {cores.group(1) if cores else '?'} CPUs, {' '.join(vector) or 'no AVX'}"


def timed(command: list[str], cwd: Path, repeat: int) -> tuple[float, int, str]:
    seconds, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result.returncode, (result.stderr.strip().splitlines() or [""])[-1][:90]


def project(folder: Path) -> None:
    from lmtune.tiny import build_model, train_tokenizer

    tokenizer = train_tokenizer(["Name the capital of France. Paris."] * 20, folder / "model", vocab_size=300)
    build_model(tokenizer, folder / "model")
    (folder / "train.json").write_text(json.dumps([RECORD] * 4), encoding="utf-8")
    (folder / "bad.jsonl").write_text(json.dumps(RECORD) + '\n{"instruction": "oops", "output": \n', encoding="utf-8")
    (folder / "run.yaml").write_text("model: {path: model}\ndata: {path: train.json}\ntrain: {output_dir: out, max_steps: 1}\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cases = {
        "bad config key (train.learning_rat)": ["train", "run.yaml", "train.learning_rat=1e-4"],
        "bad value (train.learning_rate=fast)": ["train", "run.yaml", "train.learning_rate=fast"],
        "bad data line (malformed JSON, line 2)": ["train", "run.yaml", "data.path=bad.jsonl"],
        "bad flag (--no-such-flag)": ["train", "run.yaml", "--no-such-flag"],
        "lmtune --help": ["--help"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        project(folder)
        print(f"machine: {machine()}\n")
        print("| case | median s | exit | last line |\n|---|---|---|---|")
        for name, argv in cases.items():
            seconds, code, line = timed([LMTUNE, *argv], folder, args.repeat)
            print(f"| {name} | {seconds:.2f} | {code} | {line.replace('|', '/')} |")
        seconds, code, _ = timed([sys.executable, "-c", "import torch"], folder, args.repeat)
        print(f"| python -c 'import torch' (for scale) | {seconds:.2f} | {code} | |")


if __name__ == "__main__":
    main()
