"""A request as an engine takes it, whichever engine (the built-in batcher or vLLM): the prompt's
token ids rendered by the run's template, the stop strings, whether the prompt opens a think block,
the grammar a constrained answer follows, and each choice's sampling settings over the run's
generate defaults. Every check that answers 400 happens here, before anything waits."""

from __future__ import annotations

from dataclasses import dataclass, replace

from lmtune.errors import LmtuneError
from lmtune.infer.grammar import Spec
from lmtune.serve.completions import completion_ids
from lmtune.serve.constrain import constrained, request_spec
from lmtune.serve.decode import Sampling
from lmtune.serve.schemas import ApiError, conversation


@dataclass
class Plan:
    prompt: list[int]
    stops: tuple[str, ...]
    opened: bool  # the prompt opens a think block (Encoder.opens_reasoning): the text starts with reasoning
    spec: Spec | None  # structured output: the grammar the answer follows (serve/constrain.py)
    sampling: Sampling
    n: int

    def choice(self, index: int) -> Sampling:
        """Choice index's settings: n answers, each redoable (seed + index)."""
        return replace(self.sampling, seed=None if self.sampling.seed is None else self.sampling.seed + index)


def plan(engine, request: dict) -> Plan:
    """The request (the API's dict) as the engine takes it; ApiError 400 for what it cannot express."""
    if constrained(request):  # structured output: the grammar is the whole answer, and ends it
        request = {**request, "thinking": False, "ignore_eos": False}
    prompt, stops, opened = prompt_of(engine, request)
    spec = request_spec(request, engine.template, opened)
    if spec is not None:  # the grammar ends the answer: only the client's stop strings may cut it
        stops = tuple(request.get("stop") or ())
    return Plan(prompt, stops, opened, spec, _sampling(engine, request, len(prompt)), request.get("n", 1))


def prompt_of(engine, request: dict) -> tuple[list[int], tuple[str, ...], bool]:
    """Prompt ids, stop strings, and whether the prompt opens a think block."""
    extra = tuple(request.get("stop") or ())
    if request["kind"] == "completion":  # the raw prompt: no template, so only the client's stops
        return completion_ids(engine, request["prompt"], request.get("add_special_tokens", True)), extra, False
    conv = conversation(request["messages"], request.get("thinking"), request.get("tools"))
    try:
        prompt = engine.encoder.prompt_ids(conv)
    except LmtuneError as exc:
        raise ApiError(400, f"the template '{engine.template.name}' cannot express this conversation: {exc}", "messages") from None
    return prompt, tuple(dict.fromkeys((*engine.stops, *extra))), engine.encoder.opens_reasoning(conv)


def _sampling(engine, request: dict, prompt_tokens: int) -> Sampling:
    """The request's settings over the run's generate defaults; max_tokens fitted to the window."""
    defaults, given = engine.settings, request
    value = lambda name, default: given[name] if given.get(name) is not None else default  # noqa: E731
    window = engine.window or 2**31
    max_tokens = value("max_tokens", None)
    if max_tokens is None:
        max_tokens = min(defaults.max_new_tokens, window - prompt_tokens)
    if prompt_tokens + max_tokens > window or max_tokens < (0 if given.get("echo") else 1):  # echo: 0 scores the prompt only
        raise ApiError(400, f"This model's maximum context length is {window} tokens. However, you requested "
                       f"{prompt_tokens + max(max_tokens, 1)} tokens ({prompt_tokens} in the prompt, {max(max_tokens, 1)} in the completion). "
                       "Please reduce the length of the messages or completion.", "messages", "context_length_exceeded")
    return Sampling(
        temperature=value("temperature", defaults.temperature), top_p=value("top_p", defaults.top_p),
        top_k=value("top_k", defaults.top_k), repetition_penalty=value("repetition_penalty", defaults.repetition_penalty),
        no_repeat_ngram_size=defaults.no_repeat_ngram_size, presence_penalty=given.get("presence_penalty") or 0.0,
        frequency_penalty=given.get("frequency_penalty") or 0.0, max_tokens=max_tokens, seed=value("seed", defaults.seed),
        logprobs=bool(given.get("logprobs")), top_logprobs=given.get("top_logprobs") or 0, ignore_eos=bool(given.get("ignore_eos")),
        echo=bool(given.get("echo")),
    )
