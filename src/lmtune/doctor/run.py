"""`lmtune doctor --config run.yaml`: the config resolved, its template and data readable, and a dry run:
a few samples encoded and one forward/backward step on the real model."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from lmtune.doctor.check import Check, guarded

DRY_RUN_SAMPLES = 4


def config_checks(path: Path) -> list[Check]:
    from lmtune.config import load_config

    try:
        config = load_config(path)
    except Exception as exc:  # noqa: BLE001 - ConfigError, with every problem of the file in one message
        return [Check("config", "fail", " ".join(str(exc).split()), "fix the config as the message says")]
    results = [Check("config", "ok", f"{path}: model {config.model.path}, template {config.data.template}, "
                     f"method {config.finetune.method}, output {config.train.output_dir}", detail=config.model_dump(mode="json"))]
    for check in (check_template, check_data_files, check_dry_run):
        results += guarded(check, config)
    return results


def check_template(config) -> Check:
    from lmtune.templates.template import get_template

    if config.data.template == "auto":
        return Check("template", "ok", "auto: the tokenizer's chat_template (checked by the dry run)")
    template = get_template(config.data.template, config.data.template_file)
    return Check("template", "ok", f"{config.data.template}: answers end with {' or '.join(template.end_tokens())}")


def first_conversations(spec, data, count: int) -> list:
    """The first few records of each file of a dataset as Conversations, without reading the rest."""
    from lmtune.data.formats import detect_format, to_conversation
    from lmtune.data.readers import open_records
    from lmtune.errors import DataError

    convs = []
    for path in spec.files:
        _encoding, records = open_records(path, streaming=True, encoding=data.encoding, txt_lines=spec.txt_lines)
        fmt = None if spec.format == "auto" else spec.format
        for raw in itertools.islice(records, count):
            if raw.record is None:
                raise DataError(f"{raw.where}: {raw.error}")
            fmt = fmt or detect_format(raw.record)
            convs.append(to_conversation(raw.record, fmt, spec.columns, spec.tags))
    return convs


def check_data_files(config) -> Check:
    from lmtune.data.registry import resolve_datasets

    specs = resolve_datasets(config.data)  # a DataError names the missing file; guarded makes it a fail
    if not specs:
        return Check("data files", "fail", "the config names no data (data.path or data.dataset)", "add data.path: FILE")
    shown = []
    for spec in specs:
        if spec.hub:
            shown.append(f"{spec.name} (hub dataset, not read here)")
            continue
        shown.append(f"{spec.name}: {len(spec.files)} file(s), first records read ({len(first_conversations(spec, config.data, 2))})")
    return Check("data files", "ok", "; ".join(shown))


def check_dry_run(config) -> Check:
    """Encode a few samples and take one forward/backward step: the whole path a training step takes."""
    from lmtune.data.encode import Collator, Encoder
    from lmtune.data.registry import resolve_datasets
    from lmtune.model.hub import resolve_model
    from lmtune.model.load import load_model, load_tokenizer
    from lmtune.templates.hf import template_for

    started = time.perf_counter()
    folder = resolve_model(config.model.path, config.model.revision)[0]
    tokenizer = load_tokenizer(folder, config.model.trust_remote_code)
    encoder = Encoder.for_data(tokenizer, template_for(config.data.template, tokenizer, config.data.template_file), config.data)
    convs = [c for spec in resolve_datasets(config.data) if not spec.hub for c in first_conversations(spec, config.data, DRY_RUN_SAMPLES)]
    samples = encoder.encode_many(convs[:DRY_RUN_SAMPLES])
    batch = Collator(tokenizer.pad_token_id)([{"input_ids": s.input_ids, "labels": s.labels} for s in samples])
    model = load_model(folder, config.model.dtype, config.model.trust_remote_code)
    loss = _step(model, batch)
    return _dry_run_result(loss, model, len(samples), batch["input_ids"].shape[1], time.perf_counter() - started)


def _step(model, batch) -> float:
    import math

    model.train()
    batch = {k: v.to(model.device) for k, v in batch.items()}
    loss = model(**batch).loss
    loss.backward()
    value = loss.item()
    model.zero_grad(set_to_none=True)
    return value if math.isfinite(value) else float("nan")


def _dry_run_result(loss: float, model, samples: int, length: int, seconds: float) -> Check:
    shown = f"{samples} samples encoded (longest {length} tokens), one forward/backward step on {model.device}: loss {loss:.3f} in {seconds:.1f}s"
    if loss != loss:  # NaN
        return Check("dry run", "fail", shown + ": the loss is not finite", "try model.dtype: float32; if it stays NaN the weights are broken")
    return Check("dry run", "ok", shown)
