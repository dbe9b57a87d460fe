"""`lmtune serve` with tools: tools in requests, tool calls in answers, through the openai client and
LangChain, and each template style reading back the calls it writes.

The served model is conftest's tiny Llama trained here (plain torch on the encoder's own samples,
one thread, a few seconds) on a small tool-calling set in the messages format with the qwen2.5
template: it calls get_weather for Seoul, answers from the tool's result, says hello without a
call, and writes one call it cannot have meant (invalid JSON). Greedy, it says exactly that.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
from conftest import model_run

from test_serve import KEY, live_server
from test_serve_reasoning import one_thread, overfit  # noqa: F401 (one_thread: autouse, torch on one thread)

openai = pytest.importorskip("openai")

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOLS = [WEATHER]
QUESTION, RESULT, FINAL = "What is the weather in Seoul?", "21 degrees and sunny", "It is 21 degrees and sunny in Seoul."
BROKEN = '<tool_call>\n{"name": get_weather}\n</tool_call>'  # what the model says to "Break the call."
CALL = {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Seoul"}'}}
RECORDS = [
    {"tools": TOOLS, "messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
                                  {"role": "tool", "tool_call_id": "call_0", "content": RESULT}, {"role": "assistant", "content": FINAL}]},
    {"tools": TOOLS, "messages": [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello!"}]},
    {"tools": TOOLS, "messages": [{"role": "user", "content": "Break the call."}, {"role": "assistant", "content": BROKEN}]},
]


@pytest.fixture(scope="module")
def caller(tmp_path_factory, llama_dir):
    """The tiny Llama trained on RECORDS as training encodes them, with a run.yaml naming qwen2.5."""
    from lmtune.data.encode import Encoder
    from lmtune.data.formats import to_conversation
    from lmtune.model.load import load_tokenizer
    from lmtune.templates.template import get_template

    out = model_run(llama_dir, tmp_path_factory.mktemp("caller") / "caller", "qwen2.5", temperature=0, max_new_tokens=160)
    tokenizer = load_tokenizer(out)
    encoder = Encoder(tokenizer, get_template("qwen2.5"), 2048)
    samples = [encoder.encode(to_conversation(record, "messages")) for record in RECORDS]
    # a loss near 0.004 after 120 steps: it says its answers exactly
    overfit(llama_dir, [(s.input_ids, s.labels) for s in samples], tokenizer.eos_token_id, 120).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def server(caller):
    with live_server(model=str(caller), max_batch=4) as running:
        yield running


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=120)


def create(client, messages, **fields):
    return client.chat.completions.create(model="caller", messages=messages, temperature=0, **fields)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def unparsed_count(server) -> float:
    text = httpx.get(server[0] + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    return float(re.search(r"^lmtune_tool_call_parse_failures_total (\S+)$", text, re.MULTILINE).group(1))


# ---------------------------------------------------------------- through the API


def test_a_tool_round_trip(client):
    reply = create(client, user(QUESTION), tools=TOOLS)
    choice = choice0 = reply.choices[0]
    assert (choice.finish_reason, choice.message.content) == ("tool_calls", None)
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Seoul"})

    history = user(QUESTION) + [choice0.message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": RESULT}]
    final = create(client, history, tools=TOOLS).choices[0]
    assert (final.finish_reason, final.message.content, final.message.tool_calls) == ("stop", FINAL, None)


def test_streamed_calls_reassemble_to_the_whole_answer(client):
    whole = create(client, user(QUESTION), tools=TOOLS).choices[0].message.tool_calls[0]
    content, calls, reasons = "", {}, []
    for chunk in create(client, user(QUESTION), tools=TOOLS, stream=True):
        delta, reasons = chunk.choices[0].delta, reasons + [chunk.choices[0].finish_reason]
        content += delta.content or ""
        for part in delta.tool_calls or []:
            if part.index not in calls:  # the first delta of a call names it, with empty arguments
                assert part.id.startswith("call_") and part.type == "function" and part.function.arguments == ""
                calls[part.index] = {"name": part.function.name, "arguments": ""}
            calls[part.index]["arguments"] += part.function.arguments or ""
    assert content == "" and reasons[-1] == "tool_calls"
    assert list(calls.values()) == [{"name": whole.function.name, "arguments": whole.function.arguments}]


def test_answers_without_a_call_and_tool_choice_none(client):
    hello = create(client, user("Say hello."), tools=TOOLS).choices[0]
    assert (hello.message.content, hello.message.tool_calls, hello.finish_reason) == ("Hello!", None, "stop")
    raw = create(client, user(QUESTION), tools=TOOLS, tool_choice="none").choices[0]  # shown the tools, not read for calls
    assert raw.finish_reason == "stop" and raw.message.tool_calls is None and raw.message.content.startswith("<tool_call>\n")
    plain = create(client, user(QUESTION)).choices[0]  # no tools at all: a ChatML answer, read as text
    assert plain.message.tool_calls is None


def test_a_call_that_does_not_parse_is_content_and_counted(server, client):
    before = unparsed_count(server)
    assert create(client, user("Break the call."), tools=TOOLS).choices[0].message.content == BROKEN
    streamed = "".join(c.choices[0].delta.content or "" for c in create(client, user("Break the call."), tools=TOOLS, stream=True))
    assert streamed == BROKEN
    assert unparsed_count(server) == before + 2


def test_bad_tool_requests_are_400(client):
    for fields in ({"tool_choice": "required"}, {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
                   {"tools": [{"description": "no name"}]}):
        with pytest.raises(openai.BadRequestError):
            create(client, user(QUESTION), **fields)
    with pytest.raises(openai.BadRequestError, match="last message"):
        create(client, user(QUESTION) + [{"role": "assistant", "content": None, "tool_calls": [CALL]}], tools=TOOLS)


def test_langchain_drives_a_tool_loop(server):
    messages_module = pytest.importorskip("langchain_core.messages")
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=server[0] + "/v1", api_key=KEY, model="caller", temperature=0, max_retries=0).bind_tools([WEATHER])
    history = [messages_module.HumanMessage(QUESTION)]
    reply = llm.invoke(history)
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("get_weather", {"city": "Seoul"})]
    history += [reply, messages_module.ToolMessage(RESULT, tool_call_id=reply.tool_calls[0]["id"])]
    assert llm.invoke(history).content == FINAL


def test_tools_on_a_template_without_tools_are_400(caller):
    with live_server(model=str(caller), template="chatml") as chatml:
        client = openai.OpenAI(base_url=chatml[0] + "/v1", api_key=KEY, max_retries=0)
        with pytest.raises(openai.BadRequestError, match="templates that can: .*qwen2.5"):
            create(client, user(QUESTION), tools=TOOLS)


def test_models_list_adapters_before_the_base(tmp_path):
    from lmtune.config import ServeConfig
    from lmtune.serve.engines import served_models

    assert list(served_models(ServeConfig(model=str(tmp_path / "base"), adapters={"sft": "a", "dpo": "b"}))) == ["sft", "dpo", "base"]


# ---------------------------------------------------------------- each style reads back what it writes

PARAMS = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}
STYLE_TOOLS = [WEATHER | {"function": {**WEATHER["function"], "parameters": PARAMS}}, {"name": "add", "parameters": {"properties": {"a": {}, "b": {}}}}]
CALLS = {  # template → the calls of one function turn (parallel where the family takes several)
    "qwen2.5": [{"name": "get_weather", "arguments": {"city": "首尔", "days": 2}}, {"name": "add", "arguments": {"a": 1, "b": [2, 3]}}],
    "llama3.1": [{"name": "get_weather", "arguments": {"city": "Paris", "days": 1}}],
    "glm4": [{"name": "add", "arguments": {"a": 1.5, "b": {"c": "d"}}}],
    "moss": [{"name": "get_weather", "arguments": {"city": "Paris, \"FR\"", "days": 3}}, {"name": "add", "arguments": {"a": 1, "b": 2}}],
}


def written_call(name: str) -> str:
    """What the model is trained to write for CALLS[name]: the function turn's answer, without its end token."""
    from lmtune.data.records import FUNCTION, USER, Conversation, Turn
    from lmtune.templates.template import get_template

    template = get_template(name)
    conv = Conversation([Turn(USER, "hi"), Turn(FUNCTION, json.dumps(CALLS[name], ensure_ascii=False))], tools=STYLE_TOOLS)
    text = [segment.text for segment in template.render(conv) if segment.answer][-1]
    return next((text.removesuffix(end) for end in template.end_tokens() if text.endswith(end)), text)


