"""The tokenizer as llama.cpp reads it from a GGUF file: its vocabulary (`tokenizer.ggml.tokens`,
token types, BPE merges or SentencePiece scores), the pre-tokenizer llama.cpp must split text with
(`tokenizer.ggml.pre`), the special ids, whether BOS is added, and the stop token.

Where the base model came from a GGUF file, its tokenizer keys are carried over as they were: that
file is what llama.cpp already tokenized correctly (transformers' reading of a GGUF rebuilds the
tokenizer and can lose details, such as SmolLM's one-token digits).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from lmtune.errors import LmtuneError

# A byte-level BPE tokenizer's split rules (tokenizer.json's pre_tokenizer) as llama.cpp names them.
QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = QWEN2_SPLIT.replace(r"|\p{N}|", r"|\p{N}{1,3}|")
SPLITS = {QWEN2_SPLIT: "qwen2", LLAMA3_SPLIT: "llama-bpe"}
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def write_vocab(writer, tokenizer, tokenizer_dir: Path, vocab_size: int, source_gguf: Path | None, add_bos: bool) -> None:
    """Every tokenizer key llama.cpp reads, from the source GGUF when it still fits the vocabulary.
    add_bos: whether a prompt starts with BOS that the template does not write, as lmtune's encoder
    decides it (a template that writes {bos} itself must not get a second one from llama.cpp)."""
    import gguf

    if source_gguf is not None and _copy_gguf_vocab(writer, source_gguf, len(tokenizer)):
        writer.add_add_bos_token(add_bos)
        writer.add_add_eos_token(False)
        return
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8")) if (tokenizer_dir / "tokenizer.json").is_file() else None
    if data is None:
        raise LmtuneError(f"GGUF export needs the fast tokenizer's tokenizer.json in {tokenizer_dir}; save the tokenizer with transformers first")
    model = data["model"]
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        _sentencepiece(writer, tokenizer, vocab_size, _merge_ranks(model.get("merges") or []))
    elif model.get("type") == "BPE":
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre_tokenizer(data, tokenizer_dir))
        tokens, types = _bpe_tokens(tokenizer, vocab_size)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
    else:
        raise LmtuneError(f"GGUF export: the {model.get('type')} tokenizer in {tokenizer_dir} is not written yet (BPE and SentencePiece-BPE are)")
    # SpecialVocab's guesses at the post-processor log warnings about what is set explicitly below.
    logging.getLogger("gguf.vocab").setLevel(logging.ERROR)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=model.get("type") == "BPE" and not model.get("byte_fallback"), n_vocab=vocab_size)
    special.chat_template = None  # the run's template is written by the caller
    special.add_special_token = {"bos": add_bos, "eos": False}  # lmtune never has the tokenizer append EOS to a prompt
    special.add_to_gguf(writer, quiet=True)


def pre_tokenizer(data: dict, where: Path) -> str:
    """llama.cpp's name for how this tokenizer splits text before BPE, or a refusal: a wrong one
    tokenizes differently from the model's training, silently."""
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # one token per digit, then GPT-2's rules (StarCoder, SmolLM)
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        name = SPLITS.get(steps[0].get("pattern", {}).get("Regex"))
        if name:
            return name
    raise LmtuneError(f"GGUF export: the tokenizer in {where} splits text in a way llama.cpp has no name for here "
                      f"({json.dumps(pre)[:120]}); it knows GPT-2's, SmolLM's, Llama 3's and Qwen2's byte-level rules")


def _bpe_tokens(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id (unused ids padded up to the model's vocab size), each typed as llama.cpp wants:
    special added tokens are CONTROL (never split out of plain text), other added ones USER_DEFINED."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _merge_ranks(merges: list) -> dict[str, int]:
    """Each merged token's rank: the first merge (of tokenizer.json's list, in order) that makes it."""
    ranks: dict[str, int] = {}
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        ranks.setdefault(left + right, rank)
    return ranks


def _sentencepiece(writer, tokenizer, vocab_size: int, ranks: dict[str, int]) -> None:
    """A SentencePiece BPE vocabulary (Llama 2, Mistral, Yi) as llama.cpp's "llama" tokenizer, which
    merges the adjacent pair of highest score first: the score is minus the merge's rank, so it
    merges in the order transformers' BPE does (ids are not that order: Mistral's "▁▁" is id 259)."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    specials = set(tokenizer.all_special_ids)
    tokens, scores, types = [], [], []
    for i in range(vocab_size):
        piece = by_id.get(i, f"[PAD{i}]")
        if i == tokenizer.unk_token_id:
            kind = gguf.TokenType.UNKNOWN
        elif i not in by_id:
            kind = gguf.TokenType.UNUSED
        elif BYTE_TOKEN.fullmatch(piece):
            kind = gguf.TokenType.BYTE
        elif i in specials:
            kind = gguf.TokenType.CONTROL
        elif i in tokenizer.added_tokens_decoder:
            kind = gguf.TokenType.USER_DEFINED
        else:
            kind = gguf.TokenType.NORMAL
        tokens.append(piece)
        scores.append(-float(ranks.get(piece, len(ranks) + i)) if kind == gguf.TokenType.NORMAL else 0.0)
        types.append(kind)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix(True)


def _copy_gguf_vocab(writer, source: Path, vocab_len: int) -> bool:
    """The source file's tokenizer keys (less its chat template), if its vocabulary is the run's."""
    from gguf import GGUFReader, GGUFValueType

    fields = GGUFReader(source).fields
    tokens = fields.get("tokenizer.ggml.tokens")
    if tokens is None or len(tokens.data) != vocab_len:
        return False  # the vocabulary grew (lmtune tokenizer extend): write the run's own
    for key, field in fields.items():
        if key.startswith("tokenizer.ggml.") and key not in ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token"):
            sub = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
    return True


def token_id(tokenizer, text: str) -> int | None:
    """The id of a text that is one token of the vocabulary, else None."""
    found = tokenizer.convert_tokens_to_ids(text)
    return found if isinstance(found, int) and found != tokenizer.unk_token_id and tokenizer.convert_ids_to_tokens(found) == text else None
