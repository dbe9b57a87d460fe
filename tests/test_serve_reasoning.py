"""`lmtune serve` for models that think: reasoning apart from the answer, through the openai client.

The served model is trained here, in a second, to answer three questions with a think block first
(`<think>\\nreasoning\\n</think>\\n\\nanswer`) and a fourth without one; greedy, it says exactly that.
It is served twice: with a ChatML template whose prompt leaves the block to the model (as Qwen3's
does), and with one whose prompt opens it (`…assistant\\n<think>\\n`, as DeepSeek-R1's does), which
the same weights continue alike. The training loop is plain torch on token ids, so what the model
learns does not depend on how templates write reasoning into training text.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from test_serve import KEY, ask, live_server, post
from test_serve_web import CHROMIUM, CHROMIUM_ARGS, say, wait_idle  # noqa: F401 (browser: a fixture)
from test_serve_web import browser  # noqa: F401

openai = pytest.importorskip("openai")

THOUGHTS = [  # question, reasoning, answer
    ("What is two plus two?", "Two and two make four.", "Two plus two is four."),
    ("中国的首都是哪里？", "首都是北京。", "中国的首都是北京。"),
    ("Name the capital of France.", "France's capital is Paris.", "Paris is the capital of France."),
]
HELLO = ("Say hello.", "Hello!")  # answered without a think block
CHATML = {
    "tokens": ["<|im_start|>", "<|im_end|>"], "system": "<|im_start|>system\n{content}<|im_end|>\n",
    "user": "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n", "assistant": "{content}<|im_end|>\n",
}
TEMPLATES = {"think-plain": CHATML, "think-open": {**CHATML, "user": CHATML["user"] + "<think>\n"}}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """torch on one thread while this module runs: a tiny model gains nothing from two, and on a busy
    2-core machine two threads wait on each other (30 training steps took 40 s on two, 0.2 s on one)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def thinker(tmp_path_factory, llama_dir):
    """conftest's tiny Llama trained to think before answering, with a run.yaml naming its template."""
    from lmtune.data.encode import Encoder
    from lmtune.data.records import USER, Conversation, Turn
    from lmtune.model.load import load_tokenizer
    from lmtune.templates.template import get_template

    out = tmp_path_factory.mktemp("thinker") / "thinker"
    shutil.copytree(llama_dir, out)
    (out / "templates.yaml").write_text(yaml.safe_dump(TEMPLATES), encoding="utf-8")
    data = out / "train.jsonl"
    data.write_text("".join(json.dumps({"instruction": q, "output": f"<think>\n{r}\n</think>\n\n{a}"}, ensure_ascii=False) + "\n"
                            for q, r, a in THOUGHTS), encoding="utf-8")
    run = {"model": {"path": str(out)}, "train": {"output_dir": str(out)},
           "data": {"path": [str(data)], "template": "think-plain", "template_file": str(out / "templates.yaml")},
           "generate": {"temperature": 0, "repetition_penalty": 1.0, "max_new_tokens": 64}}
    (out / "run.yaml").write_text(yaml.safe_dump(run, allow_unicode=True), encoding="utf-8")

    tokenizer = load_tokenizer(out)
    encoder = Encoder(tokenizer, get_template("think-plain", out / "templates.yaml"), 512)
    pairs = [(q, f"<think>\n{r}\n</think>\n\n{a}") for q, r, a in THOUGHTS] + [HELLO]
    rows = [(encoder.prompt_ids(Conversation([Turn(USER, q)])), tokenizer.encode(answer + "<|im_end|>", add_special_tokens=False))
            for q, answer in pairs]
    overfit(llama_dir, [(p + a, [-100] * len(p) + a) for p, a in rows], tokenizer.eos_token_id, 150).save_pretrained(out)  # a loss near 0.003
    return out


