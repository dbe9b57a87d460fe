"""Grounded answers: `chat --kb` and `serve --kb` put the passages retrieved for the latest user
message into the system prompt, and name their sources; /v1/embeddings serves the embedding model.

The language model is the untrained tiny llama with the alpaca template (what it says does not
matter here, only the prompt it is given); the knowledge bases embed with test_kb's tiny random
BERT, and one test uses the offline all-MiniLM-L6-v2.
"""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest

from conftest import lmtune
from test_kb import tiny_model  # noqa: F401  (a fixture)
from test_serve import free_port, poll

openai = pytest.importorskip("openai")

PARIS = "# Paris\nParis is the capital of France."
TEA = "# 茶\n我喜欢喝茶。"
INSTRUCTION = "学习以下文段, 用中文回答用户问题。如果无法从中得到答案，忽略文段内容并用中文回答用户问题。\n回答时用文段编号注明出处，如 [1]、[2]。"
# the whole prompt for PARIS as the question, the user's system prompt "Be terse.", both passages
EXACT_PROMPT = (
    "Be terse.\n\n"
    f"{INSTRUCTION}\n\n"
    f"[1] faq.md\n{PARIS}\n\n"
    f"[2] faq.md\n{TEA}\n\n"
    f"### Instruction:\n{PARIS}\n\n### Response:\n"
)


