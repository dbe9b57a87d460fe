"""Preference training on TRL's trainers, fed samples already rendered by lmtune's template, with
lmtune's callbacks: data.stage dpo (DPOTrainer) and kto (KTOTrainer), each with one more guard: the
reference must not move; rm (RewardTrainer: a one-score head on the same base, trained to score
chosen above rejected); grpo (GRPOTrainer, built in lmtune.train.grpo); and pref.loss orpo / simpo
(no reference: TRL's experimental ORPOTrainer / CPOTrainer, in lmtune.train.reference_free)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import DPOTrainer, KTOTrainer, RewardTrainer

from lmtune.config import RunConfig
from lmtune.data.pref import LabeledSample, PairSample
from lmtune.data.prepare import Prepared
from lmtune.errors import ConfigError
from lmtune.train.callbacks import MetricsFile, ProgressLines
from lmtune.train.checkpoints import MarkComplete, step_of
from lmtune.train.guards import Guards, TrainingStopped
from lmtune.train.run import trainer_arguments

log = logging.getLogger(__name__)

REFERENCE_FREE = ("orpo", "simpo")  # pref.loss values trained without a reference, in lmtune.train.reference_free


def build_pref_trainer(config: RunConfig, model, tokenizer, data: Prepared, checkpoint=None, main: bool = True):
    if config.data.stage == "grpo":
        from lmtune.train.grpo import build_grpo_trainer

        return build_grpo_trainer(config, model, tokenizer, data, checkpoint, main)
    if config.data.stage == "rm":
        from trl import RewardConfig
        from trl.trainer.reward_trainer import DataCollatorForPreference

        settings, trainer_class, row, extra = RewardConfig, PairRewardTrainer, PairSample.whole_row, {}
    elif config.data.stage == "kto":
        from trl import KTOConfig
        from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference as DataCollatorForPreference

        settings, trainer_class, row, extra = KTOConfig, LabeledKTOTrainer, LabeledSample.row, {"ref_model": None}
    elif config.pref.loss in REFERENCE_FREE:
        from lmtune.train.reference_free import DPODataCollatorWithPadding as DataCollatorForPreference
        from lmtune.train.reference_free import trainer_parts

        (settings, trainer_class), row, extra = trainer_parts(config.pref.loss), PairSample.row, {}
    else:
        from trl import DPOConfig
        from trl.trainer.dpo_trainer import DataCollatorForPreference

        # ref_model None: with LoRA the base, adapter switched off; full/freeze: TRL loads the base again, frozen
        settings, trainer_class, row, extra = DPOConfig, PairDPOTrainer, PairSample.row, {"ref_model": None}
    args = trl_arguments(settings, config, bool(data.dev))
    collator = CountingCollator(DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id))
    guard = ReferenceGuard() if "ref_model" in extra else None
    trainer = trainer_class(
        model=model,
        args=args,
        data_collator=collator,
        **datasets(data, row),
        processing_class=tokenizer,
        callbacks=callbacks(config, args, collator, checkpoint, main, [guard] if guard else []),
        **extra,
    )
    return finished(trainer, guard, config)


def datasets(data: Prepared, row) -> dict:
    """The train and dev samples as the Trainer's datasets, a row(sample) each."""
    from datasets import Dataset

    return {"train_dataset": Dataset.from_list([row(s) for s in data.train]),
            "eval_dataset": Dataset.from_list([row(s) for s in data.dev]) if data.dev else None}


def finished(trainer, guard, config: RunConfig):
    """The trainer with its reference settled for the guard, and without the Trainer's printer of raw
    log dicts (ProgressLines says the same readably)."""
    from transformers import PrinterCallback

    if guard:
        _base_as_reference(trainer.model, config)
        guard.trainer = trainer
    trainer.remove_callback(PrinterCallback)
    return trainer


def callbacks(config: RunConfig, args, collator, checkpoint, main: bool, extra: list) -> list:
    return [
        MarkComplete(),
        Guards("fp16" if args.fp16 else "bf16" if args.bf16 else None, zero_loss_is_broken=False),
        *extra,
        *([MetricsFile(Path(config.train.output_dir), collator, step_of(checkpoint) if checkpoint else 0),
           ProgressLines(log.info)] if main else []),
    ]


def trl_arguments(settings, config: RunConfig, has_dev: bool):
    """The stage's TRL config (DPOConfig, RewardConfig …) from lmtune's train section and settings."""
    try:
        return settings(**_arguments(config, has_dev))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"train: {' '.join(str(exc).split())}") from exc


