"""Preference training (data.stage: dpo) on TRL's DPOTrainer, fed pairs already rendered by
lmtune's template, with lmtune's callbacks and one more guard: the reference must not move."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import DPOTrainer

from lmtune.config import RunConfig
from lmtune.data.prepare import Prepared
from lmtune.errors import ConfigError
from lmtune.train.callbacks import MetricsFile, ProgressLines
from lmtune.train.checkpoints import MarkComplete, step_of
from lmtune.train.guards import Guards, TrainingStopped

log = logging.getLogger(__name__)


def build_pref_trainer(config: RunConfig, model, tokenizer, data: Prepared, checkpoint=None, main: bool = True):
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    try:
        args = DPOConfig(**_arguments(config, bool(data.dev)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"train: {' '.join(str(exc).split())}") from exc
    collator = CountingCollator(DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id))
    trainer = PairDPOTrainer(
        model=model,
        ref_model=None,  # LoRA: the base, adapter switched off; full/freeze: TRL loads the base again, frozen
        args=args,
        data_collator=collator,
        train_dataset=Dataset.from_list([s.row() for s in data.train]),
        eval_dataset=Dataset.from_list([s.row() for s in data.dev]) if data.dev else None,
        processing_class=tokenizer,
        callbacks=[
            MarkComplete(),
            Guards("fp16" if args.fp16 else "bf16" if args.bf16 else None, zero_loss_is_broken=False),
            guard := ReferenceGuard(),
            *([MetricsFile(Path(config.train.output_dir), collator, step_of(checkpoint) if checkpoint else 0),
               ProgressLines(log.info)] if main else []),
        ],
    )
    _base_as_reference(trainer.model, config)
    guard.trainer = trainer
    trainer.remove_callback(PrinterCallback)
    return trainer


def _arguments(config: RunConfig, has_dev: bool) -> dict:
    args = config.train.training_arguments()
    pref = config.pref
    args.setdefault("remove_unused_columns", False)
    args.setdefault("disable_tqdm", True)  # ProgressLines reports instead
    args.setdefault("use_cpu", not torch.cuda.is_available())
    args.setdefault("logging_nan_inf_filter", False)
    # TRL turns checkpointing and bf16 on by default; lmtune keeps SFT's defaults (off; bf16 on GPUs that have it).
    args.setdefault("gradient_checkpointing", bool(args.get("activation_checkpointing")))
    gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported() and config.model.dtype in ("auto", "bfloat16")
    args.setdefault("bf16", gpu_bf16)
    args.setdefault("fp16", torch.cuda.is_available() and config.model.dtype == "float16")
    if has_dev:
        args.setdefault("eval_strategy", "steps")
        args.setdefault("eval_steps", 0.1)
    # The answers' ends are kept by lmtune's own truncation (data.pref), so TRL must not cut again.
    args.update(max_length=None, beta=pref.beta, precompute_ref_log_probs=pref.reference == "precomputed")
    args["loss_type"] = [pref.loss] + (["sft"] if pref.ftx else [])
    args["loss_weights"] = [1.0, pref.ftx] if pref.ftx else None
    return args


def _base_as_reference(model, config: RunConfig) -> None:
    """TRL copies a PeftModel's adapter into a frozen "ref" adapter. A new adapter starts as a no-op,
    so the base with the adapter switched off is the same reference, without the copy (and without
    a ref/ folder saved beside the adapter); a continued adapter keeps its copy as the reference."""
    if "ref" in getattr(model, "peft_config", {}) and not config.finetune.adapter:
        model.delete_adapter("ref")


class PairDPOTrainer(DPOTrainer):
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        # The pairs arrive as prompt_ids/chosen_ids/rejected_ids rendered by lmtune's template; TRL's
        # own preparation would render text prompts through the tokenizer's chat template instead.
        return dataset


class CountingCollator:
    """TRL's collator, counting what MetricsFile reports: real tokens, positions, samples."""

    def __init__(self, inner):
        self.inner, self.tokens, self.slots, self.samples = inner, 0, 0, 0

    def __call__(self, examples):
        batch = self.inner(examples)
        self.tokens += int(batch["attention_mask"].sum())
        self.slots += batch["attention_mask"].numel()
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
                f"the reference model changed during training ({len(moved)} tensors, e.g. {moved[0]}): the DPO loss "
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