@pytest.fixture(scope="module")
def kbs(tmp_path_factory, tiny_model):  # noqa: F811
    """Two knowledge bases over the same file: `faq` answers when nothing passes, `strict` refuses."""
    from lmtune.config import KbConfig
    from lmtune.kb.base import KnowledgeBase
    from lmtune.kb.embed import Embedder
    from lmtune.kb.ingest import add_paths

    root = tmp_path_factory.mktemp("grounded")
    (root / "docs").mkdir()
    (root / "docs" / "faq.md").write_text(f"{PARIS}\n\n{TEA}\n", encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMTUNE_HOME", str(root / "home"))
        embedder = Embedder(tiny_model)
        for name, on_no_hit in (("faq", "answer"), ("strict", "refuse")):
            add_paths(KnowledgeBase.create(name, KbConfig(embedding=tiny_model, top_k=2, on_no_hit=on_no_hit)), [str(root / "docs")], embedder)
        yield root / "docs" / "faq.md", embedder


@pytest.fixture(scope="module")
def engine(llama_dir):
    from lmtune.config import GenerateConfig
    from lmtune.infer.engine import load_engine

    return load_engine(str(llama_dir), None, "alpaca", GenerateConfig(temperature=0, max_new_tokens=3))


def rendered(engine, conv) -> str:
    return "".join(segment.text for segment in engine.encoder.render(conv))


def test_the_grounded_prompt_exactly(kbs, engine):
    from lmtune.data.records import USER, Conversation, Turn
    from lmtune.kb.ground import ground, open_retriever

    found = ground(open_retriever("faq", {kbs[1].name: kbs[1]}), PARIS, "Be terse.")
    assert [(hit.text, hit.source) for hit in found.hits] == [(PARIS, str(kbs[0])), (TEA, str(kbs[0]))]
    assert found.note is found.refusal is None
    assert rendered(engine, Conversation([Turn(USER, PARIS)], system=found.system)) == EXACT_PROMPT


def test_nothing_passes_answer_or_refuse(kbs):
    from lmtune.kb.ground import ground, open_retriever

    embedders = {kbs[1].name: kbs[1]}
    answered = ground(open_retriever("faq", embedders, score_threshold=1.0), "What is two plus two?", "Be terse.")
    assert (answered.system, answered.hits, answered.refusal) == ("Be terse.", [], None)
    assert answered.note.startswith("No passage in the knowledge base passed the score threshold")
    refused = ground(open_retriever("faq", embedders, score_threshold=1.0, on_no_hit="refuse"), "What is two plus two?")
    assert (refused.hits, refused.note, refused.refusal) == ([], None, "知识库中没有找到与问题相关的内容，无法回答。")


def test_chat_loop_grounds_every_turn_and_lists_sources(kbs, engine, monkeypatch):
    from lmtune.infer import chat as chat_module
    from lmtune.kb.ground import open_retriever

    seen, said, answer = [], [], engine.chat
    monkeypatch.setattr(engine, "chat", lambda conv, on_text: seen.append(rendered(engine, conv)) or answer(conv, on_text))
    lines = iter([PARIS, "/exit"])
    chat_module.chat_loop(engine, lambda _: next(lines), said.append, "Be terse.", open_retriever("faq", {kbs[1].name: kbs[1]}))
    assert seen == [EXACT_PROMPT]
    assert f"sources:\n[1] {kbs[0]} (score 1.00)\n[2] {kbs[0]} (score " in "".join(said)
    said.clear()
    lines = iter(["What is two plus two?", "/exit"])
    strict = open_retriever("strict", {kbs[1].name: kbs[1]}, score_threshold=1.0)
    chat_module.chat_loop(engine, lambda _: next(lines), said.append, None, strict)
    assert "assistant> 知识库中没有找到与问题相关的内容，无法回答。\n" in "".join(said) and len(seen) == 1  # the model was not asked


def test_lmtune_chat_kb_through_the_cli(kbs, llama_dir):
    result = lmtune("chat", "--model", llama_dir, "--template", "alpaca", "--kb", "faq", "--kb-k", "1", "--max-new-tokens", "2",
                    "--temperature", "0", stdin="Paris is the capital of France.\n/exit\n")
    assert result.returncode == 0, result.stderr
    assert f"\nsources:\n[1] {kbs[0]} (score " in result.stdout and "[2]" not in result.stdout
    missing = lmtune("chat", "--model", llama_dir, "--template", "alpaca", "--kb", "nope", stdin="/exit\n")
    assert missing.returncode == 2 and "no knowledge base 'nope'" in missing.stderr


# ---------------------------------------------------------------- the API


@pytest.fixture(scope="module")
def server(kbs, llama_dir):
    import uvicorn

    from lmtune.config import ServeConfig
    from lmtune.serve.app import Serving, create_app
    from lmtune.serve.kbs import KnowledgeBases
    from lmtune.serve.engines import served_models
    from lmtune.serve.server import start_backend

    config = ServeConfig(model=str(llama_dir), template="alpaca", port=free_port(), kbs=["faq", "strict"])
    serving = Serving(list(served_models(config)), None)
    uv = uvicorn.Server(uvicorn.Config(create_app(serving), host="127.0.0.1", port=config.port, log_level="warning"))
    threading.Thread(target=uv.run, daemon=True).start()
    poll(lambda: uv.started)
    serving.kbs = KnowledgeBases(config)
    serving.backend = start_backend(config)
    yield f"http://127.0.0.1:{config.port}", serving
    uv.should_exit = True


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="none", max_retries=0)


def prompt_tokens(server, system: str | None, question: str) -> int:
    from lmtune.data.records import USER, Conversation, Turn

    return len(server[1].backend.engine.encoder.prompt_ids(Conversation([Turn(USER, question)], system=system)))


def ask(client, question: str, **fields):
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": question}]
    model = client.models.list().data[0].id
    return client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=2, **fields)


def test_api_grounds_by_default_and_returns_the_sources(server, client, kbs, monkeypatch):
    engine, submitted = server[1].backend.engine, []
    submit = server[1].backend.submit
    monkeypatch.setattr(server[1].backend, "submit", lambda i, request, emit: submitted.append(request) or submit(i, request, emit))
    reply = ask(client, PARIS)
    assert [(s["index"], s["text"], s["page"]) for s in reply.sources] == [(1, PARIS, None), (2, TEA, None)]
    assert reply.sources[0]["source"] == reply.sources[1]["source"] == str(kbs[0])
    assert reply.sources[0]["score"] == pytest.approx(1.0, abs=1e-4)
    expected = len(engine.tokenizer(EXACT_PROMPT, add_special_tokens=False)["input_ids"]) + len(engine.encoder.bos)
    assert reply.usage.prompt_tokens == expected == prompt_tokens(server, EXACT_PROMPT.split("\n\n### Instruction")[0], PARIS)
    # the grounded text travels inside the request, as a worker process (--replicas) receives it
    assert submitted[0]["messages"][0]["content"] == EXACT_PROMPT.split("\n\n### Instruction")[0]

    one = ask(client, PARIS, extra_body={"kb": "strict", "kb_k": 1})
    assert [s["text"] for s in one.sources] == [PARIS]
    plain = ask(client, PARIS, extra_body={"kb": None})
    assert getattr(plain, "sources", None) is None and plain.usage.prompt_tokens == prompt_tokens(server, "Be terse.", PARIS)


