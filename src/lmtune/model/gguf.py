"""A GGUF file (llama.cpp's and Ollama's format) as a model source.

transformers reads GGUF through the `gguf` package and dequantizes it; lmtune does that once and
keeps the result as an ordinary Hugging Face folder under $LMTUNE_HOME/gguf/, keyed by the file's
content hash, so every later command (train, chat, serve, export) loads it in a second. run.yaml
keeps the path the user gave (the .gguf file), which resolves to the same cached folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from lmtune.errors import ModelError
from lmtune.files import lmtune_home

log = logging.getLogger(__name__)
SOURCE_FILE = "gguf_source.json"  # in the cached folder: the file it came from and its hash


def gguf_file(path: str | Path) -> Path | None:
    """The GGUF file a model path names: the file itself, or the one .gguf in a folder that holds
    no Hugging Face model (config.json); None for anything else."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(path.glob("*.gguf"))
        if len(found) > 1:
            raise ModelError(f"{path} holds {len(found)} .gguf files ({', '.join(f.name for f in found)}); name one as model.path")
        return found[0] if found else None
    return None


def dequantized(file: Path) -> Path:
    """The Hugging Face folder of a GGUF file, made once (a progress line, then seconds to minutes)."""
    digest = _sha256(file)
    folder = lmtune_home() / "gguf" / digest[:16]
    if (folder / SOURCE_FILE).is_file():
        return folder
    log.info("model: dequantizing %s into %s (once; later runs read the folder)", file, folder)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
        model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"{file}: transformers cannot read this GGUF file ({type(exc).__name__}: {exc})") from None
    # Dequantized, the weights are ordinary fp32 tensors: saved without the GGUF quantizer's mark,
    # which save_pretrained would refuse.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / SOURCE_FILE).write_text(json.dumps({"file": str(file.resolve()), "sha256": digest}), encoding="utf-8")
    if folder.exists():  # another process finished first
        shutil.rmtree(tmp)
    else:
        tmp.rename(folder)
    return folder


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()
