"""The one generation engine behind chat, generate and eval.

Prompts come from the training encoder (same template, same tokenization), generation stops
at EOS, the template's stop strings or the user's, and streamed text never splits a UTF-8
character or shows the beginning of a stop string.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from lmtune.config import GenerateConfig, QuantConfig, RunConfig, load_run_config
from lmtune.data.encode import Encoder, pad_batch
from lmtune.data.records import Conversation
from lmtune.errors import LmtuneError
from lmtune.model.adapters import load_adapter
from lmtune.model.hub import base_folder, is_hub_id
from lmtune.model.load import align_special_tokens, load_model, load_tokenizer, quantization
from lmtune.templates.hf import choose_template
from lmtune.templates.template import Template, cut_at_stop


@dataclass
class Reply:
    text: str
    finish_reason: str  # "stop": EOS or a stop string; "length": max_new_tokens reached
    new_tokens: int


class Engine:
    def __init__(self, model, tokenizer, template: Template, settings: GenerateConfig, config=None):
        """model None: a head without weights (prompts, stops, text) for an engine that generates
        elsewhere (infer/vllm.py); config is then the model's transformers config."""
        self.model = model.eval() if model is not None else None
        self.config = model.config if model is not None else config
        self.tokenizer = tokenizer
        self.template = template
        self.settings = settings
        self.encoder = Encoder(tokenizer, template, cutoff_len=2**31)  # prompts are never cut here
        self.stop_ids = end_token_ids(tokenizer, template)
        self.stops = tuple(dict.fromkeys(s for s in (*template.stop, *settings.stop) if s))
        self._grammars = None

    @property
    def grammars(self):
        """The tokenizer's compiled grammars for constrained answers (infer/grammar.py), made on first use."""
        if self._grammars is None:
            from lmtune.infer.grammar import Grammars

            self._grammars = Grammars(self.tokenizer, self.vocab_size, self.stop_ids)
        return self._grammars

    @property
    def vocab_size(self) -> int:
        """The logits' width (token ids the model knows), which may exceed the tokenizer's."""
        if self.model is None:
            return self.config.vocab_size
        return self.model.get_output_embeddings().weight.shape[0]

    @property
    def window(self) -> int | None:
        """The most tokens (prompt + answer) the model takes, None where its config does not say."""
        return getattr(self.config, "max_position_embeddings", None)

    # ------------------------------------------------------------ public

    def chat(self, conv: Conversation, on_text: Callable[[str], None] | None = None) -> Reply:
        """Answer the conversation's last user turn, streaming text pieces to on_text."""
        stream = TextStream(self.tokenizer, self.stops, on_text or (lambda _: None))
        ids = torch.tensor([self.encoder.prompt_ids(conv)], device=self.model.device)
        output = self._generate(ids, torch.ones_like(ids), streamer=stream)
        return self.reply(output[0, ids.shape[1] :])

    def generate(self, convs: list[Conversation], spec=None) -> list[Reply]:
        """Answer a batch of conversations at once (left padding). spec (infer/grammar.py's Spec):
        every answer follows its grammar, and only the grammar ends it (no stop strings)."""
        prompts = [{"input_ids": self.encoder.prompt_ids(conv)} for conv in convs]
        batch = pad_batch(prompts, self.tokenizer.pad_token_id, side="left")
        ids = batch["input_ids"].to(self.model.device)
        constrained = _Constrained(self, spec, len(convs), ids.shape[1]) if spec else None
        output = self._generate(ids, batch["attention_mask"].to(self.model.device), constrained=constrained)
        return [self.reply(row[ids.shape[1] :], () if spec else None) for row in output]

    # ------------------------------------------------------------ internals

    def _generate(self, ids: torch.Tensor, mask: torch.Tensor, streamer=None, constrained=None) -> torch.Tensor:
        stops = StoppingCriteriaList([] if constrained else [_StopStrings(self.tokenizer, self.stops, ids.shape[1])])
        if self.settings.seed is not None:
            torch.manual_seed(self.settings.seed)  # each call starts from the seed: a sampled answer can be redone
        with torch.inference_mode():
            return self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=self._generation_config(),
                stopping_criteria=stops,
                logits_processor=LogitsProcessorList([constrained] if constrained else []),
                streamer=streamer,
            )

    def _generation_config(self) -> GenerationConfig:
        s = self.settings
        # Only max_new_tokens bounds the length: passing max_length too makes generate complain or
        # silently pick one of them.
        config = GenerationConfig(
            max_new_tokens=s.max_new_tokens,
            repetition_penalty=s.repetition_penalty,
            no_repeat_ngram_size=s.no_repeat_ngram_size,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            do_sample=s.temperature > 0,
        )
        if s.temperature > 0:
            config.temperature, config.top_p, config.top_k = s.temperature, s.top_p, s.top_k
        return config

    def reply(self, new_ids: torch.Tensor, stops: tuple[str, ...] | None = None) -> Reply:
        """The answer in new_ids (generated token ids): cut at the first end token and stop string
        (the engine's, or a request's own)."""
        ids = new_ids.tolist()
        end = next((i for i, token in enumerate(ids) if token in self.stop_ids), None)
        ended_on_eos = end is not None
        if ended_on_eos:
            ids = ids[:end]
        while ids and ids[-1] == self.tokenizer.pad_token_id:  # rows that finished early are filled with pad
            ids.pop()
        text, hit_stop = cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), self.stops if stops is None else stops)
        reason = "stop" if ended_on_eos or hit_stop else "length"
        return Reply(text.rstrip("\ufffd").strip(), reason, len(ids) + ended_on_eos)


