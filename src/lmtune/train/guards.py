"""Guards that stop a doomed run with a diagnosis instead of letting it burn hours.

Each raises TrainingStopped (an LmtuneError, so the CLI prints one line and exits 2):
- warm-up as long as the run: the learning rate never reaches its peak;
- learning rate 0 well before the end: a second scheduler (DeepSpeed's, a config's) fighting ours;
- loss NaN/inf, or exactly 0, for several logged steps in a row.
"""

from __future__ import annotations

import math

from transformers import TrainerCallback

from lmtune.errors import LmtuneError

BAD_LOGS_IN_A_ROW = 3
LR_ZERO_ALLOWED_FROM = 0.99  # a decaying schedule may touch 0 in its last 1% of steps


class TrainingStopped(LmtuneError):
    pass


class Guards(TrainerCallback):
    def __init__(self, half_precision: str | None = None, zero_loss_is_broken: bool = True):
        self.half_precision = half_precision  # "fp16" / "bf16" when mixed precision is on
        self.zero_loss_is_broken = zero_loss_is_broken  # a preference loss reaches 0 honestly (hinge, once every pair is won)
        self.nan_logs = 0
        self.zero_logs = 0
        self.warmup = 0

    def on_train_begin(self, args, state, control, **kwargs):
        warmup = self.warmup = args.get_warmup_steps(state.max_steps)
        if state.max_steps and warmup >= state.max_steps:
            raise TrainingStopped(
                f"warm-up takes {warmup} steps but the run has only {state.max_steps}: the learning rate would never "
                "reach train.learning_rate; lower train.warmup_steps / warmup_ratio or train longer"
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        self._check_learning_rate(state, logs.get("learning_rate"))
        self._check_loss(state, float(logs["loss"]))

    def _check_learning_rate(self, state, lr) -> None:
        in_warmup = state.global_step <= self.warmup  # a warm-up starts from 0
        if lr == 0 and not in_warmup and state.global_step < LR_ZERO_ALLOWED_FROM * state.max_steps:
            raise TrainingStopped(
                f"the learning rate is 0 at step {state.global_step} of {state.max_steps}: nothing is being learned. "
                "Usually a second scheduler overrides lmtune's (a DeepSpeed config with its own 'scheduler' "
                "section, or a schedule whose length does not match the run); remove it"
            )

    def _check_loss(self, state, loss: float) -> None:
        self.nan_logs = self.nan_logs + 1 if not math.isfinite(loss) else 0
        self.zero_logs = self.zero_logs + 1 if loss == 0 else 0
        if self.nan_logs >= BAD_LOGS_IN_A_ROW:
            cause = (
                "fp16 overflow: train with bf16 (model.dtype: bfloat16) or fp32, or lower the learning rate"
                if self.half_precision == "fp16"
                else "the weights or the data hold NaN/inf, or the learning rate is too high; check the base model "
                "(does it generate?) and lower train.learning_rate"
            )
            raise TrainingStopped(f"loss is {loss} for {self.nan_logs} logged steps in a row (step {state.global_step}): {cause}")
        if self.zero_logs >= BAD_LOGS_IN_A_ROW and self.zero_loss_is_broken:
            raise TrainingStopped(
                f"loss is exactly 0 for {self.zero_logs} logged steps in a row (step {state.global_step}): either every "
                "label is masked (check data.train_on and the template with `lmtune data encode --show`) or the "
                "answers leak into the prompt, so there is nothing left to predict"
            )
