"""--replicas N: N engine worker processes behind the one API, each with its own Batcher.

Each worker is a spawned process (CUDA cannot be forked) holding one end of a pipe:

    parent → worker   ("submit", request_id, request)   ("cancel", request_id)
    worker → parent   ("ready", pid)   ("failed", message)   ("stats", queued, running)
                      (request_id, event)    events as in batcher.py

The pool sends each request to the live worker with the fewest requests in flight. A reader
thread per worker forwards its events; when the pipe breaks the worker is gone: its requests get
a 503 at once, and a new process takes its place.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from dataclasses import dataclass, field

from lmtune.config import ServeConfig
from lmtune.errors import LmtuneError
from lmtune.serve.schemas import ApiError

log = logging.getLogger(__name__)


def worker_main(config_json: str, gpu: int | None, conn) -> None:
    """A worker process: load the engine, then batch what the pipe brings."""
    if gpu is not None:  # before torch is imported: the worker sees only its own GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    from lmtune.serve.batcher import Batcher
    from lmtune.serve.engines import load_engine_for

    lock = threading.Lock()

    def send(message: tuple) -> None:
        with lock:
            conn.send(message)

    config = ServeConfig.model_validate_json(config_json)
    try:
        engine, adapters = load_engine_for(config)
    except Exception as exc:
        return send(("failed", str(exc)))
    batcher = Batcher(engine, adapters, config.max_batch, config.max_queue, on_stats=lambda q, r: send(("stats", q, r)))
    send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the server is gone
            return
        if message[0] == "submit":
            batcher.submit(message[1], message[2], lambda request_id, event: send((request_id, event)))
        else:
            batcher.cancel(message[1])


@dataclass
class _Worker:
    index: int
    gpu: int | None
    state: str = "starting"  # starting → live → restarting → live …
    pid: int | None = None
    restarts: int = 0
    queued: int = 0
    running: int = 0
    failure: str | None = None
    conn: object = None
    jobs: dict = field(default_factory=dict)  # request id → emit
    ready: threading.Event = field(default_factory=threading.Event)
    send_lock: threading.Lock = field(default_factory=threading.Lock)


class Pool:
    def __init__(self, config: ServeConfig):
        import torch

        self.config, self.context, self.lock = config, multiprocessing.get_context("spawn"), threading.Lock()
        gpus = torch.cuda.device_count()
        self.workers = [_Worker(i, i % gpus if gpus else None) for i in range(config.replicas)]
        for worker in self.workers:
            self._start(worker)
        for worker in self.workers:  # serve only once every worker has loaded the model
            worker.ready.wait()
            if worker.failure:
                raise LmtuneError(f"replica {worker.index}: {worker.failure}")

    # ------------------------------------------------------------ the backend interface

    def submit(self, request_id: str, request: dict, emit) -> None:
        with self.lock:
            live = [w for w in self.workers if w.state == "live"]
            if not live:
                return emit(request_id, ApiError(503, "no engine worker is live (restarting); retry in a moment", code="no_worker").event())
            worker = min(live, key=lambda w: len(w.jobs))
            worker.jobs[request_id] = emit
        self._send(worker, ("submit", request_id, request))

    def cancel(self, request_id: str) -> None:
        worker = next((w for w in self.workers if request_id in w.jobs), None)
        if worker:
            worker.jobs.pop(request_id, None)
            self._send(worker, ("cancel", request_id))

    def stats(self) -> dict:
        workers = [{"index": w.index, "pid": w.pid, "state": w.state, "restarts": w.restarts, "in_flight": len(w.jobs)} for w in self.workers]
        return {"queued": sum(w.queued for w in self.workers), "running": sum(w.running for w in self.workers), "workers": workers}

    # ------------------------------------------------------------ processes

    def _start(self, worker: _Worker) -> None:
        ours, theirs = self.context.Pipe()
        process = self.context.Process(target=worker_main, args=(self.config.model_dump_json(), worker.gpu, theirs), daemon=True,
                                       name=f"lmtune-replica-{worker.index}")
        process.start()
        theirs.close()  # so a dead worker reads as EOF here
        worker.conn = ours
        threading.Thread(target=self._read, args=(worker, process), daemon=True, name=f"lmtune-replica-{worker.index}-reader").start()

    def _send(self, worker: _Worker, message: tuple) -> None:
        try:
            with worker.send_lock:
                worker.conn.send(message)
        except OSError:  # the reader notices the death and answers the request with a 503
            pass

    def _read(self, worker: _Worker, process) -> None:
        while True:
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "ready":
                worker.pid, worker.state = message[1], "live"
                worker.ready.set()
            elif message[0] == "failed":
                worker.failure = message[1]
            elif message[0] == "stats":
                worker.queued, worker.running = message[1:]
            else:
                self._forward(worker, *message)
        self._died(worker, process)

    def _forward(self, worker: _Worker, request_id: str, event: tuple) -> None:
        emit = worker.jobs.get(request_id)
        if emit:
            emit(request_id, event)
            if event[0] in ("end", "error"):
                worker.jobs.pop(request_id, None)

    def _died(self, worker: _Worker, process) -> None:
        process.join(timeout=10)
        with self.lock:
            jobs, worker.jobs = worker.jobs, {}
            worker.queued = worker.running = 0
            ever_live = worker.state == "live"
            worker.state = "restarting"
        died = ApiError(503, f"replica {worker.index} died mid-request (exit code {process.exitcode}); retry", code="replica_died")
        for request_id, emit in jobs.items():
            emit(request_id, died.event())
        if not ever_live and (worker.failure or not worker.ready.is_set()):
            worker.failure = worker.failure or f"the worker process exited while loading (exit code {process.exitcode})"
            worker.ready.set()  # a worker that cannot load would fail again: report it, don't loop
            return
        log.warning("replica %d died (exit code %s); restarting it", worker.index, process.exitcode)
        worker.restarts += 1
        self._start(worker)