def end_token_ids(tokenizer, template: Template) -> list[int]:
    """Generation ends at the tokenizer's EOS and at every token that ends the template's answers
    (<|im_end|>, <|eot_id|>, ChatGLM's <|user|> and <|observation|>, …), which the model was trained to write."""
    ids = {tokenizer.eos_token_id}
    ids.update(tokenizer.convert_tokens_to_ids(end) for end in template.end_tokens() if end != "{eos}")
    return sorted(ids)


class _Constrained(LogitsProcessor):
    """Each row of a model.generate batch kept to the grammar (before temperature, top-k and top-p,
    which transformers applies after the processors it is given)."""

    def __init__(self, engine: Engine, spec, rows: int, prompt_len: int):
        self.matchers = [engine.grammars.matcher(spec) for _ in range(rows)]
        self.stop_ids, self.prompt_len, self.ended = engine.stop_ids, prompt_len, set()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        from lmtune.infer.grammar import masked

        if input_ids.shape[1] > self.prompt_len:  # the token each row was given last step
            for row, token in enumerate(input_ids[:, -1].tolist()):
                if token in self.stop_ids:
                    self.ended.add(row)  # finished: transformers pads it from here on
                elif row not in self.ended:
                    self.matchers[row].consume(token)
        live = {row: m for row, m in enumerate(self.matchers) if row not in self.ended}
        return masked(scores, live, self.stop_ids) if live else scores


class _StopStrings(StoppingCriteria):
    """Per-row stop on the template's stop strings, checking only the newest tokens."""

    def __init__(self, tokenizer, stops: tuple[str, ...], prompt_len: int):
        self.tokenizer, self.stops, self.prompt_len = tokenizer, [s for s in stops if s], prompt_len
        # every non-special token decodes to at least one byte
        self.window = max((len(s.encode("utf-8")) for s in self.stops), default=0) + 2

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if not self.stops:
            return done
        tails = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :][:, -self.window :], skip_special_tokens=True)
        for row, tail in enumerate(tails):
            done[row] = any(s in tail for s in self.stops)
        return done


