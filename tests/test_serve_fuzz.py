"""Malformed requests at every route: random JSON types in every field, missing fields, huge and
negative numbers, wrong nesting, bodies that are not JSON or not UTF-8, wrong methods. Seeded, so a
failure names a body that reproduces it. None may get a 5xx; every error is OpenAI's shape
({"error": {"message", "type", …}}); and the server still answers properly afterwards."""

from __future__ import annotations

import collections
import json
import random

import httpx
import pytest
from test_serve import KEY, ask
from test_serve_harness import served  # noqa: F401 (a fixture: the tiny Llama, greedy, 4 tokens an answer)

SEED, PER_ROUTE = 22, 60

# Values any field may get. Numbers that could make a valid request generate for long are left out
# (anything above 2 tokens is either refused or bounded by the served run's max_new_tokens of 4).
VALUES = [None, True, False, 0, 1, 2, -1, -(2**63), 2**63, 10**30, 0.5, -0.0, 1e308, "", "x", "x" * 5000, "\ud800", "😀\x00",
          [], [None], [1, "a"], [[]], [[1, 2], [3]], [10**9], {}, {"a": 1}, {"role": "user"}, [{"role": "user", "content": 5}]]
MESSAGES = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "system", "content": "s"},
            {"role": "tool", "content": "r"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "user", "content": [{"type": "image_url"}]}, {"role": "bogus"}, {"content": "no role"}, "a string", 7]
ROUTES = {  # route → a valid body, whose fields are then mangled
    "/v1/chat/completions": {"model": "tiny", "messages": ask("hi"), "max_tokens": 2, "temperature": 0, "n": 1, "stop": ["\n"], "seed": 1,
                             "logprobs": True, "top_logprobs": 2, "stream": False, "tools": [], "tool_choice": "auto",
                             "chat_template_kwargs": {"enable_thinking": False}, "stream_options": {"include_usage": True}},
    "/v1/completions": {"model": "tiny", "prompt": "hi", "max_tokens": 2, "temperature": 0, "echo": True, "logprobs": 2, "n": 1,
                        "top_p": 0.9, "stream": False, "add_special_tokens": True, "suffix": None},
    "/v1/embeddings": {"model": "tiny", "input": ["a", "b"], "encoding_format": "float"},
    "/tokenize": {"model": "tiny", "prompt": "hi", "add_special_tokens": True, "return_token_strs": True},
    "/detokenize": {"model": "tiny", "tokens": [5, 6, 7]},
}
RAW = [b"", b"{", b"[]", b"null", b"1", b'"x"', b"\xff\xfe\x00", b'{"model": NaN}', b'{"model": "tiny", "max_tokens": Infinity}',
       b"{\"prompt\": \"\\ud800\"}", b"{" * 5000 + b"}" * 5000, b'{"model": "tiny"' + b", " * 10 + b"}"]


def mangled(rng: random.Random, body: dict) -> dict:
    body = json.loads(json.dumps(body))
    for _ in range(rng.randint(1, 3)):
        key = rng.choice([*body, "unknown_field"])
        roll = rng.random()
        if roll < 0.25:
            body.pop(key, None)
        elif roll < 0.4 and key == "messages":
            body[key] = [rng.choice(MESSAGES) for _ in range(rng.randint(0, 4))]
        elif roll < 0.5:
            body[key] = {key: rng.choice(VALUES)} if rng.random() < 0.5 else [body.get(key)]  # wrong nesting
        else:
            body[key] = rng.choice(VALUES)
    if body.get("stream") is True and isinstance(body.get("n"), int) and body["n"] > 4:
        body["n"] = 1
    return body


def check(response: httpx.Response, sent) -> int:
    assert response.status_code < 500, f"{response.status_code} for {sent!r}: {response.text[:500]}"
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str), sent
    elif response.headers.get("content-type", "").startswith("text/event-stream"):
        assert "server_error" not in response.text, f"an error in the stream for {sent!r}: {response.text[-500:]}"
    return response.status_code


@pytest.fixture(scope="module")
def http(served):  # noqa: F811
    with httpx.Client(base_url=served[0], headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
        yield client


def test_no_malformed_body_gets_a_5xx(http):
    rng = random.Random(SEED)
    statuses = collections.Counter()
    for route, valid in ROUTES.items():
        for _ in range(PER_ROUTE):
            body = mangled(rng, valid)
            statuses[route, check(http.post(route, content=json.dumps(body)), (route, body))] += 1
        for raw in RAW:
            statuses[route, check(http.post(route, content=raw), (route, raw))] += 1
    assert sum(statuses.values()) > 300
    for route in ("/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"):  # some mangled bodies are still fine
        assert statuses[route, 200] >= 5, statuses
    assert_still_answers(http)


def test_wrong_methods_keys_and_routes_are_openai_shaped(http, served):  # noqa: F811
    for method, route in [("GET", "/v1/completions"), ("PUT", "/v1/chat/completions"), ("POST", "/v1/models"), ("GET", "/tokenize"),
                          ("DELETE", "/detokenize"), ("POST", "/tokenizer_info"), ("GET", "/v1/nothing")]:
        check(http.request(method, route), (method, route))
    check(httpx.post(served[0] + "/tokenize", json={"prompt": "a"}), "no key")
    check(http.get("/v1/models", params={"x": "\x00" * 10}), "query")
    assert_still_answers(http)


def assert_still_answers(http) -> None:
    assert http.get("/v1/models").json()["data"][0]["id"] == "tiny"
    answer = http.post("/v1/chat/completions", json={"model": "tiny", "messages": ask("hi"), "max_tokens": 2})
    assert answer.status_code == 200 and answer.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert http.post("/tokenize", json={"prompt": "hi"}).json()["count"] >= 1
