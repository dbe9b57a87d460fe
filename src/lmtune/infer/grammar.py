"""Constrained decoding: an answer that must be JSON valid against a schema (or a tool call in the
template's syntax), enforced token by token, per row, by llguidance.

At every step a constrained row's logits keep only the tokens its grammar allows next; the end
tokens (the engine's stop ids) are allowed only once the grammar is complete, so an answer that
ends on its own always parses and validates, whatever the model (an untrained one included). An
answer cut by max_tokens ends with finish_reason "length" and may not parse.

A grammar is one or more alternatives, each `head` text + a JSON value valid against `schema` +
`tail` text, after an optional `prefix` (a think block closed at once): a JSON answer is one
alternative with neither text, a tool call one per function (the call's text around its arguments).
JSON is written without free whitespace (", " and ": ", as json.dumps writes it), so a model cannot
spend its tokens on blanks. Text becomes the tokens the model writes: a template's special tokens
(<|im_end|>, Qwen's <tool_call>) as those tokens, the rest as bytes.

Why llguidance (benchmarks/RESULTS.md, "Structured output"): on this CPU, with Qwen2.5's 151,665
tokens, its mask costs 93 µs per token (xgrammar 557 µs, outlines-core 626 µs with a 4.7 ms p95)
and a schema compiles in 3 ms (xgrammar 21 ms, outlines-core 1 s); vLLM, SGLang and llama.cpp use it.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

from lmtune.errors import LmtuneError
from lmtune.templates.reasoning import CLOSE

# No free whitespace; the separators json.dumps (and every template's tool style) writes
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
CACHED = 256  # compiled grammars kept per tokenizer


class GrammarError(LmtuneError):
    """A schema the grammar engine cannot compile; the message says what is wrong with it."""


@dataclass(frozen=True)
class Alternative:
    head: str
    schema: str  # JSON text of the schema (hashable)
    tail: str = ""


@dataclass(frozen=True)
class Spec:
    """What a constrained answer must be: prefix, then one of the alternatives."""

    alternatives: tuple[Alternative, ...]
    prefix: str = ""


def json_spec(schema: Any, what: str = "schema") -> Spec:
    """A JSON answer valid against schema (a JSON Schema object). Raises GrammarError naming `what`."""
    return Spec((Alternative("", checked_schema(schema, what)),))


def checked_schema(schema: Any, what: str) -> str:
    """The schema as JSON text, once llguidance has compiled it; GrammarError says why it cannot."""
    llguidance = _llguidance()
    if not isinstance(schema, dict):
        raise GrammarError(f"{what}: a JSON Schema must be an object, such as {{\"type\": \"object\", \"properties\": {{…}}}} (got {json.dumps(schema)[:80]})")
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    except (ValueError, TypeError, RuntimeError) as exc:
        failed, messages = True, [str(exc)]
    if failed:
        raise GrammarError(f"{what}: not a JSON Schema lmtune can enforce: {'; '.join(messages)[:300]}")
    return json.dumps(schema, ensure_ascii=False)


def closing_think(spec: Spec, opened: bool) -> Spec:
    """spec after a prompt that opens a think block (`opened`, DeepSeek-R1's): the block closed at once,
    empty, then the answer. Constrained answers have thinking off; such a prompt opens it all the same."""
    return replace(spec, prefix=CLOSE + "\n\n") if opened else spec


def _llguidance(torch: bool = False):
    """llguidance (with its transformers and torch helpers once a model is loaded: `torch`)."""
    try:
        import llguidance

        if torch:
            import llguidance.hf  # noqa: F401
            import llguidance.torch  # noqa: F401
    except ImportError:
        raise LmtuneError("structured output needs llguidance: pip install llguidance") from None
    return llguidance


class Grammars:
    """One tokenizer's compiled grammars (an LRU of CACHED) and fresh matchers from them."""

    def __init__(self, tokenizer, vocab: int, stop_ids: list[int]):
        llguidance = _llguidance(torch=True)
        self.tokenizer, self.vocab, self.stop_ids = tokenizer, vocab, list(stop_ids)
        # the stop ids are the grammar's end tokens: allowed exactly when it is complete
        self.lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab, eos_token=self.stop_ids)
        self.compiled: OrderedDict[Spec, Any] = OrderedDict()
        self.specials = sorted((t for t in tokenizer.get_added_vocab() if t), key=len, reverse=True)

    def matcher(self, spec: Spec) -> Matcher:
        """A matcher at the start of spec's grammar; the grammar is compiled once per spec."""
        if spec in self.compiled:
            self.compiled.move_to_end(spec)
        else:
            first = _llguidance().LLMatcher(self.lltok, self.lark(spec))
            if first.is_error():
                raise GrammarError(f"the grammar does not compile: {first.get_error()[:300]}")
            self.compiled[spec] = first
            if len(self.compiled) > CACHED:
                self.compiled.popitem(last=False)
        return Matcher(self.compiled[spec].deep_copy())

    def lark(self, spec: Spec) -> str:
        """spec as a Lark grammar (llguidance's dialect: %json for a schema, <[id]> for a token)."""
        rules = [f"start: {self._literal(spec.prefix)} ({' | '.join(f'alt{i}' for i in range(len(spec.alternatives)))})"]
        for i, alt in enumerate(spec.alternatives):
            schema = {**json.loads(alt.schema), "x-guidance": JSON_OPTIONS}
            rules += [f"alt{i}: {self._literal(alt.head)} value{i} {self._literal(alt.tail)}", f"value{i}: %json {json.dumps(schema)}"]
        return "\n".join(rules) + "\n"

    def _literal(self, text: str) -> str:
        """text as grammar items: the tokenizer's added (special) tokens as themselves, the rest as strings."""
        if not text:
            return ""
        if not self.specials:
            return json.dumps(text)
        parts = re.split("(" + "|".join(map(re.escape, self.specials)) + ")", text)
        vocab = self.tokenizer.get_added_vocab()
        return " ".join(f"<[{vocab[p]}]>" if p in vocab else json.dumps(p) for p in parts if p)


