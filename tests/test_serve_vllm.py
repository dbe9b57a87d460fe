"""`lmtune serve --backend vllm` (and `generate` on vLLM): the same API as the built-in engine, driven
by the official openai client against a live server, with token-for-token the answers the built-in
engine gives. vLLM's CPU attention needs head size 64, so the model here is a random Llama of
hidden 128 with 2 heads (the other serving tests use a smaller one).

One vLLM engine serves the whole module (starting one costs about a minute on 2 cores). These tests
run in .venv-vllm (`make test-vllm`); `make test` skips them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json

import httpx
import pytest

import yaml

from conftest import model_run, write_config
from lmtune.serve.schemas import conversation
from test_serve import ERRORS, KEY, ask, check_error, live_server, poll, post, random_lora

if importlib.util.find_spec("vllm") is None:  # one line in `make test`'s summary, not one per test
    pytest.skip("vLLM is not installed here: make test-vllm builds .venv-vllm and runs these", allow_module_level=True)
pytestmark = pytest.mark.vllm
openai = pytest.importorskip("openai")

QUESTIONS = ["Name the capital of France.", "中国的首都是哪里？", "What is two plus two?"]


@pytest.fixture(scope="module")
def run64(tmp_path_factory, tokenizer):
    """A run folder named out (template qwen2.5, greedy, 16 new tokens) of a random Llama with head size
    64. Untied embeddings and blocks drawn at 1/sqrt(width): a tied tiny Llama at std 0.02 repeats the
    prompt's last token forever, which would make equal answers prove little."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=False, initializer_range=128**-0.5, vocab_size=len(tokenizer),
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("llama64")
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    out = model_run(base, tmp_path_factory.mktemp("run64") / "out", "qwen2.5", temperature=0, max_new_tokens=16)
    run = yaml.safe_load((out / "run.yaml").read_text(encoding="utf-8"))
    run["model"]["dtype"] = "float32"  # both engines in fp32 on a GPU too, where auto would be bf16 (near-ties)
    write_config(out / "run.yaml", **run)
    return out


@pytest.fixture(scope="module")
def lora64(run64, tmp_path_factory):
    return random_lora(run64, tmp_path_factory.mktemp("lora64"))


@pytest.fixture(scope="module")
def server(run64, lora64):
    with live_server(model=str(run64), adapters={"lora": str(lora64)}, max_batch=8, backend="vllm", eager=True) as running:
        yield running
        running[1].backend.runner.shutdown()


@pytest.fixture(scope="module")
def hf_engines(run64, lora64):
    """The built-in engine on the same run: the base, and the base with the adapter."""
    from lmtune.infer.engine import load_engine

    return {"out": load_engine(str(run64)), "lora": load_engine(str(run64), str(lora64), "qwen2.5")}


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=120)


def hf_answer(engine, question: str, max_tokens: int) -> tuple[str, list[int]]:
    """What the built-in engine writes for the question, greedy, ignore_eos: (text, token ids)."""
    from lmtune.serve.decode import Row, Sampling, decode

    done = []
    sampling = Sampling(0.0, 1.0, 0, 1.0, 0, 0.0, 0.0, max_tokens, None, ignore_eos=True)
    row = Row(prompt_ids(engine, question), sampling, engine.stops, on_text=lambda *a: None, on_done=lambda *a: done.append(a[0]))
    decode(engine, [row])
    return done[0], row.ids


def prompt_ids(engine, question: str) -> list[int]:
    return engine.encoder.prompt_ids(conversation(ask(question)))


# ---------------------------------------------------------------- the answers are the built-in engine's


def test_models_health_and_tokenizer_routes(server, client):
    assert server[1].loading_status == 503
    assert httpx.get(server[0] + "/health").status_code == 200
    assert [m.id for m in client.models.list().data] == ["lora", "out"]
    tokens = post(server, "/tokenize", {"model": "out", "messages": ask(QUESTIONS[0])}).json()
    assert tokens["tokens"][:1] == server[1].backend.engine.encoder.bos and tokens["max_model_len"] == 2048


@pytest.mark.parametrize("model", ["out", "lora"])
def test_greedy_answers_equal_the_builtin_engine_token_for_token(server, client, hf_engines, model):
    engine = hf_engines[model]
    for question in QUESTIONS:
        text, ids = hf_answer(engine, question, 24)
        answer = client.chat.completions.create(model=model, messages=ask(question), temperature=0, max_tokens=24, logprobs=True,
                                                extra_body={"ignore_eos": True})
        assert answer.choices[0].message.content == text
        assert [entry.token for entry in answer.choices[0].logprobs.content] == [engine.tokenizer.decode([token]) for token in ids]
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(prompt_ids(engine, question)), 24)


