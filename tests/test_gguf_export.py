"""`lmtune export --format gguf` without llama.cpp (that is tests/test_llama_cpp.py): the file read
back by the `gguf` package's reader (every key and tensor meant), and by lmtune itself as model.path
(the same logits); the refusals; the Ollama Modelfile, its TEMPLATE rendered with Go's template
semantics (tests/gotemplate.py) against lmtune's own rendering of the same conversations."""

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import lmtune, model_run, write_config
from gotemplate import render as go_render

from lmtune.data.records import ASSISTANT, USER, Conversation, Turn
from lmtune.model.ollama import go_template, infer_template, ollama_template
from lmtune.templates.template import builtin_templates

BOS, EOS = "<s>", "</s>"
TURNS = [Turn(USER, "中国的首都是哪里？"), Turn(ASSISTANT, "中国的首都是北京。"), Turn(USER, "And of France?"),
         Turn(ASSISTANT, "Paris is the capital of France."), Turn(USER, "谢谢！Thanks.")]
CONVERSATIONS = [Conversation(TURNS[:n], system=s) for n in (1, 3, 5) for s in (None, "You answer briefly. 回答要简短。")]
HPARAMS = ["general.architecture", "general.type", "general.name", "llama.block_count", "llama.context_length",
           "llama.embedding_length", "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
           "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size", "llama.rope.dimension_count",
           "llama.attention.key_length", "llama.attention.value_length", "general.file_type", "general.quantization_version"]
VOCAB = ["tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
         "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
         "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token", "tokenizer.chat_template", "tokenizer.ggml.eot_token_id"]
LAYER = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "attn_norm", "ffn_norm"]


@pytest.fixture(scope="module")
def chatml_run(tmp_path_factory, llama_dir):
    """The tiny Llama as a trained run whose template is ChatML (its end token, <|im_end|>, is not EOS)."""
    return model_run(llama_dir, tmp_path_factory.mktemp("run") / "chatml", "chatml")


def _export(run, out, *flags):
    ran = lmtune("export", "--model", run, "--out", out, "--format", "gguf", *flags)
    assert ran.returncode == 0, ran.stderr
    return ran


def test_the_reader_lists_every_key_and_tensor_and_lmtune_reads_the_file_back(chatml_run, tmp_path, monkeypatch):
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    from lmtune.model.gguf import dequantized

    ran = _export(chatml_run, tmp_path / "gguf", "--quant", "f32")
    assert f"ollama create chatml -f {tmp_path / 'gguf' / 'ollama' / 'Modelfile'}" in ran.stderr
    reader = GGUFReader(tmp_path / "gguf" / "model-f32.gguf")
    assert [k for k in reader.fields if not k.startswith("GGUF.")] == HPARAMS + VOCAB
    tensors = {t.name: t.tensor_type.name for t in reader.tensors}
    assert list(tensors) == ["token_embd.weight", *(f"blk.{i}.{n}.weight" for i in range(2) for n in LAYER), "output_norm.weight"]
    assert set(tensors.values()) == {"F32"}  # tied embeddings: no output.weight, llama.cpp reuses token_embd
    fields = reader.fields
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2" and fields["tokenizer.ggml.add_bos_token"].contents() is True
    assert fields["tokenizer.ggml.eot_token_id"].contents() == fields["tokenizer.ggml.tokens"].contents().index("<|im_end|>")
    assert "<|im_start|>assistant\\n" in fields["tokenizer.chat_template"].contents()

    monkeypatch.setenv("LMTUNE_HOME", str(tmp_path / "home"))  # the same code that reads a user's .gguf
    back = dequantized(tmp_path / "gguf" / "model-f32.gguf")
    ids = torch.tensor([[0, 5, 9, 42, 7, 3, 200]])
    with torch.no_grad():
        original = AutoModelForCausalLM.from_pretrained(chatml_run)(ids).logits
        read = AutoModelForCausalLM.from_pretrained(back)(ids).logits
    assert torch.equal(original, read)  # f32 both ways, q/k rows permuted for llama.cpp and back


