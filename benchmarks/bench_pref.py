"""DPO with LoRA on a small random Llama (hidden 256, 4 layers): pairs/s and peak memory, with the
reference log-probs from the base with the adapter switched off against a second model copy.

    .venv/bin/python benchmarks/bench_pref.py [--pairs 256] [--steps 20] [--batch 8]

Each variant runs in a process of its own, so its peak resident memory (ru_maxrss) is its own.
Synthetic pairs: random token prompts of 64-128 tokens and answers of 32-64, fed to lmtune's
PairDPOTrainer as prompt_ids/chosen_ids/rejected_ids. Results go in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_variant(variant: str, pairs: int, steps: int, batch: int) -> dict:
    import copy

    import torch
    from datasets import Dataset
    from trl import DPOConfig
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from lmtune.config import LoraConfig
    from lmtune.model.adapters import attach_lora
    from lmtune.model.load import load_model, load_tokenizer
    from lmtune.tiny import build_model, train_tokenizer
    from lmtune.train.pref import CountingCollator, PairDPOTrainer

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp())
    train_tokenizer([f"word{i} " * 3 for i in range(2000)], work / "tok", vocab_size=2000)
    tokenizer = load_tokenizer(work / "tok")
    build_model(tokenizer, work / "model", arch="llama", hidden_size=256, layers=4, heads=4)
    base = load_model(work / "model", "float32")
    reference = copy.deepcopy(base).eval() if variant == "second-copy" else None
    model = attach_lora(base, LoraConfig())
    rng = random.Random(0)
    ids = lambda lo, hi: [rng.randrange(3, len(tokenizer)) for _ in range(rng.randint(lo, hi))]
    rows = [{"prompt_ids": ids(64, 128), "chosen_ids": ids(32, 64), "rejected_ids": ids(32, 64)} for _ in range(pairs)]
    args = DPOConfig(output_dir=str(work / "out"), max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-4,
                     report_to="none", use_cpu=not torch.cuda.is_available(), bf16=False, gradient_checkpointing=False,
                     max_length=None, remove_unused_columns=False, disable_tqdm=True, logging_steps=steps, save_strategy="no")
    collator = CountingCollator(DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id))
    trainer = PairDPOTrainer(model=model, ref_model=reference, args=args, data_collator=collator,
                             train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    if "ref" in trainer.model.peft_config:  # as lmtune does for a new adapter: the base is the reference
        trainer.model.delete_adapter("ref")
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"variant": variant, "pairs_per_second": round(steps * batch / seconds, 2), "seconds": round(seconds, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.variant:
        print(json.dumps(run_variant(options.variant, options.pairs, options.steps, options.batch)))
        return
    for variant in ("disabled-adapter", "second-copy"):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--pairs", str(options.pairs),
                              "--steps", str(options.steps), "--batch", str(options.batch)],
                             capture_output=True, text=True, check=True)
        print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
