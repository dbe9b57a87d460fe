"""lmtune's templates against the model families' own chat templates, token for token.

The reference Jinja below is written for these tests to give the same output as each family's
official chat template (Llama-2-chat, Llama-3 and 3.1 instruct, ChatML, Qwen1.5/2, Qwen2.5, Qwen3,
FastChat's vicuna_v1.1, ChatGLM3, GLM-4-9B-Chat, Baichuan2's build_chat_input), tools included
where the family has them. The tokenizer is a tiny byte-level BPE that has the families' special
tokens, so special tokens and the text around them meet as they would.

Whole conversations must render exactly as the official template renders them, except that
ChatGLM3, GLM-4 and Baichuan2 end the last answer with EOS (their own fine-tuning scripts append it:
the official history has no end token between turns).
"""

import json

import pytest

from lmtune.data.encode import IGNORE_INDEX, Encoder
from lmtune.data.records import ASSISTANT, FUNCTION, OBSERVATION, USER, Conversation, Turn
from lmtune.templates.jinja import to_jinja
from lmtune.templates.template import builtin_templates, get_template

QWEN_TOOLS = (
    "'# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>'"
    " }}{% for t in tools %}{{ '\\n' + (t | tojson) }}{% endfor %}{{ '\\n</tools>\\n\\nFor each function call, return a json "
    "object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    "{\"name\": <function-name>, \"arguments\": <args-json-object>}\\n</tool_call>'"
)
QWEN_TOOL_MESSAGE = (
    "{% elif m['role'] == 'tool' %}{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{ '<|im_start|>user' }}{% endif %}"
    "{{ '\\n<tool_response>\\n' + m['content'] + '\\n</tool_response>' }}"
    "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{ '<|im_end|>\\n' }}{% endif %}"
)
QWEN_CALLS = (
    "{% for c in m.tool_calls %}{% if (loop.first and content) or not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ '<tool_call>\\n{\"name\": \"' + c.function.name + '\", \"arguments\": ' + (c.function.arguments | tojson) + '}\\n</tool_call>' }}{% endfor %}"
)
GLM4_TOOLS = (
    "{{ '<|system|>\\n你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，你的任务是针对用户的问题和要求提供适当的答复和支持。"
    "\\n\\n# 可用工具' }}{% for tool in item['tools'] %}{% if tool['type'] == 'function' %}"
    "{{ '\\n\\n## ' + tool['function']['name'] + '\\n\\n' + tool['function'] | tojson(indent=4) + '\\n在调用上述函数时，请使用 Json 格式表示调用的参数。' }}"
    "{% endif %}{% endfor %}"
)

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
    # Llama 3.1 with its default tools_in_user_message: the definitions open the first user message.
    "llama3.1": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] | trim %}{% set rest = messages[1:] %}"
        "{% else %}{% set sys = '' %}{% set rest = messages %}{% endif %}"
        "{{ '<|start_header_id|>system<|end_header_id|>\\n\\n' }}{% if tools is not none %}{{ 'Environment: ipython\\n' }}{% endif %}"
        "{{ 'Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n' + sys + '<|eot_id|>' }}"
        "{% if tools is not none %}{{ '<|start_header_id|>user<|end_header_id|>\\n\\nGiven the following functions, please respond with "
        "a JSON for a function call with its proper arguments that best answers the given prompt.\\n\\nRespond in the format "
        "{\"name\": function name, \"parameters\": dictionary of argument name and its value}.Do not use variables.\\n\\n' }}"
        "{% for t in tools %}{{ t | tojson(indent=4) + '\\n\\n' }}{% endfor %}{{ rest[0]['content'] | trim + '<|eot_id|>' }}"
        "{% set rest = rest[1:] %}{% endif %}"
        "{% for m in rest %}{% if m.tool_calls %}{% set c = m.tool_calls[0].function %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n{\"name\": \"' + c.name + '\", \"parameters\": ' + (c.arguments | tojson) + '}<|eot_id|>' }}"
        "{% elif m['role'] == 'tool' %}{{ '<|start_header_id|>ipython<|end_header_id|>\\n\\n' }}"
        "{% if m['content'] is mapping or m['content'] is iterable %}{{ m['content'] | tojson }}{% else %}{{ m['content'] }}{% endif %}{{ '<|eot_id|>' }}"
        "{% else %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    "chatml": (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "qwen": (
        "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "qwen2.5": (
        "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
        "{% else %}{% set sys = 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' %}{% endif %}"
        "{{ '<|im_start|>system\\n' + sys }}{% if tools %}{{ '\\n\\n' + " + QWEN_TOOLS + " }}{% endif %}{{ '<|im_end|>\\n' }}"
        "{% for m in messages %}{% set content = m['content'] %}"
        "{% if m['role'] == 'user' or (m['role'] == 'assistant' and not m.tool_calls) %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{% elif m['role'] == 'assistant' %}{{ '<|im_start|>assistant' }}{% if content %}{{ '\\n' + content }}{% endif %}"
        "{% for c in m.tool_calls %}{{ '\\n<tool_call>\\n{\"name\": \"' + c.function.name + '\", \"arguments\": ' + (c.function.arguments | tojson) + '}\\n</tool_call>' }}{% endfor %}"
        "{{ '<|im_end|>\\n' }}" + QWEN_TOOL_MESSAGE + "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    # Qwen3: the last answer after the last user query gets a think block (empty for answers
    # without reasoning); earlier answers lose theirs; enable_thinking=False closes an empty one
    # in the generation prompt.
    "qwen3": (
        "{% if tools %}{{ '<|im_start|>system\\n' }}{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}"
        "{{ " + QWEN_TOOLS + " }}{{ '<|im_end|>\\n' }}"
        "{% elif messages[0]['role'] == 'system' %}{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{% endif %}"
        "{% set ns = namespace(last_query=messages | length - 1, found=false) %}"
        "{% for m in messages[::-1] %}{% if not ns.found and m['role'] == 'user' and not (m['content'].startswith('<tool_response>') "
        "and m['content'].endswith('</tool_response>')) %}{% set ns.found = true %}{% set ns.last_query = messages | length - 1 - loop.index0 %}"
        "{% endif %}{% endfor %}"
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ '<|im_start|>user\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{% elif m['role'] == 'assistant' %}{% set content = m['content'] or '' %}{% set reasoning = '' %}"
        "{% if '</think>' in content %}{% set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
        "{% set content = content.split('</think>')[-1].lstrip('\\n') %}{% endif %}"
        "{% if loop.index0 > ns.last_query and (loop.last or reasoning) %}"
        "{{ '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
        "{% else %}{{ '<|im_start|>assistant\\n' + content }}{% endif %}"
        "{% if m.tool_calls %}" + QWEN_CALLS + "{% endif %}{{ '<|im_end|>\\n' }}" + QWEN_TOOL_MESSAGE + "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
        "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}{% endif %}"
    ),
    "vicuna": (
        "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}{% set turns = messages[1:] %}"
        "{% else %}{% set sys = \"A chat between a curious user and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions.\" %}{% set turns = messages %}{% endif %}"
        "{{ sys + ' ' }}{% for m in turns %}{% if m['role'] == 'user' %}{{ 'USER: ' + m['content'] + ' ' }}"
        "{% else %}{{ 'ASSISTANT: ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    ),
    "chatglm3": (
        "{% for m in messages %}{% if loop.first %}{{ '[gMASK]sop' }}{% endif %}{{ '<|' + m['role'] + '|>\\n ' + m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
    ),
    # GLM-4-9B-Chat reads the tools from a message (here a leading system message of its own) and a
    # call's function name from the message's metadata.
    "glm4": (
        "{{ '[gMASK]<sop>' }}{% for item in messages %}{% if item['tools'] is defined %}" + GLM4_TOOLS + "{% endif %}"
        "{% if item['content'] %}{{ '<|' + item['role'] + '|>' + (item['metadata'] or '') + '\\n' + item['content'] }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
    ),
    # Baichuan2's build_chat_input: the system text, then <reserved_106> user / <reserved_107> assistant, nothing between turns.
    "baichuan2": (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}{% elif m['role'] == 'user' %}{{ '<reserved_106>' + m['content'] }}"
        "{% else %}{{ '<reserved_107>' + m['content'] }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<reserved_107>' }}{% endif %}"
    ),
}
TOOL_FAMILIES = ["glm4", "llama3.1", "qwen2.5", "qwen3"]
TOKENS = ["<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "[gMASK]", "sop", "<sop>",
          "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>", "<reserved_106>", "<reserved_107>"]

