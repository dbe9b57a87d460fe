"""`lmtune doctor --model DIR`: will this model load here, and is its tokenizer sane for training?"""

from __future__ import annotations

import shutil
from pathlib import Path

from lmtune.doctor.check import Check, guarded

ROUND_TRIPS = ("中国的首都是北京。我喜欢喝茶！", "The capital of France is Paris. Two plus two is four.")
FA1_NAMES = ("flash_attn_unpadded_qkvpacked_func", "flash_attn_unpadded_kvpacked_func", "flash_attn_unpadded_func")
GIB = 2**30


def model_checks(model: str) -> list[Check]:
    from lmtune.model.hub import resolve_model
    from lmtune.model.load import check_model_dir

    try:
        folder = check_model_dir(resolve_model(model)[0])
    except Exception as exc:  # noqa: BLE001 - ModelError, ConfigError, or the hub's errors
        return [Check("model folder", "fail", " ".join(str(exc).split()), "give a model folder or a hub id that resolves")]
    results = [c for check in (check_model_files, check_ram_for_loading, check_disk_space, check_model_dtype, check_model_code)
               for c in guarded(check, folder)]
    tokenizer = guarded(tokenizer_loads, folder)
    if isinstance(tokenizer[0], Check):
        return results + tokenizer
    for check in (check_special_tokens, check_tokenizer_round_trip, check_chat_template):
        results += guarded(check, tokenizer[0], folder)
    return results


def tokenizer_loads(folder: Path):
    from lmtune.model.load import load_tokenizer

    return load_tokenizer(folder)


def weight_files(folder: Path) -> list[Path]:
    return sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin"), *folder.glob("*.pt")])


def check_model_files(folder: Path) -> Check:
    from lmtune.files import check_model_files as read_headers

    read_headers(folder)  # a ModelError names the broken file; guarded turns it into a fail
    return Check("model files", "ok", f"{folder}: config.json and {len(weight_files(folder))} weight file(s) read")


def available_ram() -> int:
    import psutil  # accelerate's own dependency, so always present with lmtune

    return psutil.virtual_memory().available


def check_ram_for_loading(folder: Path) -> Check:
    """A shard is read whole into RAM; one larger than free memory ends in the kernel's bare 'Killed'."""
    files = weight_files(folder)
    if not files:
        return Check("RAM for loading", "fail", f"{folder} holds no weight files", "download or save the model again")
    largest = max(files, key=lambda f: f.stat().st_size)
    size, free, total = largest.stat().st_size, available_ram(), sum(f.stat().st_size for f in files)
    shown = f"largest shard {largest.name} {size / GIB:.2f} GiB, all weights {total / GIB:.2f} GiB, free RAM {free / GIB:.1f} GiB"
    if size > free:
        return Check("RAM for loading", "fail", f"{shown}: loading is killed by the out-of-memory killer ('Killed')",
                     "free memory or add swap, or reshard smaller: lmtune export --max-shard-size 2GB on a bigger machine")
    if total > free:
        return Check("RAM for loading", "warn", f"{shown}: the whole model does not fit in RAM; loading works only onto a GPU, shard by shard",
                     "train on a GPU with room for it, or quantise (finetune.method: qlora)")
    return Check("RAM for loading", "ok", shown)


def check_disk_space(folder: Path, out: Path | None = None) -> Check:
    """A full-weight checkpoint is the weights plus Adam's two moments: about 3x the model (LoRA ones are small)."""
    out = Path(out or Path.cwd())
    size = sum(f.stat().st_size for f in weight_files(folder))
    free = shutil.disk_usage(out if out.exists() else Path.cwd()).free
    shown = f"{free / GIB:.1f} GiB free in {out}; a full-weight checkpoint of this model takes about {3 * size / GIB:.2f} GiB"
    if free < size:
        return Check("disk space", "fail", f"{shown}: not even the merged model fits", "free disk or set train.output_dir elsewhere")
    if free < 3 * size:
        return Check("disk space", "warn", f"{shown}: full fine-tuning checkpoints will fill the disk (LoRA fits)",
                     "set train.save_total_limit, or train.output_dir on a bigger disk")
    return Check("disk space", "ok", shown)


