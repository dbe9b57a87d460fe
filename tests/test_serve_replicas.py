"""`lmtune serve --replicas 2`: two worker processes behind one API; SIGKILL one under load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import httpx
import pytest

from conftest import RECORDS
from test_serve import free_port, poll

pytest.importorskip("openai")


def health(url: str) -> dict:
    try:
        return httpx.get(url + "/health", timeout=10).json()
    except httpx.HTTPError:
        return {}


def chat(url: str, **fields) -> httpx.Response:
    body = {"model": "out", "messages": [{"role": "user", "content": RECORDS[0]["instruction"]}], "temperature": 0, **fields}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=300)


def test_a_killed_replica_fails_its_requests_and_comes_back(full_run):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "lmtune", "serve", "--model", str(full_run / "out"), "--replicas", "2", "--port", str(port), "--max-batch", "4"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        poll(lambda: health(url).get("status") == "ok", 180)
        workers = health(url)["workers"]
        assert [w["state"] for w in workers] == ["live", "live"]
        results = []
        # long answers (EOS ignored) so that requests are in flight on both workers when one is killed
        threads = [threading.Thread(target=lambda: results.append(chat(url, max_tokens=600, ignore_eos=True))) for _ in range(6)]
        [t.start() for t in threads]
        victim = poll(lambda: next((w for w in health(url)["workers"] if w["in_flight"] >= 2), None))
        os.kill(victim["pid"], signal.SIGKILL)
        [t.join() for t in threads]
        statuses = sorted(r.status_code for r in results)
        assert 503 in statuses and set(statuses) <= {200, 503}
        died = [r.json()["error"] for r in results if r.status_code == 503]
        assert all(e["code"] == "replica_died" and e["message"].startswith("replica ") for e in died)
        all_live = lambda h: h and all(w["state"] == "live" for w in h["workers"]) and h  # noqa: E731
        back = poll(lambda: all_live(health(url)), 180)
        assert [w["restarts"] for w in back["workers"] if w["index"] == victim["index"]] == [1]
        assert chat(url).json()["choices"][0]["message"]["content"] == RECORDS[0]["output"]
        metrics = httpx.get(url + "/metrics").text
        assert 'lmtune_workers{state="live"} 2.0' in metrics and 'lmtune_requests_total{status="503"}' in metrics
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=60)[0]
    assert f"API at {url}/v1" in output