def test_q8_0_quantizes_matrices_and_keeps_norms_f32(chatml_run, tmp_path):
    from gguf import GGUFReader

    _export(chatml_run, tmp_path / "q8", "--quant", "q8_0")
    types = {t.name: t.tensor_type.name for t in GGUFReader(tmp_path / "q8" / "model-q8_0.gguf").tensors}
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"


@pytest.mark.parametrize(("flags", "message"), [
    (["--quant", "q4_k_m"], "error: --quant q4_k_m: writing Q4_K_M needs llama.cpp's compiled llama-quantize; export --quant f16 "
                            "(or f32, bf16, q8_0 here), then run: llama-quantize OUT/MODEL-f16.gguf OUT/MODEL-q4_k_m.gguf Q4_K_M"),
    (["--quant", "int3"], "error: --quant int3: choose one of f32, f16, bf16, q8_0 (others via llama.cpp's llama-quantize on the f16 file)"),
    (["--adapter-only"], "error: --adapter-only needs --adapter DIR (the LoRA adapter to write as GGUF)"),
])
def test_bad_flags_are_refused_in_one_line(chatml_run, tmp_path, flags, message):
    ran = lmtune("export", "--model", chatml_run, "--out", tmp_path / "x", "--format", "gguf", *flags)
    assert ran.returncode == 2 and ran.stderr.strip() == message and not (tmp_path / "x").exists(), ran.stderr


def test_an_architecture_llama_cpp_is_not_given_is_refused_by_name(tmp_path, tokenizer):
    from lmtune.tiny import build_model

    build_model(tokenizer, tmp_path / "bloom", arch="bloom", hidden_size=32, layers=1, heads=2)
    ran = lmtune("export", "--model", tmp_path / "bloom", "--out", tmp_path / "x", "--format", "gguf")
    assert ran.returncode == 2 and ran.stderr.strip() == (
        "error: GGUF export of BloomForCausalLM is not supported; it exports LlamaForCausalLM, MistralForCausalLM, "
        "Qwen2ForCausalLM, Qwen3ForCausalLM (or export safetensors without --format gguf)"), ran.stderr


def test_the_modelfile_names_the_file_the_stops_and_the_default_system_prompt(llama_dir, tmp_path):
    run = model_run(llama_dir, tmp_path / "qwen", "qwen")
    _export(run, tmp_path / "out")
    assert (tmp_path / "out" / "ollama" / "Modelfile").read_text(encoding="utf-8") == MODELFILE


MODELFILE = '''# Made by lmtune export from qwen (template: qwen)
FROM ../model-f16.gguf
TEMPLATE """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ range $i, $m := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}{{ if eq $m.Role "user" }}<|im_start|>user
{{ $m.Content }}<|im_end|>
<|im_start|>assistant
{{ else if eq $m.Role "assistant" }}{{ $m.Content }}{{ if not $last }}<|im_end|>
{{ end }}{{ end }}{{ end }}"""
SYSTEM """You are a helpful assistant."""
PARAMETER stop "<|im_end|>"
'''


def _ollama_values(conv: Conversation, modelfile_system: str) -> dict:
    """What Ollama hands TEMPLATE for a chat request: the Modelfile's SYSTEM as a first system message
    when the request has none; .System all system messages joined; .Messages every message."""
    system = conv.system if conv.system is not None else modelfile_system
    messages = ([{"Role": "system", "Content": system}] if system else []) + [{"Role": t.role, "Content": t.content} for t in conv.turns]
    return {"System": system or "", "Messages": messages}


class _Job:  # what ollama_template reads of an export
    def __init__(self, template, tokenizer=None):
        self.template, self.tokenizer = template, tokenizer


EMITTED = [t for t in builtin_templates().values() if ollama_template(_Job(t))[0] is not None]


@pytest.mark.parametrize("template", EMITTED, ids=[t.name for t in EMITTED])
def test_the_go_template_renders_every_conversation_as_lmtune_does(template):
    go = go_template(template, BOS, EOS)
    for conv in CONVERSATIONS:
        expected = "".join(s.text for s in template.render(conv, bos=BOS, eos=EOS))
        assert go_render(go, _ollama_values(conv, template.default_system)) == expected, conv