class Matcher:
    """One row's place in its grammar."""

    def __init__(self, matcher):
        self.ll = matcher

    def consume(self, token: int) -> None:
        self.ll.consume_token(token)  # the mask allowed it; a refused token leaves the matcher in error: end tokens only

    def fill(self, bitmask, row: int) -> None:
        _llguidance(torch=True).torch.fill_next_token_bitmask(self.ll, bitmask, row)


def masked(logits, matchers: dict[int, Matcher], stop_ids: list[int]):
    """logits (rows × vocab) with each constrained row (index → matcher) keeping only what its grammar
    allows next (-inf elsewhere); a copy, the model's own logits stay as they were (logprobs)."""
    import torch

    llguidance = _llguidance(torch=True)
    rows = list(matchers)
    bitmask = llguidance.torch.allocate_token_bitmask(len(rows), logits.shape[-1])
    for j, row in enumerate(rows):
        matchers[row].fill(bitmask, j)
    part = logits[rows].clone()
    llguidance.torch.apply_token_bitmask_inplace(part, bitmask)
    stuck = torch.isinf(part).all(-1)  # a matcher in error (never, unless a token was forced past it): end the answer
    if stuck.any():
        part[stuck.nonzero().flatten()[:, None], torch.tensor(stop_ids)] = 0.0
    out = logits.clone()
    out[rows] = part
    return out


def spec_from_file(path) -> Spec:
    """`--json-schema FILE`: the schema in a JSON file, checked; errors name the file."""
    from pathlib import Path

    from lmtune.files import read_json

    if not Path(path).is_file():
        raise GrammarError(f"--json-schema {path}: no such file")
    return json_spec(read_json(Path(path), GrammarError), f"--json-schema {path}")