def check_model_dtype(folder: Path) -> Check:
    """bf16 weights on a card without bf16 run in fp16, where Bloom and other bf16-trained models overflow to NaN."""
    from lmtune.doctor.checks import fp16_only_gpus, gpus, torch_module
    from lmtune.files import read_json

    config = read_json(folder / "config.json")
    dtype = config.get("torch_dtype") or config.get("dtype") or "float32"
    kind = config.get("model_type", "?")
    if not gpus(torch_module()):
        return Check("model dtype", "ok", f"{kind}, saved as {dtype}; on this CPU lmtune loads it as float32")
    if fp16_only_gpus() and (dtype == "bfloat16" or kind == "bloom"):
        return Check("model dtype", "warn", f"{kind}, saved as {dtype}, on a GPU without bf16: it runs in fp16, where "
                     "its activations can overflow (loss NaN, empty or repeated answers)", "model.dtype: float32, or a bf16 card (Ampere+)")
    return Check("model dtype", "ok", f"{kind}, saved as {dtype}; the GPU supports it")


def check_model_code(folder: Path) -> Check:
    """Remote model code written for FlashAttention 1 imports names FA2 renamed (flash_attn_varlen_*)."""
    from lmtune.doctor.checks import numbers, version_of

    users = [f.name for f in folder.glob("*.py") if any(n in f.read_text(errors="replace") for n in FA1_NAMES)]
    if not users:
        return Check("model code", "ok", f"{len(list(folder.glob('*.py')))} Python file(s); none needs FlashAttention 1")
    version = version_of("flash_attn")
    if version and numbers(version)[:1] >= (2,):
        return Check("model code", "fail", f"{', '.join(users)} call(s) FlashAttention 1's flash_attn_unpadded_*, which "
                     f"flash-attn {version} renamed flash_attn_varlen_*", "pip uninstall flash-attn (the code falls back), or edit "
                     "the import to flash_attn_varlen_qkvpacked_func")
    return Check("model code", "ok", f"{', '.join(users)} use FlashAttention 1 names, fine with flash-attn {version or 'absent'}")


def check_special_tokens(tokenizer, folder: Path) -> Check:
    from lmtune.files import read_json

    ids = f"bos {tokenizer.bos_token_id}, eos {tokenizer.eos_token_id} {tokenizer.eos_token!r}, pad {tokenizer.pad_token_id}"
    if tokenizer.eos_token_id is None:
        return Check("special tokens", "fail", f"{ids}: no EOS, so answers cannot be taught to end", "set eos_token in tokenizer_config.json")
    wanted = read_json(folder / "config.json").get("eos_token_id")
    wanted = wanted if isinstance(wanted, list) else [wanted] if wanted is not None else []
    if wanted and tokenizer.eos_token_id not in wanted:  # early Llama conversions: tokenizer eos 0 (unk), model eos 2
        return Check("special tokens", "fail", f"{ids}, but config.json says eos_token_id {wanted[0]}: the model is trained "
                     "to end with a token generation never stops at", f"set eos_token in tokenizer_config.json to the token with id {wanted[0]}")
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        return Check("special tokens", "ok", f"{ids}: pad == eos is safe in lmtune, which masks padding by the attention "
                     "mask; collators that mask labels by pad id (other tools) would never train EOS")
    return Check("special tokens", "ok", ids)


def check_tokenizer_round_trip(tokenizer, folder: Path) -> Check:
    lost = [t for t in ROUND_TRIPS if tokenizer.decode(tokenizer.encode(t, add_special_tokens=False)).strip() != t]
    if lost:
        back = tokenizer.decode(tokenizer.encode(lost[0], add_special_tokens=False))
        return Check("tokenizer round trip", "fail", f"{lost[0]!r} decodes as {back!r}: training data would be altered",
                     "use the tokenizer saved with the model (a vocabulary without these characters maps them to unk)")
    return Check("tokenizer round trip", "ok", "a Chinese and an English sentence decode to themselves")


def check_chat_template(tokenizer, folder: Path) -> Check:
    if getattr(tokenizer, "chat_template", None):
        return Check("chat template", "ok", "the tokenizer has a chat_template (data.template: auto can use it)")
    return Check("chat template", "warn", "the tokenizer has no chat_template: data.template: auto cannot be used",
                 "name a template (lmtune templates); lmtune train writes it into the tokenizer it saves")
