"""The chat page (serve/web/index.html) in a real headless Chromium, talking to a real `lmtune serve`.

The browser is Debian's chromium (Playwright's own download is not reachable from CI); Playwright's
Python package drives it over CDP. The served model is conftest's full_run: with temperature 0 it
answers its four training questions with their exact outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="the browser test needs Debian's chromium at /usr/bin/chromium: apt-get install chromium fonts-noto-cjk (.ci/run does)",
)
# No sandbox: CI runs as root in a container. The rest keeps Chromium from reaching for the network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
ZH, ZH_ANSWER = "中国的首都是哪里？", "中国的首都是北京。"
EN, EN_ANSWER = "What is two plus two?", "Two plus two is four."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, key: str | None = None):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, json.loads(response.read() or b"null")


@contextlib.contextmanager
def serving(model: Path, log: Path, *flags: str):
    """`lmtune serve` in a subprocess, as a user starts it; yields its URL once GET /health answers 200."""
    port = free_port()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lmtune", "serve", "--model", str(model), "--port", str(port), *flags],
            stdout=out, stderr=subprocess.STDOUT, env={k: v for k, v in os.environ.items() if k != "LMTUNE_API_KEY"},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"lmtune serve exited with {proc.returncode}:\n{log.read_text(encoding='utf-8')}"
            assert time.monotonic() < deadline, f"no GET /health within 180 s:\n{log.read_text(encoding='utf-8')}"
            with contextlib.suppress(OSError):
                if get(url + "/health")[0] == 200:
                    break
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(full_run):
    with serving(full_run / "out", full_run / "serve-web.log") as url:
        yield url


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 720})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def chat_requests(page) -> list:
    """The page's POSTs to /v1/chat/completions as the browser sent them (body: .post_data_json), filled as they go."""
    sent = []
    page.on("request", lambda r: sent.append(r) if r.url.endswith("/v1/chat/completions") and r.method == "POST" else None)
    return sent


def say(page, text: str):
    """Type a message as a user does (the Chinese through the keyboard's text input) and press Enter."""
    page.get_by_test_id("input").click()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def wait_idle(page):
    page.wait_for_function("document.body.dataset.busy === 'false'")


def test_chinese_and_english_replies_stream_into_the_page(page, server, tmp_path):
    from playwright.sync_api import expect

    sent = chat_requests(page)
    page.goto(server + "/")
    _, models = get(server + "/v1/models")
    ids = [m["id"] for m in models["data"]]
    assert ids, models
    expect(page.get_by_test_id("model").locator("option")).to_have_text(ids)
    page.get_by_test_id("temperature").fill("0")

    say(page, ZH)
    replies = page.get_by_test_id("reply")
    expect(replies).to_have_count(1)
    wait_idle(page)
    expect(replies.nth(0)).to_have_text(ZH_ANSWER)

    say(page, EN)
    expect(replies).to_have_count(2)
    wait_idle(page)
    expect(replies.nth(1)).to_have_text(EN_ANSWER)
    expect(page.get_by_test_id("user-message")).to_have_text([ZH, EN])
    expect(page.get_by_test_id("error")).to_be_hidden()

    first, second = (r.post_data_json for r in sent)
    assert first["stream"] is True and first["temperature"] == 0 and first["model"] == ids[0]
    assert first["messages"] == [{"role": "user", "content": ZH}]
    assert second["messages"] == [  # the history goes with the second message
        {"role": "user", "content": ZH}, {"role": "assistant", "content": ZH_ANSWER}, {"role": "user", "content": EN},
    ]
    page.screenshot(path=tmp_path / "chat.png")

    page.get_by_test_id("clear").click()
    expect(replies).to_have_count(0)
    say(page, EN)
    wait_idle(page)
    assert sent[-1].post_data_json["messages"] == [{"role": "user", "content": EN}]


def test_system_prompt_and_sampling_fields_reach_the_request(page, server):
    sent = chat_requests(page)
    page.goto(server + "/")
    page.get_by_test_id("system").fill("你是一个乐于助人的助手。")
    page.get_by_test_id("temperature").fill("0")
    page.get_by_test_id("top-p").fill("0.9")
    page.get_by_test_id("max-tokens").fill("16")
    say(page, ZH)
    wait_idle(page)
    body = sent[0].post_data_json
    assert body["messages"][0] == {"role": "system", "content": "你是一个乐于助人的助手。"}
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0, 0.9, 16)


def test_shift_enter_is_a_new_line_not_a_send(page, server):
    sent = chat_requests(page)
    page.goto(server + "/")
    page.get_by_test_id("input").click()
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    assert page.get_by_test_id("input").input_value() == "line one\nline two" and not sent


def test_stop_aborts_the_stream_and_the_server_frees_the_slot(page, llama_dir, tmp_path):
    from playwright.sync_api import expect

    # The trained model always ends within a few tokens; the untrained one, greedy, writes newlines
    # until max_tokens (seconds on a CPU), so Stop lands mid-stream.
    with serving(llama_dir, tmp_path / "serve.log", "--template", "alpaca") as url:
        page.goto(url + "/")
        page.get_by_test_id("temperature").fill("0")
        page.get_by_test_id("max-tokens").fill("1500")
        say(page, "Tell me a long story.")
        page.wait_for_function("document.querySelector('[data-testid=reply]')?.textContent.length > 0")
        page.get_by_test_id("stop").click()
        expect(page.get_by_test_id("stopped")).to_be_visible()
        wait_idle(page)
        reply = page.get_by_test_id("reply")
        stopped_at = reply.text_content()
        assert len(stopped_at) < 1500
        deadline = time.monotonic() + 2
        while get(url + "/health")[1]["running"]:  # the server stops generating for the closed connection
            assert time.monotonic() < deadline, get(url + "/health")
            time.sleep(0.1)
        page.wait_for_timeout(300)
        assert reply.text_content() == stopped_at  # nothing more arrives
        expect(page.get_by_test_id("send")).to_be_enabled()


def test_server_errors_are_shown_in_the_page(page, server):
    from playwright.sync_api import expect

    page.goto(server + "/")
    page.get_by_test_id("max-tokens").fill("-1")
    say(page, EN)
    wait_idle(page)
    error = page.get_by_test_id("error")
    expect(error).to_be_visible()
    assert "{" not in error.text_content()  # the message, not the JSON around it
    expect(page.get_by_test_id("input")).to_have_value(EN)  # given back to send again
    expect(page.get_by_test_id("reply")).to_have_count(0)


def test_with_an_api_key_the_page_asks_for_it_then_works(page, full_run, tmp_path):
    from playwright.sync_api import expect

    sent = chat_requests(page)
    with serving(full_run / "out", tmp_path / "serve.log", "--api-key", "sk-test-key") as url:
        with pytest.raises(urllib.error.HTTPError) as denied:
            get(url + "/v1/models")
        assert denied.value.code == 401
        page.goto(url + "/")
        expect(page.get_by_test_id("key-row")).to_be_visible()
        expect(page.get_by_test_id("error")).to_contain_text("API key")
        expect(page.get_by_test_id("model").locator("option")).to_have_count(0)

        page.get_by_test_id("api-key").fill("sk-test-key")
        page.get_by_test_id("save-key").click()
        expect(page.get_by_test_id("model").locator("option")).not_to_have_count(0)
        expect(page.get_by_test_id("error")).to_be_hidden()
        page.get_by_test_id("temperature").fill("0")
        say(page, EN)
        wait_idle(page)
        expect(page.get_by_test_id("reply")).to_have_text([EN_ANSWER])
        assert sent[0].all_headers()["authorization"] == "Bearer sk-test-key"