CONVERSATIONS = [
    Conversation([Turn(USER, "Hi there"), Turn(ASSISTANT, "Hello! How can I help?")]),
    Conversation([Turn(USER, "中国的首都是哪里？"), Turn(ASSISTANT, "北京。")], system="Answer briefly."),
    Conversation([Turn(USER, "What is the capital of France?"), Turn(ASSISTANT, "Paris."), Turn(USER, "那日本呢？"), Turn(ASSISTANT, "东京。")]),
    Conversation(
        [Turn(USER, "2+2?"), Turn(ASSISTANT, "4"), Turn(USER, "And 3+3?"), Turn(ASSISTANT, "6"), Turn(USER, "谢谢"), Turn(ASSISTANT, "不客气。")],
        system="You are a math tutor.",
    ),
]

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "查询城市的天气",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "城市名"}}, "required": ["city"]}}}
ADD = {"type": "function", "function": {"name": "add", "description": "Add two integers.",
       "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}


def call(name, **arguments):
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)


TOOL_CONVERSATIONS = [
    Conversation(
        [Turn(USER, "北京今天天气怎么样？"), Turn(FUNCTION, call("get_weather", city="北京")), Turn(OBSERVATION, '{"weather": "晴", "temp": 25}'),
         Turn(ASSISTANT, "北京今天晴，25 度。")],
        system="你是一个助手。", tools=[WEATHER, ADD],
    ),
    Conversation(
        [Turn(USER, "What is 12 + 30?"), Turn(FUNCTION, call("add", a=12, b=30)), Turn(OBSERVATION, "42"), Turn(ASSISTANT, "12 + 30 = 42."),
         Turn(USER, "Thanks!"), Turn(ASSISTANT, "You're welcome.")],
        tools=[ADD],
    ),
]
# Qwen calls tools in parallel; their results come back as consecutive tool messages.
PARALLEL = Conversation(
    [Turn(USER, "北京和上海的天气？"),
     Turn(FUNCTION, json.dumps([{"name": "get_weather", "arguments": {"city": "北京"}}, {"name": "get_weather", "arguments": {"city": "上海"}}], ensure_ascii=False)),
     Turn(OBSERVATION, "晴"), Turn(OBSERVATION, "小雨"), Turn(ASSISTANT, "北京晴，上海小雨。")],
    tools=[WEATHER],
)


@pytest.fixture(scope="module")
def family_tokenizer(tmp_path_factory):
    from lmtune.model.load import load_tokenizer
    from lmtune.tiny import train_tokenizer

    convs = CONVERSATIONS + TOOL_CONVERSATIONS + [PARALLEL]
    corpus = [t.content for c in convs for t in c.turns] + list(OFFICIAL.values()) + [json.dumps([WEATHER, ADD], ensure_ascii=False, indent=4)]
    path = tmp_path_factory.mktemp("family")
    train_tokenizer(corpus * 3, path, vocab_size=800, bos=False, special=TOKENS)
    return load_tokenizer(path)


def calls_of(turn):
    from lmtune.templates.tools import parse_calls

    return [{"name": c.name, "arguments": c.arguments} for c in parse_calls(turn.content, "test")]


def messages(conv):
    """OpenAI-style messages, as transformers hands them to a chat template."""
    out = [{"role": "system", "content": conv.system}] if conv.system else []
    for t in conv.turns:
        if t.role == FUNCTION:
            out.append({"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": c} for c in calls_of(t)]})
        else:
            out.append({"role": "tool" if t.role == OBSERVATION else t.role, "content": t.content})
    return out


