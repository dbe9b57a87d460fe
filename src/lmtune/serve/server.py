"""`lmtune serve`: load the engine (or start the workers) behind the API and run uvicorn.

The server listens at once and answers 503 until the model is loaded, so a load balancer or a
test can poll /health instead of guessing how long loading takes.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Callable

from lmtune.config import ServeConfig, load_run_config
from lmtune.errors import LmtuneError
from lmtune.model.hub import is_hub_id


def served_models(config: ServeConfig) -> dict[str, str | None]:
    """Model name → adapter folder (None for the base), in the order /v1/models lists them."""
    run = load_run_config(config.adapter) if config.adapter else None
    base = config.model or (run.model.path if run else None)
    if base is None:  # only named adapters: the base is the one the first was trained on
        first = load_run_config(next(iter(config.adapters.values())))
        base = first.model.path if first else None
    if base is None:
        raise LmtuneError("no base model: pass --model DIR (the adapter folder has no run.yaml naming it)")
    models = {base if is_hub_id(base) and not Path(base).exists() else Path(base).name: None}
    if config.adapter:
        models[Path(config.adapter).name] = config.adapter
    for name, folder in config.adapters.items():
        if name in models:
            raise LmtuneError(f"--adapter {name}={folder}: the name '{name}' is taken already; choose another")
        models[name] = folder
    return models


def load_engine_for(config: ServeConfig):
    """The engine (base + every adapter by name, loaded as chat loads them) and model name → peft
    adapter name (None: the base, adapters off). Template and defaults come from the run.yaml of
    the unnamed adapter, else of --model, else of the first named adapter."""
    from peft import PeftModel

    from lmtune.infer.engine import load_engine
    from lmtune.model.adapters import check_adapter_files

    models, named = served_models(config), dict(config.adapters)
    primary = config.adapter or (None if config.model else next(iter(named)))
    engine = load_engine(config.model, named.get(primary, primary), config.template)
    adapters = {name: "default" if folder and primary in (name, folder) else None for name, folder in models.items()}
    for name, folder in named.items():
        if adapters[name]:
            continue  # peft loaded it as "default" already
        check_adapter_files(Path(folder), f"--adapter {name}={folder}: ")
        if isinstance(engine.model, PeftModel):
            engine.model.load_adapter(folder, adapter_name=name)
        else:
            engine.model = PeftModel.from_pretrained(engine.model, folder, adapter_name=name).eval()
        adapters[name] = name
    return engine, adapters


def check_backend(config: ServeConfig) -> None:
    if config.backend == "vllm":
        import torch

        if importlib.util.find_spec("vllm") is None or not torch.cuda.is_available():
            raise LmtuneError("--backend vllm needs the vllm package and a CUDA GPU (pip install vllm on a GPU machine); use --backend hf")
        raise LmtuneError("--backend vllm is not implemented yet in this version; use --backend hf")


def start_backend(config: ServeConfig):
    """The in-process batcher, or with --replicas N a pool of worker processes."""
    if config.replicas > 1:
        from lmtune.serve.workers import Pool

        return Pool(config)
    from lmtune.serve.batcher import Batcher

    engine, adapters = load_engine_for(config)
    return Batcher(engine, adapters, config.max_batch, config.max_queue)


def serve(config: ServeConfig, say: Callable[[str], None] = print) -> None:
    import uvicorn

    from lmtune.serve.app import Serving, create_app

    check_backend(config)
    serving = Serving(list(served_models(config)), config.api_key)
    server = uvicorn.Server(uvicorn.Config(create_app(serving), host=config.host, port=config.port, log_level="warning"))
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
