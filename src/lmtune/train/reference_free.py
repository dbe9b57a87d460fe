"""ORPO and SimPO (data.stage: dpo with pref.loss orpo | simpo): preference losses with no reference
model, on TRL 1.16's experimental ORPOTrainer and CPOTrainer (loss_type simpo). Those tokenize text
pairs row by row; here their row hook takes lmtune's pairs as they are, already rendered by the
template and cut to cutoff_len, so they train on the same tokens as DPO would."""

from __future__ import annotations

import warnings

with warnings.catch_warnings():  # TRL's notice that trl.experimental may change: the README says so once
    warnings.simplefilter("ignore")
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    from trl.experimental.utils import DPODataCollatorWithPadding

from lmtune.train.trl_common import NoModelCard

IGNORE_INDEX = -100


def trainer_parts(loss: str):
    """(settings, trainer class) for pref.loss orpo or simpo; both batch with DPODataCollatorWithPadding."""
    return (ORPOConfig, PairORPOTrainer) if loss == "orpo" else (CPOConfig, PairCPOTrainer)


def tokenized_row(feature: dict, model=None) -> dict:
    """A PairSample row in the shape their tokenize_row returns: prompt + answer per side, the prompt masked."""
    prompt = feature["prompt_ids"]
    row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for side in ("chosen", "rejected"):
        answer = feature[f"{side}_ids"]
        row[f"{side}_input_ids"] = prompt + answer
        row[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
        row[f"{side}_labels"] = [IGNORE_INDEX] * len(prompt) + answer
    return row


class PairORPOTrainer(NoModelCard, ORPOTrainer):
    def tokenize_row(self, feature, model=None):
        return tokenized_row(feature)


class PairCPOTrainer(NoModelCard, CPOTrainer):
    def tokenize_row(self, feature, model=None):
        return tokenized_row(feature)