def test_api_stream_sends_the_sources_last(server, client):
    chunks = list(ask(client, PARIS, stream=True, stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and [s["text"] for s in last.sources] == [PARIS, TEA] and last.usage.prompt_tokens > 0
    plain = list(ask(client, PARIS, stream=True))
    assert plain[-1].choices == [] and len(plain[-1].sources) == 2


def test_api_nothing_passes_answer_or_refuse(server, client):
    question = "What is two plus two?"
    answered = ask(client, question, extra_body={"kb_threshold": 1.0})
    assert answered.sources == [] and answered.kb_note.startswith("No passage in the knowledge base passed")
    assert answered.usage.prompt_tokens == prompt_tokens(server, "Be terse.", question)
    refused = ask(client, question, n=2, extra_body={"kb": "strict", "kb_threshold": 1.0})
    assert [c.message.content for c in refused.choices] == ["知识库中没有找到与问题相关的内容，无法回答。"] * 2
    assert refused.sources == [] and refused.usage.prompt_tokens == refused.usage.completion_tokens == 0
    streamed = list(ask(client, question, stream=True, extra_body={"kb": "strict", "kb_threshold": 1.0}))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "知识库中没有找到与问题相关的内容，无法回答。"


def test_api_unknown_kb_is_a_404_naming_it(server):
    body = {"model": server[1].models[0], "messages": [{"role": "user", "content": "hi"}], "kb": "elsewhere"}
    response = httpx.post(server[0] + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 404
    assert response.json()["error"] == {"message": "The knowledge base 'elsewhere' is not served; served: faq, strict",
                                        "type": "invalid_request_error", "param": "kb", "code": "kb_not_found"}


def test_embeddings_are_the_kb_embedders(server, client, kbs):
    texts = [PARIS, "春节在几月？"]
    reply = client.embeddings.create(model="st", input=texts)  # the client asks for base64
    vectors = np.array([d.embedding for d in reply.data])
    assert vectors.shape == (2, 32) and np.allclose(vectors, kbs[1].encode(texts), atol=1e-6)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert reply.usage.prompt_tokens == sum(len(ids) for ids in kbs[1].model.tokenizer(texts)["input_ids"])
    floats = httpx.post(server[0] + "/v1/embeddings", json={"model": "st", "input": PARIS}, timeout=60).json()
    assert np.allclose(floats["data"][0]["embedding"], vectors[0], atol=1e-6)
    with pytest.raises(openai.NotFoundError, match="The embedding model 'text-embedding-3-small' is not served; served: "):
        client.embeddings.create(model="text-embedding-3-small", input="hi")


def test_embeddings_default_to_minilm(server, client, monkeypatch):
    from sentence_transformers import SentenceTransformer

    from lmtune.config import ServeConfig
    from lmtune.kb.embed import model_folder
    from lmtune.serve.kbs import KnowledgeBases

    monkeypatch.setattr(server[1], "kbs", KnowledgeBases(ServeConfig(model="m")))  # no --kb, no --embedding
    reply = client.embeddings.create(model="all-MiniLM-L6-v2", input=["The capital of South Korea is Seoul.", "春节"])
    vectors = np.array([d.embedding for d in reply.data])
    reference = SentenceTransformer(model_folder("all-MiniLM-L6-v2")).encode(["The capital of South Korea is Seoul.", "春节"])
    assert vectors.shape == (2, 384) and reply.model == "all-MiniLM-L6-v2"
    assert np.allclose(vectors, reference / np.linalg.norm(reference, axis=1, keepdims=True), atol=1e-5)
