import torch

from lmtune.model.load import load_model, load_tokenizer
from lmtune.model.vocab import extend_vocabulary


def test_extension_shortens_a_chinese_corpus_and_grows_the_embeddings(tmp_path, llama_dir):
    corpus = tmp_path / "zh.txt"
    corpus.write_text("\n\n".join(["今天天气很好，我们去公园散步。", "机器学习模型需要大量的训练数据。", "北京是中国的首都，上海是最大的城市。"] * 20), encoding="utf-8")
    result = extend_vocabulary(str(llama_dir), [str(corpus)], add=30, out=tmp_path / "out")
    assert 0 < len(result.added) <= 30 and result.tokens_after < result.tokens_before
    assert all(not any(c.isascii() for c in token) for token in result.added)

    tokenizer, model = load_tokenizer(tmp_path / "out"), load_model(tmp_path / "out")
    old = load_model(llama_dir).get_input_embeddings().weight
    new = model.get_input_embeddings().weight
    assert new.shape[0] == len(tokenizer) == old.shape[0] + len(result.added)
    assert torch.allclose(new[old.shape[0] :], old.mean(dim=0).expand(len(result.added), -1), atol=1e-6)
    text = "北京是中国的首都。 Hello world"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert torch.isfinite(model(torch.tensor([tokenizer.encode(text)])).logits).all()


def test_nothing_is_written_when_no_token_helps(tmp_path, llama_dir):
    import pytest

    from lmtune.errors import LmtuneError

    corpus = tmp_path / "en.txt"
    corpus.write_text("The capital of France is Paris.\n\nTwo plus two is four.", encoding="utf-8")
    with pytest.raises(LmtuneError, match="no new token makes this corpus shorter"):
        extend_vocabulary(str(llama_dir), [str(corpus)], add=10, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
