"""Models named by hub id (`Qwen/Qwen2.5-0.5B-Instruct`) as well as by folder.

A hub id goes through huggingface_hub's own cache (HF_HOME / HF_HUB_CACHE): downloaded when the hub
can be reached, read from the cache with HF_HUB_OFFLINE=1 or without a network. Everything after
this module works on the local folder it returns: the cached snapshot of one commit.
"""

from __future__ import annotations

import re
from pathlib import Path

from lmtune.config import ModelConfig
from lmtune.errors import ConfigError, ModelError, first_line
from lmtune.model.gguf import dequantized, gguf_file

# What loading a causal LM and its tokenizer reads: configs, safetensors weights, tokenizer files
# (tokenizer.json, sentencepiece .model, merges/vocab .txt, .tiktoken), chat templates and, for
# trust_remote_code, the modelling code. Not the GGUF, ONNX, TF, Flax or original/ copies many repos carry.
MODEL_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken", "*.jinja", "*.py"]
BIN_WEIGHTS = ["pytorch_model*.bin"]  # older repos ship only these; fetched when there are no safetensors

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]")


def is_hub_id(path_or_id: str) -> bool:
    """ORG/NAME that is no local path (a folder of that name wins, as in transformers)."""
    return bool(_HUB_ID.fullmatch(path_or_id)) and not Path(path_or_id).expanduser().exists()


def resolve_model(path_or_id: str, revision: str | None = None) -> tuple[Path, str | None]:
    """The local folder to load, and for a hub id the commit it holds (to record in run.yaml)."""
    if not is_hub_id(path_or_id):
        if revision:
            raise ConfigError(f"model.revision {revision}: applies to hub ids; '{path_or_id}' is a local path")
        gguf = gguf_file(path_or_id)  # llama.cpp's and Ollama's files: dequantized once into a cached folder
        return (dequantized(gguf) if gguf else Path(path_or_id).expanduser()), None
    folder = _snapshot(path_or_id, revision, MODEL_FILES)
    if not any(folder.glob("*.safetensors")):
        folder = _snapshot(path_or_id, folder.name, BIN_WEIGHTS)  # by commit: the same snapshot
    return folder, folder.name


def base_folder(base: str, trained: ModelConfig | None) -> Path:
    """The folder of a base model; of the run's own base, the commit its training recorded in run.yaml."""
    return resolve_model(base, trained.revision if trained and base == trained.path else None)[0]


def _snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - mapped by type below; anything else is named in one line
        raise ModelError(_explain(exc, repo_id, revision)) from exc


def _explain(exc: Exception, repo_id: str, revision: str | None) -> str:
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    neither = f"'{repo_id}' is not a local folder"
    copy = f"no complete copy of it at revision {revision}" if revision else "no complete copy of it"
    if isinstance(exc, HFValidationError):
        return f"{neither}, nor a valid hub id (ORG/NAME): {first_line(exc)}"
    if isinstance(exc, GatedRepoError):
        return f"{neither}, and the hub model of that name is gated: accept its terms on its hub page, then `hf auth login`"
    if isinstance(exc, RepositoryNotFoundError):
        return f"{neither}, nor a model on the Hugging Face hub (a private one needs `hf auth login`)"
    if isinstance(exc, RevisionNotFoundError):
        return f"model.revision {revision}: no such branch, tag or commit in the hub model '{repo_id}'"
    if isinstance(exc, LocalEntryNotFoundError) and constants.HF_HUB_OFFLINE:
        return (
            f"{neither}, and with HF_HUB_OFFLINE=1 only the Hugging Face cache ({constants.HF_HUB_CACHE}) is read, "
            f"which holds {copy}: download it once online (`hf download {repo_id}`), or give a local folder"
        )
    if isinstance(exc, LocalEntryNotFoundError):
        return (
            f"{neither}, the Hugging Face cache ({constants.HF_HUB_CACHE}) holds {copy}, and the hub "
            f"cannot be reached ({first_line(exc.__cause__ or exc)}): check the network or HF_ENDPOINT, or give a local folder"
        )
    return f"{neither}, and fetching it from the Hugging Face hub failed: {type(exc).__name__}: {first_line(exc)}"

