"""`lmtune train`: config → data → model → Trainer → save → verify, top to bottom."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from lmtune.config import RunConfig, resolve_paths, save_run_config
from lmtune.data.encode import Collator, Encoder, Sample
from lmtune.data.load import LoadReport, ReadData
from lmtune.data.pack import PackedCollator, check_packing_supported, pack, uses_flash_attention
from lmtune.data.pref import TRL_STAGES
from lmtune.data.prepare import Prepared, prepare
from lmtune.data.pretrain import blocks
from lmtune.data.registry import resolve_datasets
from lmtune.errors import ConfigError
from lmtune.model.adapters import apply_method, verify_adapter
from lmtune.model.hub import resolve_model
from lmtune.model.load import (
    align_special_tokens,
    check_model_dir,
    check_token_ids,
    load_model,
    load_tokenizer,
    quantization,
    resolve_dtype,
)
from lmtune.templates.jinja import to_jinja
from lmtune.templates.hf import template_for
from lmtune.templates.template import Template, save_template
from lmtune.train.arguments import trainer_arguments
from lmtune.train.callbacks import MetricsFile, ProgressLines, plot_loss
from lmtune.train.checkpoints import MarkComplete, mark_complete, resume_point, step_of
from lmtune.train.guards import Guards
from lmtune.train.outdir import claim

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    report: LoadReport
    final_loss: float | None
    loss_plot: Path | None
    main_process: bool = True  # under torchrun, only rank 0 writes and reports


def train(config: RunConfig, read: ReadData | None = None) -> TrainResult:
    """`read`: the data's records, when launch.checked_run read them already."""
    from accelerate import PartialState

    config = resolve_paths(config)
    output_dir = Path(config.train.output_dir)
    resolve_datasets(config.data)  # missing files and unknown dataset names fail before any loading
    _check_engines(config)
    model_dir = _model_dir(config)  # before run.yaml is written, which then names the commit of a hub model
    # Under torchrun this joins the process group (gloo on CPU, NCCL on GPUs); without cpu=True
    # accelerate would not see a CPU-only launch as distributed at all.
    processes = PartialState(cpu=not torch.cuda.is_available())
    main = processes.is_main_process
    if main:
        claim(output_dir, config.train.resume, config.train.overwrite_output_dir)
        save_run_config(config, output_dir)  # written first, so even a failed run says what it was

    tokenizer = load_tokenizer(model_dir, config.model.trust_remote_code)
    template = template_for(config.data.template, tokenizer, config.data.template_file)
    encoder = Encoder.for_data(tokenizer, template, config.data)
    with processes.main_process_first():  # rank 0 encodes and caches; the others read its cache
        data = prepare(config.data, encoder, config.train.seed, read)
    if main:
        _log_data(data, output_dir)

    model = _load_model(config, model_dir)
    align_special_tokens(model, tokenizer)
    check_token_ids(max(max(s.input_ids) for s in data.train + data.dev), model, tokenizer)
    model, initial = _prepare_method(model, config)

    checkpoint = resume_point(output_dir, config.train.resume)
    if checkpoint:
        log.info("resuming from %s (step %d)", checkpoint, step_of(checkpoint))
    elif config.train.resume == "auto":
        log.info("resume: auto found no complete checkpoint in %s; starting at step 1", output_dir)
    if config.data.stage == "grpo":  # TRL is imported only for the stages that train on it
        from lmtune.train.grpo import build_grpo_trainer

        trainer = build_grpo_trainer(config, model, tokenizer, data, checkpoint, main)
    elif config.data.stage in TRL_STAGES:
        from lmtune.train.pref import build_pref_trainer

        trainer = build_pref_trainer(config, model, tokenizer, data, checkpoint, main)
    else:
        trainer = _build_trainer(config, model, tokenizer, data, checkpoint, main)
    try:
        outcome = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except KeyboardInterrupt:
        _save_on_interrupt(trainer, output_dir, processes.num_processes > 1 or bool(config.train.deepspeed))
        raise

    trainer.save_model(str(output_dir))  # writes on rank 0 only
    if not main:
        return TrainResult(output_dir, data.report, outcome.training_loss, None, main_process=False)
    if isinstance(template, Template):  # with template: auto the tokenizer already carries its chat_template
        if template.thinking and not any(f.reasoning for f in data.report.files.values()):
            # Trained on answers without reasoning, all after an empty think block: chat and serve
            # prompt the same way unless asked to think.
            template = replace(template, thinking_default=False)
        save_template(template, output_dir)
        tokenizer.chat_template = to_jinja(template)  # transformers and vLLM then format prompts as training did
    tokenizer.save_pretrained(output_dir)
    if initial is not None:
        verify_adapter(output_dir, initial)
    return TrainResult(output_dir, data.report, outcome.training_loss, plot_loss(output_dir))


