"""The Trainer's arguments from the train section: TrainingArguments for SFT and pre-training, the
stage's TRL config (DPOConfig, KTOConfig, RewardConfig, GRPOConfig, ORPO's and CPO's) for the rest.
Every stage starts from the same defaults."""

from __future__ import annotations

import torch

from lmtune.config import RunConfig
from lmtune.errors import ConfigError
from lmtune.model.load import resolve_dtype

REFERENCE_FREE = ("orpo", "simpo")  # pref.loss values trained without a reference, in lmtune.train.reference_free


def trainer_arguments(config: RunConfig, has_dev: bool) -> dict:
    """The train section as TrainingArguments (or TRL's configs) take it, with lmtune's defaults for
    what the user left unset; every stage starts from these."""
    args = config.train.training_arguments()
    args.setdefault("remove_unused_columns", False)  # our collators need input_ids and labels as they are
    args.setdefault("disable_tqdm", True)  # ProgressLines reports instead
    args.setdefault("use_cpu", not torch.cuda.is_available())
    # HF logs a NaN/inf loss as the running average, which shows a broken run as loss 0; log it as it is
    # so the guards (and the user) see NaN.
    args.setdefault("logging_nan_inf_filter", False)
    if has_dev:
        args.setdefault("eval_strategy", "steps")
        args.setdefault("eval_steps", 0.1)  # ten evaluations per run, whatever its length
    # Mixed precision on GPUs only, in the model's half type; set either way, as TRL's configs would
    # otherwise turn bf16 on by themselves, also on CPU.
    half = resolve_dtype(config.model.dtype) if torch.cuda.is_available() else torch.float32
    args.setdefault("bf16", half == torch.bfloat16)
    args.setdefault("fp16", half == torch.float16)
    return args


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