def glm4_messages(conv):
    """GLM-4-9B-Chat's own layout: tools in a message, a call as metadata (its name) and content (its arguments)."""
    out = [{"role": "system", "content": "", "tools": conv.tools}] if conv.tools else []
    out += [{"role": "system", "content": conv.system}] if conv.system else []
    for t in conv.turns:
        if t.role == FUNCTION:
            (c,) = calls_of(t)
            out.append({"role": "assistant", "metadata": c["name"], "content": json.dumps(c["arguments"], ensure_ascii=False)})
        else:
            out.append({"role": t.role, "content": t.content})
    return out


def official(tokenizer, name, conv, generation):
    chat = glm4_messages(conv) if name == "glm4" else messages(conv)
    return tokenizer.apply_chat_template(chat, tools=conv.tools, chat_template=OFFICIAL[name], tokenize=False,
                                         add_generation_prompt=generation, enable_thinking=bool(conv.thinking))


def prompts(conv):
    """The conversation up to each answer: what the model sees when it writes that answer (thinking
    off: these answers have no reasoning)."""
    return [Conversation(conv.turns[:i], conv.system, conv.tools, thinking=False) for i, t in enumerate(conv.turns) if t.role in (ASSISTANT, FUNCTION)]


def cases(name):
    tools = TOOL_CONVERSATIONS + ([PARALLEL] if name.startswith("qwen") else [])
    return CONVERSATIONS + (tools if name in TOOL_FAMILIES else [])