def _save_on_interrupt(trainer, output_dir: Path, distributed: bool) -> None:
    """Ctrl-C: keep what was learned as a complete checkpoint that `resume: auto` continues from.
    Several processes (or DeepSpeed) would have to save together, which an interrupt cannot promise."""
    step = trainer.state.global_step
    if step == 0:
        log.warning("interrupted before the first step: nothing to save")
    elif distributed:
        log.warning(
            "interrupted at step %d; nothing saved now (several processes cannot save together on an interrupt): "
            "set train.save_strategy: steps and train.save_steps to keep checkpoints, then train.resume=auto", step
        )
    else:
        trainer._save_checkpoint(trainer.model, trial=None)  # the Trainer's own save: weights, optimizer, RNG, state
        mark_complete(output_dir / f"checkpoint-{step}", step)
        log.warning("interrupted at step %d: saved %s; continue with train.resume=auto", step, output_dir / f"checkpoint-{step}")


def _check_engines(config: RunConfig) -> None:
    """Optional engines fail here, before anything is loaded, with what to do; so do the ones that
    would otherwise quietly do something else on this machine."""
    args, gpu = config.train.training_arguments(), torch.cuda.is_available()

    def need(package: str, what: str) -> None:
        if importlib.util.find_spec(package.replace("-", "_")) is None:
            raise ConfigError(f"{what} needs the {package} package: pip install {package}")

    if config.train.deepspeed:
        need("deepspeed", "train.deepspeed")
    if args.get("fsdp") and not gpu:
        raise ConfigError(
            "train.fsdp: accelerate shards with FSDP on GPUs only; on this CPU machine it would quietly run plain "
            "DDP instead. Drop train.fsdp (`--nproc N` alone gives DDP), or run on CUDA GPUs"
        )
    optim = str(args.get("optim", ""))
    if any(mark in optim for mark in ("8bit", "paged", "bnb")):
        if not gpu:
            raise ConfigError(f"train.optim: {optim} is a bitsandbytes optimizer and needs a CUDA GPU; use adamw_torch here")
        need("bitsandbytes", f"train.optim: {optim}")
    trackers = config.train.report_to if isinstance(config.train.report_to, list) else [config.train.report_to]
    for tracker in ("tensorboard", "wandb"):
        if tracker in trackers:
            need(tracker, f"train.report_to: {tracker}")
    if args["use_liger_kernel"]:
        if not gpu:
            raise ConfigError("train.liger: Liger's kernels are Triton GPU kernels and need a CUDA GPU; none is visible here")
        need("liger-kernel", "train.liger")


def _log_data(data: Prepared, output_dir: Path) -> None:
    log.info("data: %s; %d truncated to cutoff_len", data.report.summary(), data.truncated)
    if data.conversations and len(data.train) > data.conversations:
        log.info("data: %d training samples from %d conversations: answers the template shows otherwise later "
                 "(past reasoning dropped) are trained in their own context (data.rewritten_answers)", len(data.train), data.conversations)
    for file in data.report.files.values():
        if file.encoding not in ("utf-8", "utf-8-sig", ""):  # said, so a wrong guess is seen before hours of training
            log.info("data: %s read as %s text", file.path, file.encoding)
    for path in data.report.write(output_dir):
        log.warning("data: records set aside are listed in %s", path)