def test_templates_that_the_go_template_leaves_out_are_few():
    assert sorted(set(builtin_templates()) - {t.name for t in EMITTED}) == []


REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "chat-templates" / "llama.cpp-models-templates"
OFFICIAL = {  # template file: (BOS, EOS, other special tokens it writes)
    "Qwen-Qwen2.5-7B-Instruct": (None, "<|im_end|>", ["<|im_start|>"]),  # ChatML, a default system prompt, tool branches
    "meta-llama-Llama-3.2-3B-Instruct": ("<|begin_of_text|>", "<|eot_id|>", ["<|start_header_id|>", "<|end_header_id|>"]),  # a dated system block always
}


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="shared/reference (the official chat templates) is not beside the repository")
@pytest.mark.parametrize("name", OFFICIAL)
def test_template_auto_is_read_off_the_tokenizers_own_jinja_template(tokenizer_dir, name):
    from lmtune.model.load import load_tokenizer

    bos, eos, specials = OFFICIAL[name]
    tok = load_tokenizer(tokenizer_dir)
    tok.add_special_tokens({"additional_special_tokens": [t for t in (bos, eos, *specials) if t]})
    tok.bos_token, tok.eos_token = bos or tok.bos_token, eos
    tok.chat_template = (REFERENCE / f"{name}.jinja").read_text(encoding="utf-8")
    inferred = infer_template(tok)
    go = go_template(inferred, tok.bos_token, tok.eos_token)
    for conv in CONVERSATIONS:
        messages = ([{"role": "system", "content": conv.system}] if conv.system else []) + [{"role": t.role, "content": t.content} for t in conv.turns]
        expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert go_render(go, _ollama_values(conv, inferred.default_system)) == expected


def test_a_jinja_template_beyond_turns_gives_no_go_template(tokenizer):
    tok = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tok.chat_template = "{% for m in messages %}{{ m['content'] | upper }}{{ eos_token }}{% endfor %}"
    assert infer_template(tok) is None



def _lora(llama_dir, folder, **options):
    """A LoRA adapter folder as training leaves it (peft's files and a run.yaml naming the base)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(llama_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], **options))
    for name, weight in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(weight)  # trained, not peft's zeros
    model.save_pretrained(folder)
    write_config(folder / "run.yaml", model={"path": str(llama_dir)}, train={"output_dir": str(folder)},
                 data={"path": ["unused.jsonl"], "template": "chatml"})
    return model


def test_adapter_only_writes_each_lora_pair_with_its_scaling_in_b(llama_dir, tmp_path):
    from gguf import GGUFReader

    model = _lora(llama_dir, tmp_path / "lora")
    ran = lmtune("export", "--adapter", tmp_path / "lora", "--out", tmp_path / "gguf", "--format", "gguf", "--adapter-only", "--quant", "f32")
    assert ran.returncode == 0, ran.stderr
    reader = GGUFReader(tmp_path / "gguf" / "adapter-f32.gguf")
    assert reader.fields["general.type"].contents() == "adapter" and reader.fields["adapter.lora.alpha"].contents() == 4.0  # = r: llama.cpp scales by 1
    names = [t.name for t in reader.tensors]
    assert names == [f"blk.{i}.attn_{m}.weight.lora_{ab}" for i in range(2) for m in ("q", "v") for ab in ("a", "b")]
    v_b = next(t for t in reader.tensors if t.name == "blk.0.attn_v.weight.lora_b").data
    expected = model.base_model.model.model.layers[0].self_attn.v_proj.lora_B["default"].weight.detach().numpy() * 2.0  # alpha/r
    assert np.allclose(v_b, expected)


def test_a_dora_adapter_is_refused_for_llama_cpps_lora(llama_dir, tmp_path):
    _lora(llama_dir, tmp_path / "dora", use_dora=True)
    ran = lmtune("export", "--adapter", tmp_path / "dora", "--out", tmp_path / "x", "--format", "gguf", "--adapter-only")
    assert ran.returncode == 2 and ran.stderr.strip() == (
        f"error: {tmp_path / 'dora'}: llama.cpp's --lora cannot apply DoRA magnitudes; export the merged model instead (drop --adapter-only)")
