"""What training every answer in its own context costs: samples and tokens of real multi-turn data
with `data.rewritten_answers: own_sample` (lmtune's default) against `context_only` (one sample
per conversation, the earlier answers the template rewrites left untrained), on the real Qwen3
and DeepSeek-V3/R1 tokenizers from ../shared/reference. LLaMA-Factory's glaive tool-call demos are real multi-turn,
multi-step conversations; examples/reasoning.jsonl is lmtune's bilingual reasoning example.

    .venv/bin/python benchmarks/bench_reasoning_contexts.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from bench_feedback import machine

from lmtune.config import DataConfig
from lmtune.data.encode import IGNORE_INDEX, Encoder
from lmtune.data.load import LoadReport, read_dataset
from lmtune.data.registry import dataset_parts, resolve_datasets
from lmtune.templates.template import get_template

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
SETS = [REFERENCE / "llamafactory-data" / "glaive_toolcall_en_demo.json", REFERENCE / "llamafactory-data" / "glaive_toolcall_zh_demo.json",
        ROOT / "examples" / "reasoning.jsonl"]


def qwen3_tokenizer():
    from transformers import AutoTokenizer

    folder = Path(tempfile.mkdtemp())
    shutil.copy(REFERENCE / "tokenizers" / "qwen3" / "tokenizer_config.json", folder)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(REFERENCE / "tokenizers" / "qwen2.5" / name, folder)
    return AutoTokenizer.from_pretrained(folder)


def deepseek_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(REFERENCE / "tokenizers" / "deepseek-v3")


def conversations(path: Path):
    data = DataConfig(path=[str(path)])
    return [c for spec in resolve_datasets(data) for part in dataset_parts(spec) for c in read_dataset(part, data, LoadReport())]


def measure(convs, tokenizer, template: str, rewritten: str) -> tuple[int, int, int]:
    samples = Encoder(tokenizer, get_template(template), 1 << 20, rewritten_answers=rewritten).encode_many(convs)
    trained = sum(sum(label != IGNORE_INDEX for label in s.labels) for s in samples)
    return len(samples), sum(len(s.input_ids) for s in samples), trained


def main() -> None:
    if not REFERENCE.is_dir():
        sys.exit(f"needs {REFERENCE}")
    tokenizers = {"qwen3": qwen3_tokenizer(), "deepseek-r1": deepseek_tokenizer()}
    print(f"machine: {machine()}\n")
    print("| data | template | conversations | samples (own / one) | tokens (own / one) | extra tokens | trained tokens (own / one) |")
    print("|---|---|---|---|---|---|---|")
    for path in SETS:
        convs = conversations(path)
        for template, tokenizer in tokenizers.items():
            if template == "deepseek-r1" and any(c.tools for c in convs):
                continue  # lmtune's deepseek templates render no tools
            own, one = (measure(convs, tokenizer, template, r) for r in ("own_sample", "context_only"))
            extra = 100 * (own[1] - one[1]) / one[1]
            print(f"| {path.name} | {template} | {len(convs)} | {own[0]} / {one[0]} | {own[1]} / {one[1]} | +{extra:.0f}% | {own[2]} / {one[2]} |")


if __name__ == "__main__":
    main()
