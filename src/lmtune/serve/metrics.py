"""The server's Prometheus metrics, in a registry of its own (several servers can share a process)."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# CPU answers take seconds, GPU first tokens milliseconds: buckets that cover both
_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, stats: Callable[[], dict]):
        """stats() gives the backend's {"queued", "running", "workers": [{"state"}…]} when asked."""
        self.stats = stats
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("lmtune_requests", "API requests answered, by HTTP status.", ["status"], registry=registry)
        self.tokens = Counter("lmtune_generated_tokens", "Tokens generated, over all requests.", registry=registry)
        self.ttft = Histogram("lmtune_time_to_first_token_seconds", "From request to its first text.", buckets=_SECONDS, registry=registry)
        self.latency = Histogram("lmtune_request_latency_seconds", "From request to its last token.", buckets=_SECONDS, registry=registry)
        self.queue = Gauge("lmtune_queue_length", "Requests waiting for a batch.", registry=registry)
        self.batch = Gauge("lmtune_running_batch_size", "Answers being generated in the running batch(es).", registry=registry)
        self.unparsed_calls = Counter("lmtune_tool_call_parse_failures", "Answers' text that looked like a tool call but did not "
                                      "read as one (returned as content).", registry=registry)
        self.workers = Gauge("lmtune_workers", "Engine workers by state (live, starting, restarting).", ["state"], registry=registry)

    def render(self) -> bytes:
        stats = self.stats()
        self.queue.set(stats.get("queued", 0))
        self.batch.set(stats.get("running", 0))
        for state in ("live", "starting", "restarting"):
            self.workers.labels(state).set(sum(w["state"] == state for w in stats.get("workers", [])))
        return generate_latest(self.registry)