def overfit(base, samples: list[tuple[list[int], list[int]]], pad: int, steps: int):
    """The model in `base` trained on (input_ids, labels) rows until greedy decoding says its answers exactly."""
    import torch
    from transformers import AutoModelForCausalLM

    width = max(len(ids) for ids, _ in samples)
    ids, labels, mask = (torch.full((len(samples), width), fill) for fill in (pad, -100, 0))
    for i, (row_ids, row_labels) in enumerate(samples):
        ids[i, : len(row_ids)], labels[i, : len(row_ids)], mask[i, : len(row_ids)] = torch.tensor(row_ids), torch.tensor(row_labels), 1
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0)
    for _ in range(steps):
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


@pytest.fixture(scope="module")
def plain(thinker):
    with live_server(model=str(thinker), max_batch=8) as running:
        yield running


@pytest.fixture(scope="module")
def opened(thinker):
    with live_server(model=str(thinker), template="think-open", max_batch=8) as running:
        yield running


@pytest.fixture(params=["plain", "opened"])
def server(request):
    """Each test once with the prompt leaving the think block to the model, once with it opened."""
    return request.getfixturevalue(request.param)


def client_of(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=120)


def create(server, messages, **fields):
    return client_of(server).chat.completions.create(model=server[1].models[0], messages=messages, temperature=0, **fields)


def reasoning_of(message) -> str | None:
    """The reasoning under both names, which must agree."""
    extra = message.model_extra or {}
    assert extra.get("reasoning_content") == extra.get("reasoning"), extra
    return extra.get("reasoning_content")


def streamed(server, messages, **fields) -> list[tuple[int, str, str]]:
    """(choice, "reasoning" or "content", text) of every delta that carries text, in order."""
    pieces = []
    for chunk in create(server, messages, stream=True, **fields):
        for choice in chunk.choices:
            if (reasoning := reasoning_of(choice.delta)) is not None:
                pieces.append((choice.index, "reasoning", reasoning))
            if choice.delta.content:
                pieces.append((choice.index, "content", choice.delta.content))
    return pieces


def rendered(server, monkeypatch) -> list:
    """The conversations the server's template renders from now on (its real encoder, watched)."""
    encoder, seen = server[1].backend.engine.encoder, []
    original = encoder.prompt_ids
    monkeypatch.setattr(encoder, "prompt_ids", lambda conv: seen.append(conv) or original(conv))
    return seen


# ---------------------------------------------------------------- answers


def test_the_fixture_prompts_leave_or_open_the_block(plain, opened):
    from lmtune.data.records import USER, Conversation, Turn

    conv = Conversation([Turn(USER, THOUGHTS[0][0])])
    assert not plain[1].backend.engine.encoder.opens_reasoning(conv)
    assert opened[1].backend.engine.encoder.opens_reasoning(conv)


@pytest.mark.parametrize("question, reasoning, answer", THOUGHTS)
def test_reasoning_comes_apart_from_the_answer(server, question, reasoning, answer):
    reply = create(server, ask(question))
    message = reply.choices[0].message
    assert (reasoning_of(message), message.content, reply.choices[0].finish_reason) == (reasoning, answer, "stop")


@pytest.mark.parametrize("question, reasoning, answer", THOUGHTS)
def test_streamed_reasoning_comes_first_then_the_answer(server, question, reasoning, answer):
    pieces = streamed(server, ask(question), n=2)
    for index in (0, 1):
        mine = [(kind, text) for i, kind, text in pieces if i == index]
        kinds = [kind for kind, _ in mine]
        assert kinds == sorted(kinds, key=["reasoning", "content"].index)  # never a reasoning delta after content
        assert "".join(t for k, t in mine if k == "reasoning") == reasoning
        assert "".join(t for k, t in mine if k == "content") == answer


def test_an_answer_without_a_think_block_is_as_before(plain):
    reply = httpx_post(plain, {"messages": ask(HELLO[0])})
    assert reply["choices"][0]["message"] == {"role": "assistant", "content": HELLO[1]}
    pieces = streamed(plain, ask(HELLO[0]))
    assert [kind for _, kind, _ in pieces] == ["content"] * len(pieces) and "".join(t for *_, t in pieces) == HELLO[1]


def httpx_post(server, body: dict) -> dict:
    response = post(server, "/v1/chat/completions", {"model": server[1].models[0], "temperature": 0, **body})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("question, reasoning, answer", THOUGHTS[:2])
