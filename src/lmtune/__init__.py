"""lmtune: fine-tune, evaluate, chat with and serve open causal language models."""

__version__ = "0.1.0"
