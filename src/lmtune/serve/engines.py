"""What a server serves: model names → adapter folders, and the engine (base + adapters) behind them.
The server loads it in-process; with --replicas each worker process loads its own."""

from __future__ import annotations

from pathlib import Path

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
    # Adapters first, the base (adapters off) last: a client that takes the first model listed
    # talks to the fine-tune, not silently to the base.
    base_name = base if is_hub_id(base) and not Path(base).exists() else Path(base).name
    models: dict[str, str | None] = {Path(config.adapter).name: config.adapter} if config.adapter else {}
    for name, folder in config.adapters.items():
        if name in models or name == base_name:
            raise LmtuneError(f"--adapter {name}={folder}: the name '{name}' is taken already; choose another")
        models[name] = folder
    if base_name in models:
        raise LmtuneError(f"--adapter {config.adapter}: its folder's name '{base_name}' is the base model's; rename the folder or use --adapter NAME=DIR")
    models[base_name] = None
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