def test_every_builtin_template_with_an_official_format_is_checked():
    """Those left out have no official chat template to compare with (Alpaca, BELLE, MOSS, …)."""
    checked_on_real_tokenizers = {"deepseek-r1", "deepseek-v3"}  # tests/test_reasoning_templates.py
    assert set(OFFICIAL) | checked_on_real_tokenizers | {"alpaca", "belle", "moss", "linly", "nous", "yayi", "stablebeluga", "guanaco",
                                                         "baichuan", "firefly", "default", "raw"} == set(builtin_templates())
    assert {name for name, t in builtin_templates().items() if t.tools} == set(TOOL_FAMILIES) | {"moss"}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_generation_prompts_match_the_official_template_token_for_token(name, family_tokenizer):
    encoder = Encoder(family_tokenizer, get_template(name), cutoff_len=4096)
    for conv in cases(name):
        for prompt in prompts(conv):
            expected = official(family_tokenizer, name, prompt, generation=True)
            assert "".join(s.text for s in encoder.render(prompt)) == expected
            assert encoder.prompt_ids(prompt) == family_tokenizer(expected, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_whole_conversations_match_the_official_template_token_for_token(name, family_tokenizer):
    template = get_template(name)
    encoder = Encoder(family_tokenizer, template, cutoff_len=4096)
    for conv in cases(name):
        # ChatGLM3, GLM-4 and Baichuan2 put nothing between turns; their fine-tuning appends EOS once, at the end.
        expected = official(family_tokenizer, name, conv, generation=False) + ("</s>" if template.answer_end else "")
        assert "".join(s.text for s in encoder.render(conv)) == expected
        assert encoder.encode(conv).input_ids == family_tokenizer(expected, add_special_tokens=False)["input_ids"]


def trained(tokenizer, sample):
    return tokenizer.decode([t for t in sample.labels if t != IGNORE_INDEX])


def trained_in_all(tokenizer, encoder, conv):
    """What every sample of the conversation trains, oldest first: Qwen3 shows earlier answers
    without the empty think block they were written after, so each is trained in its own context."""
    return "".join(trained(tokenizer, sample) for sample in encoder.encode_many([conv]))


# What each family learns from the four-turn conversation: every answer and what ends it, nothing else.
TRAINED = {
    "chatml": "4<|im_end|>6<|im_end|>不客气。<|im_end|>",  # the newline after <|im_end|> is read, not trained
    "qwen": "4<|im_end|>6<|im_end|>不客气。<|im_end|>",
    "qwen2.5": "4<|im_end|>6<|im_end|>不客气。<|im_end|>",
    "qwen3": "4<|im_end|>6<|im_end|>不客气。<|im_end|>",  # the empty think block is given, not learned
    "llama3": "4<|eot_id|>6<|eot_id|>不客气。<|eot_id|>",
    "llama3.1": "4<|eot_id|>6<|eot_id|>不客气。<|eot_id|>",
    "chatglm3": "\n 4<|user|>\n 6<|user|>\n 不客气。</s>",  # ChatGLM3 stops by writing the next role token
    "glm4": "\n4<|user|>\n6<|user|>\n不客气。</s>",
    "baichuan2": "4</s>6</s>不客气。</s>",  # EOS is the label at the next <reserved_106>, which stays in the input
}


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_labels_train_each_answer_and_its_end(name, family_tokenizer):
    assert trained_in_all(family_tokenizer, Encoder(family_tokenizer, get_template(name), cutoff_len=4096), CONVERSATIONS[3]) == TRAINED[name]


def test_baichuan2_learns_eos_where_the_next_turn_begins(family_tokenizer):
    sample = Encoder(family_tokenizer, get_template("baichuan2"), cutoff_len=4096).encode(CONVERSATIONS[2])
    user = family_tokenizer.convert_tokens_to_ids("<reserved_106>")
    second_user = [i for i, t in enumerate(sample.input_ids) if t == user][1]
    assert sample.labels[second_user] == family_tokenizer.eos_token_id  # Baichuan2's fine-tune.py labels it so
    assert sample.input_ids[-1] == sample.labels[-1] == family_tokenizer.eos_token_id


TRAINED_WITH_TOOLS = {
    "qwen2.5": '<tool_call>\n{"name": "add", "arguments": {"a": 12, "b": 30}}\n</tool_call><|im_end|>12 + 30 = 42.<|im_end|>'
    "You're welcome.<|im_end|>",
    "qwen3": '<tool_call>\n{"name": "add", "arguments": {"a": 12, "b": 30}}\n</tool_call><|im_end|>12 + 30 = 42.<|im_end|>'
    "You're welcome.<|im_end|>",
    "llama3.1": '{"name": "add", "parameters": {"a": 12, "b": 30}}<|eot_id|>12 + 30 = 42.<|eot_id|>You\'re welcome.<|eot_id|>',
    "glm4": 'add\n{"a": 12, "b": 30}<|observation|>\n12 + 30 = 42.<|user|>\nYou\'re welcome.</s>',
}


@pytest.mark.parametrize("name", sorted(TRAINED_WITH_TOOLS))
def test_labels_train_the_call_but_not_the_definitions_or_the_results(name, family_tokenizer):
    encoder = Encoder(family_tokenizer, get_template(name), cutoff_len=4096)
    assert trained_in_all(family_tokenizer, encoder, TOOL_CONVERSATIONS[1]) == TRAINED_WITH_TOOLS[name]


@pytest.mark.parametrize("name", sorted(builtin_templates()))
def test_the_chat_template_lmtune_writes_renders_like_lmtune(name):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<s>": 0, "</s>": 1}, unk_token="</s>")), bos_token="<s>", eos_token="</s>"
    )
    template = get_template(name)
    convs = CONVERSATIONS + (TOOL_CONVERSATIONS + [PARALLEL] * (template.tool_style in ("qwen", "moss")) if template.tools else [])
    for conv in convs:
        for case in (conv, *prompts(conv)):
            rendered = tokenizer.apply_chat_template(messages(case), tools=case.tools, chat_template=to_jinja(template), tokenize=False,
                                                     enable_thinking=case.thinking)
            assert rendered == "".join(s.text for s in template.render(case, "<s>", "</s>"))
    if not template.tools:
        with pytest.raises(Exception, match=f"template '{name}' cannot render tools"):
            tokenizer.apply_chat_template(messages(CONVERSATIONS[0]), tools=[WEATHER], chat_template=to_jinja(template), tokenize=False)