@pytest.mark.parametrize("name", list(CALLS))
def test_each_style_reads_back_its_calls(name):
    from lmtune.templates.template import get_template
    from lmtune.templates.tools import Call, parse_output_calls

    content, calls = parse_output_calls(written_call(name), get_template(name), STYLE_TOOLS)
    assert (content, calls) == (None, [Call(c["name"], c["arguments"]) for c in CALLS[name]])


@pytest.mark.parametrize("name", list(CALLS))
def test_streamed_calls_read_as_the_whole_answer(name):
    from lmtune.serve.toolcalls import StreamedCalls, answer_fields
    from lmtune.templates.template import get_template

    template = get_template(name)
    for text in (written_call(name), "Plain answer\nwith lines.", "{not a call", "<tool_call>\n{bad}\n</tool_call>"):
        whole, _ = answer_fields(text, template, STYLE_TOOLS, True)
        stream = StreamedCalls(template, STYLE_TOOLS, True)
        deltas = [d for char in text for d in stream.deltas([{"content": char}])] + stream.close()
        content = "".join(d.get("content", "") for d in deltas)
        names = [p["function"]["name"] for d in deltas for p in d.get("tool_calls", []) if "name" in p["function"]]
        assert (content or None, names) == (whole["content"], [c["function"]["name"] for c in whole.get("tool_calls", [])]), text


def test_text_beside_qwen_calls_is_content_and_unreadable_calls_stay_text():
    from lmtune.templates.template import get_template
    from lmtune.templates.tools import read_output_calls

    qwen = get_template("qwen2.5")
    read = read_output_calls("Let me look.\n" + written_call("qwen2.5"), qwen, STYLE_TOOLS)
    assert (read.content, len(read.calls), read.unparsed) == ("Let me look.", 2, 0)
    for bad in ('<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>', "<tool_call>\n{\"name\": \"add\"", BROKEN):
        read = read_output_calls(bad, qwen, STYLE_TOOLS)
        assert (read.content, read.calls, read.unparsed) == (bad, [], 1)
