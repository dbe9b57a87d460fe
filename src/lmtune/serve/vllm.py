"""--backend vllm: vLLM generates, lmtune's layer above it stays the same.

The backend only turns token ids into token ids. A request is planned as for the built-in batcher
(serve/requests.py: the prompt rendered by the run's template, stops, grammar, each choice's
settings), its prompt goes to vLLM as a TokensPrompt (so no second BOS, and training and serving
stay token-identical), an adapter as a LoRARequest (vLLM batches several adapters together; the base
with adapters off is a request without one). vLLM hands back token ids (detokenize off) and their
logprobs; serve/decode.py's Answer turns them into text exactly as the built-in engine does: never
half a UTF-8 character, stop strings cut by lmtune (the request is aborted in vLLM when one
appears), finish_reason and completion tokens counted the same way. Structured output is the same
llguidance grammar (infer/grammar.py) handed to vLLM's guidance backend.

vLLM's AsyncLLM runs its engine core in a process of its own; here it sits on an asyncio loop in
a daemon thread, so the API's event loop and `lmtune generate` (no event loop) use it alike.
--replicas N becomes vLLM's data parallelism, --tensor-parallel-size is passed on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from lmtune.config import ServeConfig
from lmtune.errors import LmtuneError
from lmtune.infer.engine import Engine, Reply, load_head
from lmtune.serve.decode import Answer, Row, Sampling
from lmtune.serve.requests import plan
from lmtune.serve.schemas import ApiError
from lmtune.serve.vllm_install import check_vllm
from lmtune.serve.scoring import echo_text, token_entry

log = logging.getLogger(__name__)

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


# ---------------------------------------------------------------- the engine


class Runner:
    """vLLM's AsyncLLM on an event loop of its own; rows in, Answers fed as tokens come out."""

    def __init__(self, engine: Engine, loras: dict[str, str], max_batch: int, replicas: int = 1, tensor_parallel: int = 1, dtype: str = "auto",
                 eager: bool = False):
        """loras: adapter name → folder (each becomes a LoRARequest)."""
        from vllm.lora.request import LoRARequest

        self.engine = engine
        self.loras = {name: LoRARequest(name, i + 1, str(folder)) for i, (name, folder) in enumerate(loras.items())}
        self.tasks: dict[str, asyncio.Task] = {}
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True, name="lmtune-vllm").start()
        args = _engine_args(engine, loras, max_batch, replicas, tensor_parallel, dtype, eager)
        self.llm = self.call(self._create(args))

    async def _create(self, args):
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(args)

    def call(self, coroutine):
        """Run a coroutine on the runner's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def start(self, key: str, row: Row, lora: str | None, grammar: str | None, on_error) -> None:
        """Generate row's answer in the background; on_error(ApiError) if vLLM refuses or fails it."""
        def begin() -> None:
            self.tasks[key] = self.loop.create_task(self._generate(key, row, lora, grammar, on_error))
        self.loop.call_soon_threadsafe(begin)

    def cancel(self, key: str) -> None:
        """Abort the request: cancelling vLLM's generate() aborts it in the engine core."""
        def stop() -> None:
            task = self.tasks.pop(key, None)
            if task:
                task.cancel()
        self.loop.call_soon_threadsafe(stop)

    def shutdown(self) -> None:
        self.llm.shutdown()

    async def _generate(self, key: str, row: Row, lora: str | None, grammar: str | None, on_error) -> None:
        from vllm.inputs import TokensPrompt

        answer, s = Answer(self.engine, row), row.sampling
        stream = self.llm.generate(TokensPrompt(prompt_token_ids=row.prompt), sampling_params(self.engine, s, grammar), key,
                                   lora_request=self.loras[lora] if lora else None)
        try:
            async for out in stream:
                if row.cancelled():
                    break
                if s.echo and not answer.echoed:
                    self._echo(answer, out.prompt_logprobs)
                    if s.max_tokens == 0:  # the prompt's logprobs only (vLLM writes one token at least)
                        row.finished = True
                        row.on_done(row.echo, "length", 0, row.logprobs)
                        break
                choice = out.outputs[0]
                for i, token in enumerate(choice.token_ids):
                    answer.take(token, self._logprob(choice.logprobs[i], token, s.top_logprobs) if s.logprobs else None)
                    if row.finished:
                        break
                if row.finished:  # a stop string, an end token, max_tokens: the rest is not wanted
                    break
            else:
                if not (row.finished or row.cancelled()):  # vLLM ended it for a reason of its own
                    answer.finish()
        except Exception as exc:  # noqa: BLE001 - whatever vLLM raises becomes this request's error, never the server's
            log.warning("vLLM request %s failed: %s", key, exc)
            if isinstance(exc, (ValueError, TypeError)):  # vLLM's validation errors are ValueErrors
                on_error(ApiError(400, f"vLLM refused the request: {exc}"))
            else:
                on_error(ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", code="generation_failed"))
        finally:
            self.tasks.pop(key, None)
            await stream.aclose()  # a request still running in vLLM (stopped early, or cancelled) is aborted there

    def _echo(self, answer: Answer, prompt_logprobs) -> None:
        """echo: the prompt's text (and with logprobs, vLLM's prompt logprobs) before the answer."""
        row, answer.echoed = answer.row, True
        row.echo = echo_text(self.engine, row.prompt)
        if prompt_logprobs is not None:
            top = row.sampling.top_logprobs
            first = {**token_entry(self.engine, row.prompt[0], None), "top_logprobs": None}
            row.logprobs = [first] + [self._logprob(entries, token, top) for entries, token in zip(prompt_logprobs[1:], row.prompt[1:])]
        row.on_text(row.echo, list(row.logprobs))

    def _logprob(self, entries: dict, token: int, top: int) -> dict:
        """vLLM's logprobs of one position (the model's own, before penalties and temperature) as lmtune writes them."""
        entry = token_entry(self.engine, token, float(entries[token].logprob))
        ranked = sorted((lp.rank, tid, lp.logprob) for tid, lp in entries.items() if lp.rank is not None and lp.rank <= top)
        entry["top_logprobs"] = [token_entry(self.engine, tid, float(value)) for _, tid, value in ranked[:top]]
        return entry


def sampling_params(engine: Engine, s: Sampling, grammar: str | None):
    """A row's settings as vLLM's SamplingParams; vLLM writes ids only (lmtune turns them into text)."""
    from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

    return SamplingParams(
        temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, repetition_penalty=s.repetition_penalty,
        presence_penalty=s.presence_penalty, frequency_penalty=s.frequency_penalty, seed=s.seed,
        max_tokens=max(s.max_tokens, 1), ignore_eos=s.ignore_eos, stop_token_ids=[] if s.ignore_eos else list(engine.stop_ids),
        logprobs=s.top_logprobs if s.logprobs else None, prompt_logprobs=s.top_logprobs if s.echo and s.logprobs else None,
        detokenize=False, output_kind=RequestOutputKind.DELTA,
        structured_outputs=StructuredOutputsParams(grammar=grammar) if grammar else None,
    )


def _engine_args(engine: Engine, loras: dict[str, str], max_batch: int, replicas: int, tensor_parallel: int, dtype: str, eager: bool):
    from vllm.engine.arg_utils import AsyncEngineArgs

    from lmtune.model.load import resolve_dtype

    if engine.settings.no_repeat_ngram_size:
        log.warning("generate.no_repeat_ngram_size %d has no vLLM equivalent and is not applied (--backend hf applies it)",
                    engine.settings.no_repeat_ngram_size)
    ranks = [_lora_rank(folder) for folder in loras.values()]
    return AsyncEngineArgs(
        model=engine.base, tokenizer=engine.tokenizer_dir, dtype=str(resolve_dtype(dtype)).removeprefix("torch."),
        max_num_seqs=max_batch, max_model_len=engine.window, data_parallel_size=replicas, tensor_parallel_size=tensor_parallel,
        # One slot more than there are adapters, left empty: vLLM's torch LoRA ops (the CPU build's,
        # vllm/lora/ops/torch_ops/lora_ops.py) pick a row's weights as lora_b_weights[index], and a row
        # without an adapter has index -1, which Python reads as the last slot: with every slot filled,
        # requests for the base batched beside adapter requests were answered by the last adapter.
        enable_lora=bool(loras), max_loras=len(loras) + 1, max_lora_rank=next((r for r in LORA_RANKS if r >= max(ranks, default=8)), 512),
        generation_config="vllm",  # the run's generate settings are the defaults, not the model folder's generation_config.json
        structured_outputs_config={"backend": "guidance"},  # lmtune's grammars are llguidance's Lark (infer/grammar.py)
        enable_log_requests=False, disable_log_stats=True, enforce_eager=eager,
    )


def _lora_rank(folder: str) -> int:
    from lmtune.files import read_json
    from lmtune.model.adapters import check_adapter_files

    check_adapter_files(Path(folder), f"--adapter {folder}: ")
    return int(read_json(Path(folder) / "adapter_config.json", LmtuneError).get("r", 8))


# ---------------------------------------------------------------- serving


@dataclass
class _Job:
    id: str
    keys: list[str]
    remaining: int
    emit: object
    cancelled: bool = False
    ended: bool = False


class VllmBatcher:
    """The serving backend (as serve/batcher.py's Batcher: submit, cancel, stats) over a Runner."""

    def __init__(self, config: ServeConfig):
        from lmtune.serve.engines import served_models

        models = served_models(config)  # name → adapter folder, None for the base
        primary = config.adapter or (None if config.model else config.adapters[next(iter(config.adapters))])
        loras = {name: folder for name, folder in models.items() if folder is not None}
        self.adapters = {name: (name if folder is not None else None) for name, folder in models.items()}
        self.engine = load_vllm_engine(config.model, primary, config.template, loras, config.max_batch, config.replicas,
                                       config.tensor_parallel_size, eager=config.eager)
        self.runner, self.max_queue, self.max_batch = self.engine.runner, config.max_queue, config.max_batch
        self.jobs: dict[str, _Job] = {}
        self.lock = threading.Lock()

    def submit(self, job_id: str, request: dict, emit) -> None:
        try:
            planned = plan(self.engine, request)
            grammar = self._grammar(planned.spec)
        except ApiError as exc:
            return emit(job_id, exc.event())
        with self.lock:
            if len(self.jobs) >= self.max_queue + self.max_batch:
                return emit(job_id, ApiError(429, f"the server is busy: {self.max_queue} requests are waiting already (--max-queue); retry later",
                                             code="queue_full").event())
            job = self.jobs[job_id] = _Job(job_id, [f"{job_id}-{i}" for i in range(planned.n)], planned.n, emit)
        emit(job_id, ("start", len(planned.prompt), planned.opened, self.engine.template))
        for index, key in enumerate(job.keys):
            row = Row(planned.prompt, planned.choice(index), planned.stops,
                      on_text=lambda text, lp, i=index: emit(job_id, ("text", i, text, lp)),
                      on_done=lambda *done, i=index: self._done(job, i, done), cancelled=lambda: job.cancelled)
            self.runner.start(key, row, self.adapters[request["model"]], grammar, lambda error: self._failed(job, error))

    def cancel(self, job_id: str) -> None:
        with self.lock:
            job = self.jobs.pop(job_id, None)
        if job:
            job.cancelled = True
            for key in job.keys:
                self.runner.cancel(key)

    def stats(self) -> dict:
        return {"queued": max(0, len(self.jobs) - self.max_batch), "running": min(len(self.jobs), self.max_batch)}

    def shutdown(self) -> None:
        self.runner.shutdown()

    def _grammar(self, spec) -> str | None:
        return None if spec is None else self.engine.grammars.lark(spec)

    def _done(self, job: _Job, index: int, done: tuple) -> None:
        job.emit(job.id, ("done", index, *done))
        job.remaining -= 1
        if job.remaining == 0:
            self._end(job, ("end",))

    def _failed(self, job: _Job, error: ApiError) -> None:
        self.cancel(job.id)  # its other choices too
        self._end(job, error.event())

    def _end(self, job: _Job, event: tuple) -> None:
        with self.lock:
            if job.ended:
                return
            job.ended = True
            self.jobs.pop(job.id, None)
        job.emit(job.id, event)


# ---------------------------------------------------------------- generate and eval


class VllmEngine(Engine):
    """An Engine whose generation runs on vLLM (`generate`, eval's generation); model: None, or the
    transformers model where eval scores loss and choices with it."""

    base: str  # the folder vLLM loads
    tokenizer_dir: str
    runner: Runner
    lora: str | None = None  # the adapter `generate` answers with (None: the base)

    def generate(self, convs, spec=None) -> list[Reply]:
        """Answer a batch of conversations (vLLM batches them as it likes); with spec every answer follows its grammar."""
        grammar = self.grammars.lark(spec) if spec else None
        replies: list[Reply | None] = [None] * len(convs)
        failures: list[ApiError] = []
        done = threading.Semaphore(0)

        def finished(index: int, text: str, reason: str, tokens: int, logprobs) -> None:
            replies[index] = Reply(text, reason, tokens)
            done.release()

        def failed(error: ApiError) -> None:
            failures.append(error)
            done.release()

        for index, conv in enumerate(convs):
            row = Row(self.encoder.prompt_ids(conv), self._sampling(), () if spec else self.stops,
                      on_text=lambda text, logprobs: None, on_done=lambda *args, i=index: finished(i, *args))
            self.runner.start(f"generate-{uuid.uuid4().hex}", row, self.lora, grammar, failed)
        for _ in convs:
            done.acquire()
        if failures:
            raise LmtuneError(failures[0].message)
        return replies

    def _sampling(self) -> Sampling:
        s = self.settings
        return Sampling(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, repetition_penalty=s.repetition_penalty,
                        no_repeat_ngram_size=0, presence_penalty=0.0, frequency_penalty=0.0, max_tokens=s.max_new_tokens, seed=s.seed)


def load_vllm_engine(model: str | None, adapter: str | None, template: str | None, loras: dict[str, str] | None = None,
                     max_batch: int = 256, replicas: int = 1, tensor_parallel: int = 1, settings=None, hf_model=None,
                     eager: bool = False) -> VllmEngine:
    """The run's head (tokenizer, template, settings) over a vLLM engine of its base; the adapter
    (and every one in loras, name → folder) as a LoRA."""
    check_vllm()
    from transformers import AutoConfig

    head = load_head(model, adapter, template, settings)
    engine = VllmEngine(hf_model, head.tokenizer, head.template, head.settings, config=AutoConfig.from_pretrained(head.base))
    engine.base = head.base
    engine.tokenizer_dir = str(adapter) if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else head.base
    loras = dict(loras) if loras is not None else ({Path(adapter).name: str(adapter)} if adapter else {})
    engine.lora = next((name for name, folder in loras.items() if adapter and str(folder) == str(adapter)), None)
    engine.runner = Runner(engine, loras, max_batch, replicas, tensor_parallel, head.run.model.dtype if head.run else "auto", eager)
    return engine
