"""`lmtune serve`: load the engine (or start the workers) behind the API and run uvicorn.

The server listens at once and answers 503 until the model is loaded, so a load balancer or a
test can poll /health instead of guessing how long loading takes.
"""

from __future__ import annotations

import threading
from typing import Callable

from lmtune.config import ServeConfig
from lmtune.errors import LmtuneError
from lmtune.serve.engines import load_engine_for, served_models


def check_backend(config: ServeConfig) -> None:
    if config.backend == "vllm":
        from lmtune.serve.vllm_install import check_vllm

        check_vllm()
    elif config.tensor_parallel_size > 1:
        raise LmtuneError(f"--tensor-parallel-size {config.tensor_parallel_size} goes with --backend vllm; the hf backend runs one model per replica")


def start_backend(config: ServeConfig):
    """vLLM (--backend vllm: --replicas is its data parallelism), the in-process batcher, or with
    --replicas N a pool of worker processes."""
    if config.backend == "vllm":
        from lmtune.serve.vllm import VllmBatcher

        return VllmBatcher(config)
    if config.replicas > 1:
        from lmtune.serve.workers import Pool

        return Pool(config)
    from lmtune.serve.batcher import Batcher

    engine, adapters = load_engine_for(config)
    return Batcher(engine, adapters, config.max_batch, config.max_queue)


def serve(config: ServeConfig, say: Callable[[str], None] = print) -> None:
    import uvicorn

    class _Server(uvicorn.Server):
        """Stops the backend's own processes too (vLLM's engine core and workers) as the server shuts
        down: after SIGTERM uvicorn re-raises the signal once it has shut down, so code after run()
        never runs, and vLLM's engine core outlives a parent that is killed."""

        def __init__(self, serving, config):
            super().__init__(config)
            self.serving = serving

        async def shutdown(self, sockets=None) -> None:
            await super().shutdown(sockets)
            if hasattr(self.serving.backend, "shutdown"):
                self.serving.backend.shutdown()

    from lmtune.serve.app import Serving, create_app

    check_backend(config)
    serving = Serving(list(served_models(config)), config.api_key)
    server = _Server(serving, uvicorn.Config(create_app(serving), host=config.host, port=config.port, log_level="warning"))
    failure: list[Exception] = []

    def load() -> None:
        try:
            from lmtune.serve.kbs import KnowledgeBases

            serving.kbs = KnowledgeBases(config)  # first: a missing knowledge base fails before the model loads
            serving.backend = start_backend(config)
        except Exception as exc:  # the CLI reports it after the server has stopped
            failure.append(exc)
            server.should_exit = True
            return
        while not server.started:
            threading.Event().wait(0.05)
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        url = f"http://{host}:{port}"
        grounded = f", grounded in {', '.join(config.kbs)}" if config.kbs else ""
        say(f"serving {', '.join(serving.models)}{grounded}: API at {url}/v1, chat page at {url}/ (Ctrl-C stops)")

    threading.Thread(target=load, daemon=True, name="lmtune-load").start()
    server.run()
    if failure:
        raise failure[0]
