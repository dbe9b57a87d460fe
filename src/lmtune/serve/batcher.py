"""Requests → prompts → batches: the in-process backend behind the API.

`submit` checks a request and turns it into token ids at once (a bad conversation is a 400 before
anything waits); one background thread takes up to max_batch queued answers for the same model
(adapters are never mixed in a batch) and decodes them together. Requests that arrive meanwhile
join the running batch between steps (continuous batching: prefilled on their own, then merged
into its cache), up to max_batch answers; finished or abandoned rows leave it at every step.
Everything a request hears comes as events (plain tuples), so a worker process can forward them
over a pipe unchanged:

    ("start", prompt_tokens, opened, template)  ("text", choice, text, logprobs)
    ("done", choice, text, finish_reason, completion_tokens, logprobs)  ("end",)
    ("error", status, message, param, code)     "end" and "error" are the last event of a request

`opened`: the chat prompt ends inside an open think block (Encoder.opens_reasoning), so the text
starts with reasoning; the API splits reasoning from answer, the backend sends text as written.
`template`: the run's Template, whose tool syntax the API reads calls with (serve/toolcalls.py).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from lmtune.infer.engine import Engine
from lmtune.infer.grammar import GrammarError
from lmtune.serve.decode import Row, decode
from lmtune.serve.requests import plan
from lmtune.serve.schemas import ApiError

log = logging.getLogger(__name__)

Emit = Callable[[str, tuple], None]  # (request id, event)


@dataclass
class Job:
    id: str
    model: str
    rows: list[Row]
    emit: Emit
    cancelled: bool = False
    remaining: int = 0
    ended: bool = False
    extra: dict = field(default_factory=dict)
    opened: bool = False  # the prompt opens a think block (Encoder.opens_reasoning)


class Batcher:
    def __init__(self, engine: Engine, adapters: dict[str, str | None], max_batch: int, max_queue: int,
                 on_stats: Callable[[int, int], None] | None = None):
        """adapters: served model name → peft adapter name, or None for the base (adapters off)."""
        self.engine, self.adapters = engine, adapters
        self.max_batch, self.max_queue = max_batch, max_queue
        self.on_stats = on_stats or (lambda queued, running: None)
        self.queue: deque[Job] = deque()
        self.jobs: dict[str, Job] = {}
        self.running = 0
        self.cond = threading.Condition()
        threading.Thread(target=self._loop, daemon=True, name="lmtune-batcher").start()

    # ------------------------------------------------------------ called by the API

    def submit(self, job_id: str, request: dict, emit: Emit) -> None:
        try:
            job = self._job(job_id, request, emit)
        except ApiError as exc:
            return emit(job_id, exc.event())
        with self.cond:
            if len(self.queue) >= self.max_queue:
                return emit(job_id, ApiError(429, f"the server is busy: {self.max_queue} requests are waiting already (--max-queue); retry later",
                                             code="queue_full").event())
            emit(job_id, ("start", len(job.rows[0].prompt), job.opened, self.engine.template))
            self.queue.append(job)
            self.jobs[job_id] = job
            self.cond.notify()
        self._stats()

    def cancel(self, job_id: str) -> None:
        """The client went away: drop the request from the queue, or its rows from the running batch."""
        with self.cond:
            job = self.jobs.pop(job_id, None)
            if job:
                job.cancelled = True
                if job in self.queue:
                    self.queue.remove(job)
        self._stats()

    def stats(self) -> dict:
        return {"queued": len(self.queue), "running": self.running}

    # ------------------------------------------------------------ the batching thread

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            self.running = sum(len(job.rows) for job in jobs)
            self._stats()
            try:
                self._run(jobs)  # jobs grows as queued requests join the running batch
            except Exception as exc:  # a failed batch fails its own requests, never the server
                log.exception("generation failed")
                for job in jobs:
                    if not (job.ended or job.cancelled):
                        job.ended = True
                        job.emit(job.id, ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", code="generation_failed").event())
            finally:
                with self.cond:
                    for job in jobs:
                        self.jobs.pop(job.id, None)
                self.running = 0
                self._stats()

    def _take(self) -> list[Job]:
        """The oldest request and the next ones for the same model, up to max_batch answers."""
        with self.cond:
            while not self.queue:
                self.cond.wait()
            first = self.queue.popleft()
            return [first, *self._more(first.model, self.max_batch - len(first.rows))]

    def _more(self, model: str, room: int) -> list[Job]:
        """Queued requests for this model, oldest first, while their answers fit in room (lock held)."""
        jobs = []
        for job in list(self.queue):
            if job.model == model and len(job.rows) <= room:
                self.queue.remove(job)
                jobs.append(job)
                room -= len(job.rows)
        return jobs

    def _joining(self, jobs: list[Job], live: int) -> list[Row]:
        """Between steps: queued requests for the running batch's model join it (continuous batching)."""
        if not self.queue:  # unlocked peek: a request that just missed it joins at the next step
            return []
        with self.cond:
            # the oldest waiting request is for another model (adapter): let this batch drain so that
            # it goes next, rather than starve behind a stream of requests for this one
            oldest = self.queue[0].model if self.queue else jobs[0].model
            new = self._more(jobs[0].model, self.max_batch - live) if oldest == jobs[0].model else []
        if not new:
            return []
        jobs += new
        self.running = live + sum(len(job.rows) for job in new)
        self._stats()
        return [row for job in new for row in job.rows]

    def _run(self, jobs: list[Job]) -> None:
        model, adapter = self.engine.model, self.adapters[jobs[0].model]
        if adapter is None:
            scope = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
        else:
            model.set_adapter(adapter)
            scope = contextlib.nullcontext()
        with scope:
            decode(self.engine, [row for job in jobs for row in job.rows], more=lambda live: self._joining(jobs, live))

    def _stats(self) -> None:
        self.on_stats(len(self.queue), self.running)

    # ------------------------------------------------------------ requests → rows

    def _job(self, job_id: str, request: dict, emit: Emit) -> Job:
        planned = plan(self.engine, request)
        job = Job(job_id, request["model"], [], emit, remaining=planned.n, opened=planned.opened)
        for index in range(planned.n):
            job.rows.append(Row(
                planned.prompt, planned.choice(index), planned.stops,
                on_text=lambda text, lp, i=index: emit(job_id, ("text", i, text, lp)),
                on_done=lambda *done, i=index: self._done(job, i, done),
                cancelled=lambda: job.cancelled, constraint=self._matcher(planned.spec),
            ))
        return job

    def _matcher(self, spec):
        """A fresh matcher of the spec's grammar (compiled once per spec), None for a free answer."""
        if spec is None:
            return None
        try:
            return self.engine.grammars.matcher(spec)
        except GrammarError as exc:
            raise ApiError(400, str(exc), "response_format") from None

    def _done(self, job: Job, index: int, done: tuple) -> None:
        job.emit(job.id, ("done", index, *done))
        job.remaining -= 1
        if job.remaining == 0:
            job.ended = True
            job.emit(job.id, ("end",))
