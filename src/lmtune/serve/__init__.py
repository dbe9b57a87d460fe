"""`lmtune serve`: an OpenAI-compatible HTTP API (and chat page) over the one engine."""