def _arguments(config: RunConfig, has_dev: bool) -> dict:
    args = trainer_arguments(config, has_dev)
    # TRL turns gradient checkpointing on by default; lmtune keeps SFT's default (off).
    args.setdefault("gradient_checkpointing", bool(args.get("activation_checkpointing")))
    if config.data.stage == "grpo":
        return {**args, **_grpo_arguments(config)}
    # The answers' ends are kept by lmtune's own truncation (data.pref), so TRL must not cut again.
    args["max_length"] = None
    pref = config.pref
    if config.data.stage == "dpo" and pref.loss in REFERENCE_FREE:
        if pref.loss == "orpo" and pref.ftx:
            raise ConfigError("pref.ftx: ORPO's loss already holds an SFT term on the chosen answer; leave ftx at 0")
        # beta is ORPO's lambda, SimPO's beta; SimPO's SFT term (CPO's alpha) is pref.ftx
        args.update(beta=pref.beta, max_length=config.data.cutoff_len)  # max_length: only to quiet their warning
        return {**args, **({"loss_type": "simpo", "cpo_alpha": pref.ftx} if pref.loss == "simpo" else {})}
    if config.data.stage in ("dpo", "kto"):
        args.update(beta=pref.beta, precompute_ref_log_probs=pref.reference == "precomputed")
    if config.data.stage == "dpo":
        args["loss_type"] = [pref.loss] + (["sft"] if pref.ftx else [])
        args["loss_weights"] = [1.0, pref.ftx] if pref.ftx else None
    if config.data.stage == "kto":
        args.update(desirable_weight=pref.desirable_weight, undesirable_weight=pref.undesirable_weight)
        # KTO's KL estimate pairs each prompt with its batch neighbour's answer, fixed when the data is
        # prepared, so batches must come in order (lmtune's split has already shuffled the data).
        args["train_sampling_strategy"] = "sequential"
    return args


def _grpo_arguments(config: RunConfig) -> dict:
    grpo = config.grpo
    return {
        "num_generations": grpo.num_generations,
        "max_completion_length": grpo.max_new_tokens,  # prompts are cut to data.cutoff_len by lmtune
        "temperature": grpo.temperature,
        "beta": grpo.beta,
        "reward_weights": list(grpo.rewards.values()) if isinstance(grpo.rewards, dict) else None,
        "use_vllm": grpo.use_vllm,
    }


def _base_as_reference(model, config: RunConfig) -> None:
    """TRL copies a PeftModel's adapter into a frozen "ref" adapter. A new adapter starts as a no-op,
    so the base with the adapter switched off is the same reference, without the copy (and without
    a ref/ folder saved beside the adapter); a continued adapter keeps its copy as the reference."""
    if "ref" in getattr(model, "peft_config", {}) and not config.finetune.adapter:
        model.delete_adapter("ref")


class NoModelCard:
    """TRL writes a README.md model card into the output folder at each checkpoint; lmtune's run.yaml
    already says what the run was, and a README there would be mistaken for the user's own."""

    def create_model_card(self, *args, **kwargs) -> None:
        pass


class PairDPOTrainer(NoModelCard, DPOTrainer):
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        # The pairs arrive as prompt_ids/chosen_ids/rejected_ids rendered by lmtune's template; TRL's
        # own preparation would render text prompts through the tokenizer's chat template instead.
        return dataset


class LabeledKTOTrainer(NoModelCard, KTOTrainer):
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        # Rows arrive as prompt_ids/completion_ids/label rendered by lmtune's template; only TRL's
        # mismatched answers for the KL estimate are added: each batch's answers rotated by one.
        if not self.calculate_KL:
            return dataset

        def rotated(batch):
            return {"KL_completion_ids": batch["completion_ids"][-1:] + batch["completion_ids"][:-1]}

        return dataset.map(rotated, batched=True, batch_size=args.per_device_train_batch_size)


class PairRewardTrainer(NoModelCard, RewardTrainer):
    pass  # rows come as chosen_ids/rejected_ids, which RewardTrainer takes as they are


class CountingCollator:
    """TRL's collator, counting what MetricsFile reports: real tokens, positions, samples."""

    def __init__(self, inner):
        self.inner, self.tokens, self.slots, self.samples = inner, 0, 0, 0

    def __call__(self, examples):
        batch = self.inner(examples)
        # ORPO/CPO's collator pads each side apart, each with its prompt; the others batch whole sequences
        masks = [batch["attention_mask"]] if "attention_mask" in batch else [batch["chosen_attention_mask"], batch["rejected_attention_mask"]]
        self.tokens += sum(int(m.sum()) for m in masks)
        self.slots += sum(m.numel() for m in masks)
        self.samples += len(examples)
        return batch


class ReferenceGuard(TrainerCallback):
    """The reference scores every pair against the model being trained; if it learned too, the loss
    would measure nothing. Its tensors are summed at the start and compared at the end."""

    trainer = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.before = _fingerprint(self._reference())

    def on_train_end(self, args, state, control, **kwargs):
        after = _fingerprint(self._reference())
        moved = [name for name, value in self.before.items() if after.get(name) != value]
        if moved:
            raise TrainingStopped(
                f"the reference model changed during training ({len(moved)} tensors, e.g. {moved[0]}): the loss "
                "compared the model with itself. Train an adapter (finetune.method: lora) or set pref.reference: precomputed"
            )

    def _reference(self):
        if self.trainer.ref_model is not None:  # a second copy (full, freeze)
            return list(self.trainer.ref_model.named_parameters())
        # With an adapter, the frozen tensors are the reference (the base, and a continued adapter's copy);
        # with precomputed log-probs there is nothing left to move.
        return [(n, p) for n, p in self.trainer.model.named_parameters() if not p.requires_grad]


def _fingerprint(named) -> dict[str, float]:
    with torch.no_grad():
        return {name: float(p.detach().double().sum()) for name, p in named}
