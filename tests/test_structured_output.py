"""Structured output by constrained decoding: response_format json_schema / json_object and
tool_choice required / named on /v1/chat/completions through the openai client, and `lmtune generate
--json-schema`, on conftest's tiny Llama left UNTRAINED (random weights, the qwen2.5 template): only
the grammar makes its answers JSON, so every answer that stops must validate.

The schemas bound every string, number and array, so that even a random model's answers end within
max_tokens (an unbounded string may go on until max_tokens cuts it: finish_reason "length").
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from conftest import RECORDS, lmtune, model_run, write_json
from test_serve import KEY, live_server

openai = pytest.importorskip("openai")

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"enum": ["happy", "sad", "calm"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
        "home": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6}}, "required": ["city"], "additionalProperties": False},
    },
    "required": ["name", "age", "mood", "tags", "home"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 10}, "unit": {"enum": ["C", "F"]}},
    "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 12}}, "required": ["zone"], "additionalProperties": False}}}
USER = [{"role": "user", "content": "Describe someone."}]


def check(value, schema: dict, where: str = "$") -> None:
    """A small JSON Schema checker for the keywords these tests use (jsonschema is not installed)."""
    if "enum" in schema:
        assert value in schema["enum"], (where, value)
    kind = schema.get("type")
    if kind == "object":
        assert isinstance(value, dict), (where, value)
        assert set(schema.get("required", [])) <= set(value), (where, value)
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(schema.get("properties", {})), (where, value)
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                check(value[key], sub, f"{where}.{key}")
    elif kind == "string":
        assert isinstance(value, str) and len(value) <= schema.get("maxLength", len(value)), (where, value)
    elif kind == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), (where, value)
        assert schema.get("minimum", value) <= value <= schema.get("maximum", value), (where, value)
    elif kind == "boolean":
        assert isinstance(value, bool), (where, value)
    elif kind == "array":
        assert isinstance(value, list) and len(value) <= schema.get("maxItems", len(value)), (where, value)
        for i, item in enumerate(value):
            check(item, schema["items"], f"{where}[{i}]")


@pytest.fixture(scope="module")
def untrained(tmp_path_factory, llama_dir):
    """The random tiny Llama with a run.yaml naming qwen2.5 (a template with a tool syntax)."""
    return model_run(llama_dir, tmp_path_factory.mktemp("untrained") / "untrained", "qwen2.5", temperature=1.0, max_new_tokens=64)


@pytest.fixture(scope="module")
def server(untrained):
    with live_server(model=str(untrained), max_batch=32) as running:
        yield running


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture
def batches(monkeypatch):
    """(rows, constrained rows) of every batched pick the sampler makes."""
    from lmtune.serve.sampler import Sampler

    seen, pick = [], Sampler.pick

    def recording(self, logits):
        seen.append((len(self.runs), sum(run.row.constraint is not None for run in self.runs)))
        return pick(self, logits)

    monkeypatch.setattr(Sampler, "pick", recording)
    return seen


def json_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}


def test_json_schema_always_validates_batched_with_free_requests(server, batches):
    async def run():
        client = openai.AsyncOpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=120)
        constrained = [client.chat.completions.create(model="untrained", messages=USER, seed=seed, temperature=1.0, max_tokens=120,
                                                      response_format=json_format(PERSON)) for seed in range(20)]
        constrained += [client.chat.completions.create(model="untrained", messages=USER, temperature=0, max_tokens=120, n=2,
                                                       response_format=json_format(PERSON))]
        free = [client.chat.completions.create(model="untrained", messages=USER, seed=seed, max_tokens=24, extra_body={"ignore_eos": True})
                for seed in range(8)]
        answers = await asyncio.gather(*constrained, *free)
        await client.close()
        return answers[: len(constrained)], answers[len(constrained) :]

    constrained, free = asyncio.run(run())
    choices = [choice for answer in constrained for choice in answer.choices]
    assert len(choices) == 22
    for choice in choices:
        assert choice.finish_reason == "stop", choice
        check(json.loads(choice.message.content), PERSON)
    assert all(answer.usage.completion_tokens == 24 for answer in free)  # the free rows were not held to the grammar
    assert any(rows > constrained_rows > 1 for rows, constrained_rows in batches), batches  # one batch held both kinds


def test_json_object_parses_and_streams(client):
    for seed in range(4):
        reply = client.chat.completions.create(model="untrained", messages=USER, seed=seed, max_tokens=200, response_format={"type": "json_object"})
        choice = reply.choices[0]
        assert choice.finish_reason in ("stop", "length")
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content), dict)
    chunks = client.chat.completions.create(model="untrained", messages=USER, seed=1, max_tokens=120, response_format=json_format(PERSON), stream=True)
    check(json.loads("".join(c.choices[0].delta.content or "" for c in chunks if c.choices)), PERSON)


def test_tool_choice_required_and_named_give_valid_calls(client):
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    names = set()
    for seed in range(6):
        reply = client.chat.completions.create(model="untrained", messages=USER, seed=seed, max_tokens=200, tools=[WEATHER, TIME], tool_choice="required")
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        call = choice.message.tool_calls[0].function
        check(json.loads(call.arguments), schemas[call.name])
        names.add(call.name)
    named = client.chat.completions.create(model="untrained", messages=USER, seed=0, max_tokens=200, tools=[WEATHER, TIME],
                                           tool_choice={"type": "function", "function": {"name": "get_time"}})
    call = named.choices[0].message.tool_calls[0].function
    assert call.name == "get_time"
    check(json.loads(call.arguments), schemas["get_time"])


@pytest.mark.parametrize("response_format, needle", [
    (json_format({"type": "objekt"}), "Invalid type: objekt"),
    (json_format({"type": "string", "pattern": "(("}), "unclosed group"),
    ({"type": "json_schema"}, "needs \"json_schema\""),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}, "schema"),
    ({"type": "xml"}, "response_format.type"),
])
def test_bad_schemas_are_400_naming_the_problem(server, response_format, needle):
    body = {"model": "untrained", "messages": USER, "response_format": response_format}
    answer = httpx.post(server[0] + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert answer.status_code == 400, answer.text
    assert needle in answer.json()["error"]["message"] + (answer.json()["error"]["param"] or ""), answer.json()


def test_grammar_closes_an_opened_think_block_and_ends_only_when_complete(tokenizer):
    from lmtune.infer.grammar import Grammars, closing_think, json_spec

    eos = tokenizer.eos_token_id
    grammars = Grammars(tokenizer, len(tokenizer), [eos])
    spec = closing_think(json_spec({"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]}), opened=True)
    matcher = grammars.matcher(spec)
    assert grammars.matcher(spec) is not matcher and len(grammars.compiled) == 1  # compiled once, a fresh matcher per row
    import llguidance.torch

    for token in tokenizer.encode('</think>\n\n{"a": true', add_special_tokens=False):
        mask = llguidance.torch.allocate_token_bitmask(1, len(tokenizer))
        matcher.fill(mask, 0)
        assert not (mask[0, eos // 32] >> (eos % 32)) & 1  # no end before the grammar is complete
        assert matcher.ll.consume_token(token), matcher.ll.get_error()
    assert not matcher.ll.is_accepting()
    matcher.consume(tokenizer.encode("}", add_special_tokens=False)[0])
    assert matcher.ll.is_accepting()


def test_generate_json_schema_every_prediction_validates(untrained, tmp_path):
    schema = write_json(tmp_path / "person.json", PERSON)
    data = write_json(tmp_path / "questions.json", RECORDS * 2)
    out = tmp_path / "predictions.jsonl"
    result = lmtune("generate", "--data", data, "--out", out, "--model", untrained, "--json-schema", schema, "--max-new-tokens", 120)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 8
    for row in rows:
        assert row["finish_reason"] == "stop", row
        check(json.loads(row["prediction"]), PERSON)
    bad = write_json(tmp_path / "bad.json", {"type": "objekt"})
    result = lmtune("generate", "--data", data, "--out", tmp_path / "x.jsonl", "--model", untrained, "--json-schema", bad)
    assert result.returncode == 2 and "Invalid type: objekt" in result.stderr + result.stdout, result