def test_adapter_and_base_differ_and_never_leak_in_one_batch(server, hf_engines):
    """Requests for the base and the adapter at once (vLLM batches them together): each gets its own model's answer."""
    async def one(async_client, model, question):
        reply = await async_client.chat.completions.create(model=model, messages=ask(question), temperature=0, max_tokens=12,
                                                            extra_body={"ignore_eos": True})
        return reply.choices[0].message.content

    async def run():
        async_client = openai.AsyncOpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=120)
        jobs = [(model, question) for question in QUESTIONS for model in ("out", "lora")] * 2
        return jobs, await asyncio.gather(*(one(async_client, *job) for job in jobs))

    jobs, answers = asyncio.run(run())
    for (model, question), answer in zip(jobs, answers):
        assert answer == hf_answer(hf_engines[model], question, 12)[0]
    assert answers[0::2] != answers[1::2]  # the adapter changes what the model says
    # (vLLM 0.32's CPU LoRA ops read a base row's adapter index -1 as the last slot: serve/vllm.py keeps that slot empty)


def test_stream_equals_whole_with_exact_usage(server, client):
    body = dict(model="lora", messages=ask(QUESTIONS[1]), temperature=0, max_tokens=20, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**body)
    chunks = list(client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_completions_take_token_ids_and_echo(server, client, hf_engines):
    engine = hf_engines["out"]
    prompt = prompt_ids(engine, QUESTIONS[2])
    reply = client.completions.create(model="out", prompt=prompt, temperature=0, max_tokens=10, extra_body={"ignore_eos": True})
    assert reply.choices[0].text == hf_answer(engine, QUESTIONS[2], 10)[0]
    scored = client.completions.create(model="out", prompt="Two plus two", max_tokens=0, echo=True, logprobs=2)
    logprobs = scored.choices[0].logprobs
    assert scored.choices[0].text == "Two plus two" and logprobs.token_logprobs[0] is None
    assert all(value <= 0 for value in logprobs.token_logprobs[1:]) and all(len(top) >= 2 for top in logprobs.top_logprobs[1:])


def test_sampling_fields_are_honoured(server, client):
    question = ask(QUESTIONS[0])
    free = client.chat.completions.create(model="out", messages=question, temperature=0, max_tokens=16, extra_body={"ignore_eos": True})
    text = free.choices[0].message.content
    cut = next(text[i : i + 2] for i in range(len(text) // 2, len(text) - 1) if text[i : i + 2].isascii() and text[i : i + 2].isalnum())
    stopped = client.chat.completions.create(model="out", messages=question, temperature=0, max_tokens=16, stop=[cut],
                                             extra_body={"ignore_eos": True})
    # cut where the stop string starts; a character whose bytes had not all come (U+FFFD) is never shown
    assert (stopped.choices[0].message.content, stopped.choices[0].finish_reason) == (text[: text.index(cut)].rstrip("\ufffd").strip(), "stop")
    short = client.chat.completions.create(model="out", messages=question, temperature=0, max_completion_tokens=2, extra_body={"ignore_eos": True})
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2
    sampled = [client.chat.completions.create(model="out", messages=question, temperature=1.5, n=3, seed=7, max_tokens=8,
                                              extra_body={"top_k": 0, "ignore_eos": True}) for _ in range(2)]
    assert len(sampled[0].choices) == 3 and len({c.message.content for c in sampled[0].choices}) > 1
    assert [c.message.content for c in sampled[0].choices] == [c.message.content for c in sampled[1].choices]  # seed: redoable
    scored = client.chat.completions.create(model="out", messages=question, temperature=0, logprobs=True, top_logprobs=2, max_tokens=8,
                                            extra_body={"ignore_eos": True})
    content = scored.choices[0].logprobs.content
    assert len(content) == scored.usage.completion_tokens and all(len(t.top_logprobs) == 2 for t in content)
    assert all(t.logprob <= 0 and t.logprob == t.top_logprobs[0].logprob for t in content)  # greedy: the top token


def test_structured_output_and_forced_tool_call(server, client):
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"], "additionalProperties": False}
    reply = client.chat.completions.create(model="lora", messages=ask(QUESTIONS[0]), max_tokens=40,
                                           response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    assert json.loads(reply.choices[0].message.content)["answer"] in ("yes", "no")
    tool = {"type": "function", "function": {"name": "capital", "parameters": {
        "type": "object", "properties": {"country": {"enum": ["France", "China"]}}, "required": ["country"], "additionalProperties": False}}}
    called = client.chat.completions.create(model="out", messages=ask(QUESTIONS[0]), tools=[tool], tool_choice="required", max_tokens=200)
    calls = called.choices[0].message.tool_calls
    assert called.choices[0].finish_reason == "tool_calls" and calls[0].function.name == "capital"
    assert json.loads(calls[0].function.arguments)["country"] in ("France", "China")


# ---------------------------------------------------------------- errors and disconnects


@pytest.mark.parametrize("path, body, status, message, param", ERRORS)
def test_errors_are_those_of_the_builtin_engine(server, path, body, status, message, param):
    check_error(server, path, body, status, message, param)


def test_context_length_exceeded(server):
    error = post(server, "/v1/chat/completions", {"model": "out", "messages": ask("hi"), "max_tokens": 5000}).json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert error["message"].startswith("This model's maximum context length is 2048 tokens. However, you requested")


def test_a_client_that_disconnects_aborts_its_request_in_vllm(server, client):
    backend = server[1].backend
    body = {"model": "lora", "messages": ask("hi"), "max_tokens": 2000, "stream": True, "temperature": 0, "ignore_eos": True}
    with httpx.stream("POST", server[0] + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        poll(lambda: backend.runner.llm.output_processor.get_num_unfinished_requests() == 1)
    poll(lambda: backend.runner.llm.output_processor.get_num_unfinished_requests() == 0)  # aborted in vLLM, not written to the end
    assert backend.stats() == {"queued": 0, "running": 0} and backend.runner.tasks == {}
    assert client.chat.completions.create(model="out", messages=ask(QUESTIONS[0]), max_tokens=4).usage.completion_tokens <= 4
    metrics = httpx.get(server[0] + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert "lmtune_running_batch_size 0.0" in metrics and "lmtune_time_to_first_token_seconds_count" in metrics


# ---------------------------------------------------------------- lmtune generate on vLLM


def test_generate_on_vllm_resumes_and_equals_the_builtin_engine(server, hf_engines, tmp_path):
    """generate_file on the server's vLLM engine (the one `lmtune generate --backend vllm` loads):
    a second run answers only what the first left, and every prediction is the built-in engine's."""
    from conftest import RECORDS, write_json
    from lmtune.infer.generate import generate_file, read_items

    engine, out = server[1].backend.engine, tmp_path / "pred.jsonl"
    first = generate_file(engine, read_items(write_json(tmp_path / "two.json", RECORDS[:2])), out, batch_size=2)
    assert (first.records, first.answered) == (2, 2)
    items = read_items(write_json(tmp_path / "all.json", RECORDS))
    second = generate_file(engine, items, out, batch_size=3)
    assert (second.records, second.answered) == (4, 2)
    expected = hf_engines["out"].generate([item.prompt for item in items])
    assert [row["prediction"] for row in second.rows] == [reply.text for reply in expected]
    assert [row["finish_reason"] for row in second.rows] == [reply.finish_reason for reply in expected]
    assert [json.loads(line)["instruction"] for line in out.read_text(encoding="utf-8").splitlines()] == [r["instruction"] for r in RECORDS]


def test_lmtune_generate_backend_vllm_from_the_command_line(server, hf_engines, run64, tmp_path):
    """The console script in a process of its own (vLLM's engine starts processes: the entry point
    must survive being re-imported), resuming a prediction file: only the records left are answered."""
    from conftest import RECORDS, lmtune_process, write_json
    from lmtune.infer.generate import generate_file, read_items

    out = tmp_path / "pred.jsonl"
    generate_file(server[1].backend.engine, read_items(write_json(tmp_path / "two.json", RECORDS[:2])), out, batch_size=2)
    data = write_json(tmp_path / "all.json", RECORDS)
    ran = lmtune_process("generate", "--model", run64, "--data", data, "--out", out, "--backend", "vllm", "--eager")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "wrote 4 predictions to" in ran.stderr and "(2 from an earlier run)" in ran.stderr
    expected = hf_engines["out"].generate([item.prompt for item in read_items(data)])
    assert [json.loads(line)["prediction"] for line in out.read_text(encoding="utf-8").splitlines()] == [reply.text for reply in expected]
