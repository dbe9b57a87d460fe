"""Padding-free packing: several samples share one row, and attention never crosses them.

Rows are filled first-fit by decreasing length up to cutoff_len. Each row carries the lengths of
its samples; the collator gives position ids that restart per sample, masks the first token of
each sample from the loss (no sample predicts its neighbour's first token), and builds a
block-diagonal causal mask. With flash-attention the model takes sample boundaries from the
position ids alone (varlen kernels), so no mask is built there.
"""

from __future__ import annotations

import torch

from lmtune.data.encode import IGNORE_INDEX, Sample, check_some_label
from lmtune.errors import ConfigError

# Models whose attention takes its positions from a 2D mask (ALiBi) cannot take a block mask.
NO_BLOCK_MASK = ("bloom", "falcon", "mpt")


def pack(samples: list[Sample], cutoff_len: int) -> list[dict]:
    """Rows of {"input_ids", "labels", "lengths"}, first-fit by decreasing length."""
    rows: list[list[Sample]] = []
    room: list[int] = []
    for sample in sorted(samples, key=lambda s: len(s.input_ids), reverse=True):
        n = len(sample.input_ids)
        slot = next((i for i, free in enumerate(room) if free >= n), None)
        if slot is None:
            rows.append([sample])
            room.append(cutoff_len - n)
        else:
            rows[slot].append(sample)
            room[slot] -= n
    return [_row(row) for row in rows]


def _row(samples: list[Sample]) -> dict:
    input_ids, labels = [], []
    for sample in samples:
        input_ids += sample.input_ids
        labels += [IGNORE_INDEX] + sample.labels[1:]  # the first token is never a target of its own sample
    return {"input_ids": input_ids, "labels": labels, "lengths": [len(s.input_ids) for s in samples]}


def check_packing_supported(model) -> None:
    if model.config.model_type in NO_BLOCK_MASK and not uses_flash_attention(model):
        raise ConfigError(
            f"data.packing: {model.config.model_type} derives positions from a 2D attention mask (ALiBi), so packed "
            "samples would see each other; train it without packing, or with flash-attention on a GPU"
        )


def uses_flash_attention(model) -> bool:
    return "flash" in str(getattr(model.config, "_attn_implementation", ""))


class PackedCollator:
    def __init__(self, pad_id: int, block_mask: bool = True, dtype: torch.dtype = torch.float32):
        self.pad_id, self.block_mask, self.dtype = pad_id, block_mask, dtype
        self.tokens = 0  # real (non-padding) tokens collated so far, for tokens/s
        self.slots = 0  # every position collated, padding included
        self.samples = 0  # samples (not rows) collated so far

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        self.tokens += sum(len(r["input_ids"]) for r in rows)
        self.samples += sum(len(r["lengths"]) for r in rows)
        batch = {"input_ids": [], "labels": [], "position_ids": []}
        masks = []
        for row in rows:
            fill = width - len(row["input_ids"])
            lengths = row["lengths"] + ([fill] if fill else [])  # padding forms a block of its own
            batch["input_ids"].append(row["input_ids"] + [self.pad_id] * fill)
            batch["labels"].append(row["labels"] + [IGNORE_INDEX] * fill)
            batch["position_ids"].append([p for n in lengths for p in range(n)])
            masks.append(block_causal_mask(lengths, self.dtype))
        out = {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}
        self.slots += out["input_ids"].numel()
        if self.block_mask:
            out["attention_mask"] = torch.stack(masks)[:, None]  # (batch, 1, length, length), additive
        return check_some_label(out)


def block_causal_mask(lengths: list[int], dtype: torch.dtype) -> torch.Tensor:
    """Additive mask: 0 where a token may attend (earlier tokens of its own sample), -inf elsewhere."""
    total = sum(lengths)
    blocked = torch.finfo(dtype).min
    mask = torch.full((total, total), blocked, dtype=dtype)
    start = 0
    for n in lengths:
        mask[start : start + n, start : start + n] = torch.triu(torch.full((n, n), blocked, dtype=dtype), diagonal=1)
        start += n
    return mask
