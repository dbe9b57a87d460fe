"""GRPO's reward functions (grpo.rewards), in the form TRL's GRPOTrainer calls them.

Built-ins score the completion as `lmtune generate` would return it (cut at the template's stop strings):
- exact_match: 1 when the stripped answer is the stripped reference, else 0; a thinking model's
  answer is what follows its reasoning (templates.reasoning.parse_output; the prompt says whether
  the block was opened for it), and one whose think block never closed has none;
- format:REGEX: 1 when the regex matches the whole stripped completion, think block included, so a
  pattern can require one (re.fullmatch, "." matches newlines), else 0;
- length: -tokens / max_new_tokens (shorter is better: 0 for an empty answer, -1 at the limit);
- length:N: -|tokens - N| / N (0 at N tokens, -1 at none or 2N).
A user's function, "path/module.py:function", gets (prompts, completions, references) lists, the completions
whole (reasoning included), and returns one number per completion; anything else it does stops the run
with what it returned.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable
from pathlib import Path

from lmtune.errors import ConfigError
from lmtune.evaluate.metrics import parse_prediction
from lmtune.templates.reasoning import opens_reasoning
from lmtune.templates.template import cut_at_stop
from lmtune.train.guards import TrainingStopped


def reward_functions(rewards: list[str] | dict[str, float], max_new_tokens: int, stops: tuple[str, ...]) -> list[Callable]:
    """GRPOTrainer's reward_funcs; a mapping's weights go to GRPOConfig.reward_weights, in the same order."""
    return [_function(spec, max_new_tokens, stops) for spec in rewards]


def _function(spec: str, max_new_tokens: int, stops: tuple[str, ...]) -> Callable:
    def answers(completions: list[str]) -> list[str]:
        return [cut_at_stop(c, stops)[0].strip() for c in completions]

    kind, _, rest = spec.partition(":")
    if spec == "exact_match":

        def exact_match(completions, reference, prompts=None, **_):
            found = _answers_after_reasoning(answers(completions), prompts)
            return [float(a is not None and a == r.strip()) for a, r in zip(found, reference)]

        return exact_match
    if kind == "format":
        pattern = re.compile(rest, re.DOTALL)

        def format(completions, **_):  # noqa: A001 - the metric is logged under the function's name
            return [float(pattern.fullmatch(a) is not None) for a in answers(completions)]

        return format
    if kind == "length":
        target = int(rest) if rest else None

        def length(completion_ids, **_):
            if target is None:
                return [-len(ids) / max_new_tokens for ids in completion_ids]
            return [-abs(len(ids) - target) / target for ids in completion_ids]

        return length
    return _checked(_load(spec), spec, answers)


def _answers_after_reasoning(completions: list[str], prompts: list | None) -> list[str | None]:
    """Each completion's answer after its reasoning (None: the think block never closed). With the
    prompt's text, whether the prompt opened the block (DeepSeek-R1's); without it, a bare `</think>`
    still ends the reasoning."""
    known = prompts is not None and len(prompts) == len(completions) and all(isinstance(p, str) for p in prompts)
    opened = [opens_reasoning(p) for p in prompts] if known else [None] * len(completions)
    parsed = [parse_prediction(c, o) for c, o in zip(completions, opened)]
    return [p.answer.strip() if p.closed else None for p in parsed]


def _load(spec: str) -> Callable:
    path, _, name = spec.rpartition(":")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"grpo.rewards: '{spec}': no file {file} (a path relative to the working folder, or absolute)")
    module_spec = importlib.util.spec_from_file_location(f"lmtune_reward_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(f"grpo.rewards: '{spec}': importing {file} failed: {type(exc).__name__}: {exc}") from exc
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"grpo.rewards: '{spec}': {file} has no function '{name}'")
    return function


def _checked(function: Callable, spec: str, answers: Callable) -> Callable:
    """The user's function in TRL's calling convention; what it returns is checked here, because TRL
    would turn a wrong count into a ValueError deep in its loop and take None for 'no reward'."""

    def reward(prompts, completions, reference, **_):
        try:
            scores = function(list(prompts), answers(completions), list(reference))
        except Exception as exc:
            raise TrainingStopped(f"grpo.rewards: the reward function '{spec}' raised {type(exc).__name__}: {exc}") from exc
        problem = _problem(scores, len(completions))
        if problem:
            raise TrainingStopped(
                f"grpo.rewards: the reward function '{spec}' returned {_short(scores)}: {problem}; "
                f"it must return a list of {len(completions)} numbers, one per completion"
            )
        return [float(s) for s in scores]

    reward.__name__ = function.__name__
    return reward


def _problem(scores, expected: int) -> str | None:
    if isinstance(scores, (str, bytes, dict)) or not hasattr(scores, "__len__"):
        return f"a {type(scores).__name__}, not a list"
    if len(scores) != expected:
        return f"{len(scores)} values for {expected} completions"
    for score in scores:
        if not _finite(score):
            return f"{score!r} is not a finite number"
    return None


def _finite(score) -> bool:
    if score is None or isinstance(score, (str, bytes)):
        return False
    try:
        return math.isfinite(float(score))  # ints, floats, bools, numpy and 0-d torch numbers
    except (TypeError, ValueError):
        return False


def _short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