def _rows(samples: list[Sample]) -> list[dict]:
    return [{"input_ids": s.input_ids, "labels": s.labels} for s in samples]


def _model_dir(config: RunConfig) -> Path:
    """The model's local folder. A hub id is fetched into (or, offline, read from) the Hugging Face
    cache, and the commit it resolved to is kept as model.revision, so the run can be repeated exactly."""
    folder, config.model.revision = resolve_model(config.model.path, config.model.revision)
    return check_model_dir(folder)


def _load_model(config: RunConfig, model_dir: Path):
    dtype = config.model.dtype
    if config.finetune.method in ("full", "freeze") and resolve_dtype(dtype) == torch.float16:
        dtype = "float32"  # fp16 master weights cannot be unscaled; AMP keeps fp32 weights and fp16 math
    quant = quantization(config.finetune.quant) if config.finetune.method == "qlora" else None
    model = load_model(model_dir, dtype, config.model.trust_remote_code, quantization_config=quant, reward=config.data.stage == "rm")
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)  # norms in fp32, input grads for checkpointing
    return model


def _prepare_method(model, config: RunConfig):
    """Returns the model to train and, for adapters, their initial tensors (for the save check)."""
    from transformers import set_seed

    set_seed(config.train.seed)  # LoRA's A matrices and prompt embeddings are drawn here
    model, initial = apply_method(model, config.finetune)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("%s: %s trainable parameters of %s (%.3f%%)", config.finetune.method, f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return model, initial


def _batches(config: RunConfig, model, tokenizer, data: Prepared):
    """Rows and collator: one sample per row (padded), or several per row with data.packing."""
    if not config.data.packing:
        if config.data.stage == "pt":  # documents end to end in full blocks: no padding, nothing dropped
            cutoff = config.data.cutoff_len
            train_rows = blocks(data.train, cutoff)
            log.info("pre-training: %s tokens in %d blocks of %d", f"{sum(len(r['input_ids']) for r in train_rows):,}", len(train_rows), cutoff)
            return train_rows, blocks(data.dev, cutoff), Collator(tokenizer.pad_token_id)
        return _rows(data.train), _rows(data.dev), Collator(tokenizer.pad_token_id)
    check_packing_supported(model)
    train_rows, dev_rows = pack(data.train, config.data.cutoff_len), pack(data.dev, config.data.cutoff_len)
    log.info("packing: %d samples in %d rows of up to %d tokens", len(data.train), len(train_rows), config.data.cutoff_len)
    collator = PackedCollator(tokenizer.pad_token_id, block_mask=not uses_flash_attention(model), dtype=model.dtype)
    return train_rows, dev_rows, collator


def _build_trainer(config: RunConfig, model, tokenizer, data: Prepared, checkpoint=None, main: bool = True):
    from transformers import PrinterCallback, Trainer, TrainingArguments

    train_rows, dev_rows, collator = _batches(config, model, tokenizer, data)
    args = trainer_arguments(config, bool(dev_rows))
    if not config.data.packing and config.data.stage == "sft":
        # Batches of similar length (transformers' LengthGroupedSampler: shuffled, then sorted within
        # mega-batches of 50 batches): most of the padding goes, and the longest batch comes first,
        # so a run that would run out of memory does so at once.
        args.setdefault("train_sampling_strategy", "group_by_length")
    try:
        training_args = TrainingArguments(**args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"train: {' '.join(str(exc).split())}") from exc
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_rows,
        eval_dataset=dev_rows or None,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[
            MarkComplete(),
            Guards("fp16" if training_args.fp16 else "bf16" if training_args.bf16 else None),
            *(  # one process writes the metrics and reports progress
                [MetricsFile(Path(config.train.output_dir), collator, step_of(checkpoint) if checkpoint else 0), ProgressLines(log.info)]
                if main
                else []
            ),
        ],
    )
    trainer.remove_callback(PrinterCallback)  # it prints raw dicts; ProgressLines says the same readably
    return trainer