@pytest.mark.parametrize("name", ["chatml", "llama2", "llama3", "llama3.1", "qwen", "qwen2.5", "vicuna"])
def test_template_auto_trains_on_the_tokenizers_own_chat_template(name, family_tokenizer):
    from lmtune.templates.hf import template_for

    family_tokenizer.chat_template = OFFICIAL[name]
    try:
        auto = Encoder(family_tokenizer, template_for("auto", family_tokenizer), cutoff_len=4096)
        named = Encoder(family_tokenizer, get_template(name), cutoff_len=4096)
        for conv in cases(name):
            prompt, _ = conv.without_last_answer()
            assert auto.prompt_ids(prompt) == named.prompt_ids(prompt)
            auto_sample, named_sample = auto.encode(conv), named.encode(conv)
            assert auto_sample.input_ids == named_sample.input_ids
            # The same tokens are trained, except that auto also trains what the official template
            # puts after each answer (ChatML's newline), which the named template reads as prompt.
            extra = [a for a, b in zip(auto_sample.labels, named_sample.labels) if a != b]
            assert all(b == -100 or a == b for a, b in zip(auto_sample.labels, named_sample.labels))
            assert family_tokenizer.decode(extra).strip() == ""
    finally:
        family_tokenizer.chat_template = None


@pytest.mark.parametrize("name", ["chatglm3", "baichuan2"])
def test_template_auto_refuses_an_official_template_that_never_ends_an_answer(name, family_tokenizer):
    from lmtune.errors import DataError
    from lmtune.templates.hf import template_for

    family_tokenizer.chat_template = OFFICIAL[name]
    try:
        with pytest.raises(DataError, match="puts no end token after an answer"):
            Encoder(family_tokenizer, template_for("auto", family_tokenizer), cutoff_len=4096).encode(CONVERSATIONS[0])
    finally:
        family_tokenizer.chat_template = None


def test_generation_stops_at_every_token_training_ends_an_answer_with(family_tokenizer):
    from lmtune.infer.engine import end_token_ids

    eos, ids = family_tokenizer.eos_token_id, family_tokenizer.convert_tokens_to_ids
    assert end_token_ids(family_tokenizer, get_template("chatglm3")) == sorted([eos, ids("<|user|>"), ids("<|observation|>")])
    assert end_token_ids(family_tokenizer, get_template("glm4")) == sorted([eos, ids("<|user|>"), ids("<|observation|>")])
    assert end_token_ids(family_tokenizer, get_template("qwen3")) == sorted([eos, ids("<|im_end|>")])
    assert end_token_ids(family_tokenizer, get_template("baichuan2")) == [eos]
