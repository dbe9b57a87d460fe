"""Preference training on TRL's trainers, fed samples already rendered by lmtune's template, with
lmtune's callbacks: data.stage dpo (DPOTrainer) and kto (KTOTrainer), each with one more guard: the
reference must not move; rm (RewardTrainer: a one-score head on the same base, trained to score
chosen above rejected); and pref.loss orpo / simpo (no reference: TRL's experimental ORPOTrainer /
CPOTrainer, in lmtune.train.reference_free). GRPO is built in lmtune.train.grpo."""

from __future__ import annotations

from trl import DPOTrainer, KTOTrainer, RewardTrainer

from lmtune.config import RunConfig
from lmtune.data.pref import LabeledSample, PairSample
from lmtune.data.prepare import Prepared
from lmtune.train.arguments import REFERENCE_FREE, trl_arguments
from lmtune.train.trl_common import NoModelCard, ReferenceGuard, callbacks, datasets, finished


def build_pref_trainer(config: RunConfig, model, tokenizer, data: Prepared, checkpoint=None, main: bool = True):
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


