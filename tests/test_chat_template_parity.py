"""lmtune's templates against the model families' own chat templates, token for token.

The reference Jinja below follows each family's published chat format (Llama-2-chat, Llama-3
instruct, Qwen's ChatML, FastChat's vicuna_v1.1); the tokenizer is a tiny byte-level BPE that has
the families' special tokens, so special tokens and the text around them meet as they would.
"""

import pytest

from lmtune.data.encode import Encoder
from lmtune.data.records import ASSISTANT, USER, Conversation, Turn
from lmtune.templates.jinja import to_jinja
from lmtune.templates.template import builtin_templates, get_template

OFFICIAL = {
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}{% set turns = messages[1:] %}{% set sys = messages[0]['content'] %}"
        "{% else %}{% set turns = messages %}{% set sys = false %}{% endif %}"
        "{% for m in turns %}{% if loop.index0 == 0 and sys != false %}"
        "{% set text = '<<SYS>>\\n' + sys + '\\n<</SYS>>\\n\\n' + m['content'] %}{% else %}{% set text = m['content'] %}{% endif %}"
        "{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + text.strip() + ' [/INST]' }}"
        "{% else %}{{ ' ' + text.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
    ),
    "llama3": (
        "{% for m in messages %}{% set text = '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' %}"
        "{% if loop.index0 == 0 %}{% set text = bos_token + text %}{% endif %}{{ text }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    "qwen": (
        "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "vicuna": (
        "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}{% set turns = messages[1:] %}"
        "{% else %}{% set sys = \"A chat between a curious user and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions.\" %}{% set turns = messages %}{% endif %}"
        "{{ sys + ' ' }}{% for m in turns %}{% if m['role'] == 'user' %}{{ 'USER: ' + m['content'] + ' ' }}"
        "{% else %}{{ 'ASSISTANT: ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    ),
}
TOKENS = ["<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

CONVERSATIONS = [
    Conversation([Turn(USER, "Hi there"), Turn(ASSISTANT, "Hello! How can I help?")]),
    Conversation([Turn(USER, "中国的首都是哪里？"), Turn(ASSISTANT, "北京。")], system="Answer briefly."),
    Conversation(
        [Turn(USER, "2+2?"), Turn(ASSISTANT, "4"), Turn(USER, "And 3+3?"), Turn(ASSISTANT, "6"), Turn(USER, "谢谢"), Turn(ASSISTANT, "不客气。")],
        system="You are a math tutor.",
    ),
]


@pytest.fixture(scope="module")
def family_tokenizer(tmp_path_factory):
    from lmtune.model.load import load_tokenizer
    from lmtune.tiny import train_tokenizer

    corpus = [t.content for c in CONVERSATIONS for t in c.turns] + list(OFFICIAL.values())
    path = tmp_path_factory.mktemp("family")
    train_tokenizer(corpus * 3, path, vocab_size=500, bos=False, special=TOKENS)
    return load_tokenizer(path)


def messages(conv):
    system = [{"role": "system", "content": conv.system}] if conv.system else []
    return system + [{"role": t.role, "content": t.content} for t in conv.turns]


@pytest.mark.parametrize("name", sorted(OFFICIAL))
@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_generation_prompt_matches_the_official_template_token_for_token(name, index, family_tokenizer):
    conv, _ = CONVERSATIONS[index].without_last_answer()
    official = family_tokenizer.apply_chat_template(messages(conv), chat_template=OFFICIAL[name], tokenize=False, add_generation_prompt=True)
    encoder = Encoder(family_tokenizer, get_template(name), cutoff_len=4096)
    assert "".join(s.text for s in encoder.render(conv)) == official
    assert encoder.prompt_ids(conv) == family_tokenizer(official, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", sorted(OFFICIAL))
@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_training_sample_matches_the_official_template_token_for_token(name, index, family_tokenizer):
    conv = CONVERSATIONS[index]
    template = get_template(name)
    official = family_tokenizer.apply_chat_template(messages(conv), chat_template=OFFICIAL[name], tokenize=False)
    # The official templates close the last answer with the separator that would open the next prompt.
    official_ids = family_tokenizer(official.removesuffix(template.separator) if template.separator else official, add_special_tokens=False)["input_ids"]
    sample = Encoder(family_tokenizer, template, cutoff_len=4096).encode(conv)
    assert sample.input_ids == official_ids


@pytest.mark.parametrize("name", sorted(builtin_templates()))
def test_the_chat_template_lmtune_writes_renders_like_lmtune(name):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<s>": 0, "</s>": 1}, unk_token="</s>")), bos_token="<s>", eos_token="</s>"
    )
    template = get_template(name)
    for conv in CONVERSATIONS:
        for case in (conv, conv.without_last_answer()[0]):
            rendered = tokenizer.apply_chat_template(messages(case), chat_template=to_jinja(template), tokenize=False)
            assert rendered == "".join(s.text for s in template.render(case, "<s>", "</s>"))


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_template_auto_trains_on_the_tokenizers_own_chat_template(name, family_tokenizer):
    from lmtune.templates.hf import template_for

    family_tokenizer.chat_template = OFFICIAL[name]
    try:
        auto = Encoder(family_tokenizer, template_for("auto", family_tokenizer), cutoff_len=4096)
        named = Encoder(family_tokenizer, get_template(name), cutoff_len=4096)
        for conv in CONVERSATIONS:
            prompt, _ = conv.without_last_answer()
            assert auto.prompt_ids(prompt) == named.prompt_ids(prompt)
            auto_sample, named_sample = auto.encode(conv), named.encode(conv)
            n = len(named_sample.input_ids)
            assert auto_sample.input_ids[:n] == named_sample.input_ids
            # The same tokens are trained, except that auto also trains what the official template
            # puts after each answer (qwen's newline), which the named template counts as prompt.
            extra = [a for a, b in zip(auto_sample.labels, named_sample.labels + [-100] * 9) if a != b]
            assert all(b == -100 or a == b for a, b in zip(auto_sample.labels, named_sample.labels))
            assert family_tokenizer.decode(extra).strip() == ""
    finally:
        family_tokenizer.chat_template = None