def test_max_tokens_inside_the_block_gives_reasoning_and_no_content(server, question, reasoning, answer):
    tokenizer = server[1].backend.engine.tokenizer
    opened = server[1].backend.engine.encoder.opens_reasoning(conversation_of(question))
    tokens = lambda text: len(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    cut = (0 if opened else tokens("<think>\n")) + tokens(reasoning) // 2  # half way through the reasoning
    reply = create(server, ask(question), max_tokens=cut)
    choice = choice_of(reply)
    assert choice.finish_reason == "length" and choice.message.content in ("", None)
    thought = reasoning_of(choice.message)
    assert thought and reasoning.startswith(thought) and thought != reasoning
    pieces = streamed(server, ask(question), max_tokens=cut)
    assert [kind for _, kind, _ in pieces] == ["reasoning"] * len(pieces) and "".join(t for *_, t in pieces) == thought


def choice_of(reply):
    assert len(reply.choices) == 1
    return reply.choices[0]


def conversation_of(question: str):
    from lmtune.data.records import USER, Conversation, Turn

    return Conversation([Turn(USER, question)])


@pytest.mark.parametrize("stop, reasoning, content", [
    ("make", "Two and two", ""),  # inside the reasoning: the block is cut there, nothing answered
    ("plus", "Two and two make four.", "Two"),  # inside the answer
])
def test_stop_strings_cut_before_the_split(server, stop, reasoning, content):
    reply = create(server, ask(THOUGHTS[0][0]), stop=stop)
    choice = choice_of(reply)
    assert (reasoning_of(choice.message), choice.message.content, choice.finish_reason) == (reasoning, content, "stop")
    pieces = streamed(server, ask(THOUGHTS[0][0]), stop=stop)
    # (streamed text keeps the space before a stop string, which the whole answer trims)
    assert "".join(t for _, k, t in pieces if k == "reasoning").strip() == reasoning
    assert "".join(t for _, k, t in pieces if k == "content").strip() == content


def test_completions_stay_raw_text(plain):
    prompt = CHATML["user"].replace("{content}", THOUGHTS[0][0])  # the template's rendering, written out
    reply = client_of(plain).completions.create(model=plain[1].models[0], prompt=prompt, temperature=0, max_tokens=40)
    assert reply.choices[0].text == "<think>\n{}\n</think>\n\n{}".format(*THOUGHTS[0][1:])
    assert "reasoning_content" not in (reply.choices[0].model_extra or {})


# ---------------------------------------------------------------- requests


@pytest.mark.parametrize("fields, thinking", [
    ({"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}, False),
    ({"reasoning_effort": "none"}, False),
    ({"extra_body": {"chat_template_kwargs": {"enable_thinking": True, "other": 1}}}, True),
    ({"extra_body": {"chat_template_kwargs": {"thinking": False}}}, False),  # DeepSeek-V3.1's name
    ({"reasoning_effort": "low"}, True),
    ({}, None),
])
def test_the_thinking_switch_reaches_the_template(plain, monkeypatch, fields, thinking):
    from dataclasses import replace

    seen = rendered(plain, monkeypatch)
    reply = create(plain, ask(THOUGHTS[0][0]), max_tokens=1, **fields)
    assert [conv.thinking for conv in seen] == [thinking]
    expected = replace(conversation_of(THOUGHTS[0][0]), thinking=thinking)
    assert reply.usage.prompt_tokens == len(plain[1].backend.engine.encoder.prompt_ids(expected))


def test_qwen3_prompt_as_the_template_renders_the_switch(thinker):
    """With Qwen3's template the switch changes the prompt itself (an empty think block when off)."""
    from dataclasses import replace

    with live_server(model=str(thinker), template="qwen3") as qwen3:
        encoder, prompts = qwen3[1].backend.engine.encoder, {}
        for switch in (False, True):
            reply = create(qwen3, ask(THOUGHTS[0][0]), max_tokens=1, extra_body={"chat_template_kwargs": {"enable_thinking": switch}})
            conv = replace(conversation_of(THOUGHTS[0][0]), thinking=switch)
            prompts[switch] = reply.usage.prompt_tokens
            assert prompts[switch] == len(encoder.prompt_ids(conv)), switch
        off = replace(conversation_of(THOUGHTS[0][0]), thinking=False)
        assert "".join(s.text for s in encoder.render(off)).endswith("<think>\n\n</think>\n\n")
        assert prompts[False] > prompts[True]  # off: the empty block is in the prompt


def test_assistant_history_keeps_its_reasoning_apart(plain, monkeypatch):
    from lmtune.data.records import ASSISTANT, USER, Conversation, Turn

    (q1, r1, a1), (q2, _, _) = THOUGHTS[0], THOUGHTS[1]
    first = create(plain, ask(q1)).choices[0].message
    seen = rendered(plain, monkeypatch)
    forms = [
        first.model_dump(exclude_none=True),  # the answer sent back as it came: both names
        {"role": "assistant", "content": a1, "reasoning_content": r1},
        {"role": "assistant", "content": a1, "reasoning": r1},
        {"role": "assistant", "content": f"<think>\n{r1}\n</think>\n\n{a1}"},  # the block in the content
    ]
    prompts = [create(plain, [*ask(q1), form, *ask(q2)], max_tokens=1).usage.prompt_tokens for form in forms]
    assert [(conv.turns[1].content, conv.turns[1].reasoning) for conv in seen] == [(a1, r1)] * len(forms)
    conv = Conversation([Turn(USER, q1), Turn(ASSISTANT, a1, reasoning=r1), Turn(USER, q2)])
    assert prompts == [len(plain[1].backend.engine.encoder.prompt_ids(conv))] * len(forms)


@pytest.mark.parametrize("fields, message, param", [
    ({"chat_template_kwargs": {"enable_thinking": "no"}}, "chat_template_kwargs.enable_thinking: give true or false (got 'no')",
     "chat_template_kwargs.enable_thinking"),
    ({"reasoning_effort": "max"}, "reasoning_effort: Input should be 'none', 'minimal', 'low', 'medium', 'high' or 'xhigh' (got 'max')",
     "reasoning_effort"),
    ({"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "none"},
     "chat_template_kwargs.enable_thinking is true and reasoning_effort is 'none': thinking cannot be both on and off; give one switch",
     "chat_template_kwargs.enable_thinking"),
    ({"messages": [*ask("a"), {"role": "assistant", "content": "b", "reasoning_content": "c", "reasoning": "d"}, *ask("e")]},
     "messages[1]: reasoning_content and reasoning differ; give one of them", "messages"),
    ({"messages": [*ask("a"), {"role": "assistant", "content": "<think>\nc"}, *ask("e")]},
     "messages[1].content: the answer opens <think> but never closes it with </think>, so it has no answer after its reasoning", "messages"),
])
def test_bad_thinking_fields_are_a_400_naming_them(plain, fields, message, param):
    response = post(plain, "/v1/chat/completions", {"model": plain[1].models[0], "messages": ask("hi"), **fields})
    assert response.status_code == 400
    assert (response.json()["error"]["message"], response.json()["error"]["param"]) == (message, param)


# ---------------------------------------------------------------- the conversion, without a server


def test_messages_become_turns_with_their_reasoning():
    from lmtune.serve.schemas import ChatRequest, conversation, parse

    body = parse(ChatRequest, json.dumps({"model": "m", "reasoning_effort": "none", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "问"},
        {"role": "assistant", "content": "<think>\n想一想\n</think>\n\n答", "reasoning_content": None},
        {"role": "user", "content": [{"type": "text", "text": "again"}], "reasoning_content": "ignored on a user message"},
        {"role": "assistant", "content": None, "reasoning": "only thought"},
        {"role": "user", "content": "last"},
    ]}, ensure_ascii=False).encode())
    conv = conversation(body.turns(), body.thinking())
    assert conv.system == "Be brief." and conv.thinking is False
    assert [(t.role, t.content, t.reasoning) for t in conv.turns] == [
        ("user", "问", None), ("assistant", "答", "想一想"), ("user", "again", None), ("assistant", "", "only thought"), ("user", "last", None),
    ]


@pytest.mark.parametrize("fields, thinking", [
    ({}, None), ({"reasoning_effort": "high"}, True), ({"reasoning_effort": "none"}, False),
    ({"chat_template_kwargs": {"enable_thinking": False, "thinking": False}}, False),
    ({"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "medium"}, True),
    ({"chat_template_kwargs": {"add_generation_prompt": True}}, None),  # keys other than the switch are ignored
])
def test_the_thinking_switch_of_a_request(fields, thinking):
    from lmtune.serve.schemas import ChatRequest, parse

    assert parse(ChatRequest, json.dumps({"model": "m", "messages": ask("hi"), **fields}).encode()).thinking() is thinking


# ---------------------------------------------------------------- the page


@pytest.mark.skipif(not CHROMIUM.exists(), reason="the browser test needs Debian's chromium: apt-get install chromium fonts-noto-cjk")
def test_the_page_folds_reasoning_above_the_answer_as_it_streams(browser, plain):  # noqa: F811
    from playwright.sync_api import expect

    context = browser.new_context(locale="zh-CN", viewport={"width": 1100, "height": 720})
    page = context.new_page()
    page.set_default_timeout(30_000)
    sent = []
    page.on("request", lambda r: sent.append(r) if r.url.endswith("/v1/chat/completions") else None)
    page.goto(plain[0] + "/")
    page.get_by_test_id("api-key").fill(KEY)
    page.get_by_test_id("save-key").click()
    expect(page.get_by_test_id("model").locator("option")).not_to_have_count(0)
    page.get_by_test_id("temperature").fill("0")
    # What the box shows as text arrives: the reasoning must fill before the answer starts.
    page.evaluate("""() => { window.seen = [];
        new MutationObserver(() => { const r = document.querySelector('[data-testid=reasoning-text]'), a = document.querySelector('[data-testid=reply]');
            if (r && a) window.seen.push([r.textContent.length, a.textContent.length]); })
        .observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true}); }""")
    question, reasoning, answer = THOUGHTS[1]
    say(page, question)
    wait_idle(page)
    block = page.get_by_test_id("reasoning")
    expect(block.locator("summary")).to_have_text("思考")
    expect(block).not_to_have_attribute("open", "")  # folded
    expect(page.get_by_test_id("reasoning-text")).to_have_text(reasoning)
    expect(page.get_by_test_id("reply")).to_have_text(answer)
    seen = page.evaluate("window.seen")
    assert any(r > 0 and a == 0 for r, a in seen), seen  # reasoning showed while the answer had not begun
    block.locator("summary").click()
    expect(block).to_have_attribute("open", "")
    expect(page.get_by_test_id("reasoning-text")).to_be_visible()

    say(page, HELLO[0])
    wait_idle(page)
    expect(page.get_by_test_id("reply")).to_have_text([answer, HELLO[1]])
    expect(page.get_by_test_id("reasoning").nth(1)).to_be_hidden()  # no think block: no box for it
    assert sent[1].post_data_json["messages"][1] == {"role": "assistant", "content": answer, "reasoning_content": reasoning}
    context.close()

    english = browser.new_context(locale="en-US")
    page = english.new_page()
    page.goto(plain[0] + "/")
    assert page.evaluate("THINKING") == "Thinking"
    english.close()


def test_a_streamed_split_lets_leading_whitespace_out_at_once():
    """Whitespace before the first word goes out as content, as it did before reasoning was split
    (the chat page shows a model that writes only newlines as it writes them)."""
    from lmtune.serve.app import _Split

    split = _Split(opened=False)
    assert split.deltas("\n") == [{"content": "\n"}]
    assert split.deltas("<thi") == []  # maybe a think block: held
    assert split.deltas("nk>\n想") == [{"reasoning_content": "想", "reasoning": "想"}]
    assert split.deltas("\n</think>\n\n答") == [{"content": "答"}]
    assert split.deltas(None) == []
    opened = _Split(opened=True)
    assert opened.deltas("\n想") == [{"reasoning_content": "想", "reasoning": "想"}]  # the block trims its newlines
