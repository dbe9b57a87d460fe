"""What the stages on TRL's trainers share: their datasets and callbacks, no model card, and the guard
that the reference model stays where it was."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import TrainerCallback

from lmtune.config import RunConfig
from lmtune.data.prepare import Prepared
from lmtune.train.callbacks import MetricsFile, ProgressLines
from lmtune.train.checkpoints import MarkComplete, step_of
from lmtune.train.guards import Guards, TrainingStopped

log = logging.getLogger(__name__)


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
