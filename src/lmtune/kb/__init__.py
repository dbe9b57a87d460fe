"""The knowledge base: files → passages → embeddings → FAISS + SQLite → retrieval for grounded answers.

Beside `data` (its own loaders and splitter); `serve` and `chat` import it, never the other way round.
"""