class TextStream(BaseStreamer):
    """Streams decoded text, holding back an incomplete UTF-8 character (decoded as U+FFFD) and
    any tail that could be the start of a stop string."""

    def __init__(self, tokenizer, stops: tuple[str, ...], on_text: Callable[[str], None]):
        self.tokenizer, self.stops, self.on_text = tokenizer, [s for s in stops if s], on_text
        self.ids: list[int] = []
        self.sent = 0
        self.stopped = False  # a stop string has appeared: the answer is over
        self.prompt_skipped = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_skipped:  # generate() hands the prompt over first
            self.prompt_skipped = True
            return
        self.add(value.reshape(-1).tolist())

    def add(self, ids: list[int]) -> None:
        """New answer tokens (the server's step loop calls this directly)."""
        self.ids.extend(ids)
        self._flush(final=False)

    def end(self) -> None:
        self._flush(final=True)

    def _flush(self, final: bool) -> None:
        text, stopped = cut_at_stop(self.tokenizer.decode(self.ids, skip_special_tokens=True), self.stops)
        self.stopped = stopped
        # A trailing U+FFFD is a character whose bytes have not all arrived, or never will
        # (cut off by max_new_tokens): never show it.
        safe = len(text.rstrip("\ufffd"))
        if not (final or stopped):
            safe -= _partial_stop(text[:safe], self.stops)
        if safe > self.sent:
            self.on_text(text[self.sent : safe])
            self.sent = safe


def _partial_stop(text: str, stops: list[str]) -> int:
    """Length of the longest end of text that begins some stop string."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


# ---------------------------------------------------------------- loading


def load_engine(
    model: str | None = None,
    adapter: str | None = None,
    template: str | None = None,
    settings: GenerateConfig | None = None,
    bits: int | None = None,
) -> Engine:
    """Base model + optional adapter, the base optionally in 4 or 8 bits (bitsandbytes, GPU).
    Template and settings default to the run.yaml that training wrote into the adapter (or
    full-model) folder."""
    head = load_head(model, adapter, template, settings)
    quant = quantization(QuantConfig(bits=bits), f"--quantize {bits}bit", "drop --quantize") if bits else None
    reward = bool(head.run and head.run.data.stage == "rm")  # scores answers (lmtune eval), generates nothing
    model_obj = load_model(head.base, head.run.model.dtype if head.run else "auto", quantization_config=quant, reward=reward)
    align_special_tokens(model_obj, head.tokenizer)
    if adapter:
        model_obj = load_adapter(model_obj, adapter)
    return Engine(model_obj, head.tokenizer, head.template, head.settings)


@dataclass
class Head:
    """What an engine needs besides the weights: the base folder, tokenizer, template, settings and run."""

    base: str
    tokenizer: object
    template: Template
    settings: GenerateConfig
    run: RunConfig | None


def load_head(model: str | None, adapter: str | None, template: str | None, settings: GenerateConfig | None = None) -> Head:
    """The folders checked and resolved (a .gguf dequantized once), the tokenizer and template loaded."""
    for flag, folder in (("--adapter", adapter), ("--model", model)):
        if folder and not Path(folder).exists() and not (flag == "--model" and is_hub_id(folder)):
            raise LmtuneError(f"{flag} {folder}: no such folder")
    run_dir = adapter or model
    run = load_run_config(run_dir) if run_dir else None
    base = model or (run.model.path if run else None)
    if base is None:
        raise LmtuneError("no base model: pass --model DIR (the adapter folder has no run.yaml naming it)")
    if not model and not Path(base).exists() and not is_hub_id(base):
        raise LmtuneError(f"the base model named in {Path(run_dir) / 'run.yaml'} is not at {base} any more; pass --model DIR")
    base = base_folder(base, run.model if run else None)
    tokenizer_dir = adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else base
    tokenizer = load_tokenizer(tokenizer_dir)
    chosen = choose_template(template, run, run_dir, tokenizer)
    return Head(str(base), tokenizer, chosen, settings or (run.generate if run else GenerateConfig()), run)
