"""The chat page (web/) in a real headless Chromium: Debian's `chromium` package
(scripts/chromium.sh; $TESSERA_CHROMIUM), driven by Playwright through `executable_path`
(Playwright's own browser download is never used), against the release binary on
loopback with an API key, the test moderation policy and greedy chat defaults.

What a person does: enter the key, send a message and watch the answer stream in, stop
a generation, regenerate, rate an answer with a comment, reload and find the
conversation (list and transcript) again, get it back after the server was killed and
restarted (the page reconnects by itself); a blocked input shows the policy's message;
the input counter follows the policy's limit; Enter inside an IME composition does not
send; untrusted text (model output, titles) renders as text. Every wait is for an event
(a DOM state or a WebSocket frame); the timeouts only guard against a hang. Screenshots
go to tests/python/screenshots/ (git-ignored).
"""

import datetime
import json
import os
import pathlib
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from conftest import API_KEY, ROOT, Server, binary

CHROMIUM = os.environ.get("TESSERA_CHROMIUM", "/usr/lib/chromium/chromium")
SHOTS = ROOT / "tests" / "python" / "screenshots"
POLICY = ROOT / "tests" / "fixtures" / "moderation" / "policy.toml"
BLOCKED_MESSAGE = "输入包含敏感内容,请重新表述"
HANG_GUARD_MS = 180_000
# Greedy (plain argmax: a repetition penalty would end a count early), and short enough
# for a loaded 2-core CI machine; a long count still runs for many engine steps, so a stop
# lands mid-stream.
CHAT_DEFAULTS = "temperature=0,repetition_penalty=1,max_tokens=96"

expect.set_options(timeout=HANG_GUARD_MS)


@pytest.fixture(scope="module")
def chat_server():
    data_dir = tempfile.mkdtemp(prefix="tessera-page-")
    s = Server("--moderation-policy", str(POLICY), "--chat-defaults", CHAT_DEFAULTS,
               "--data-dir", data_dir)
    s.data_dir = data_dir
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: run scripts/chromium.sh install "
                    "(Debian's chromium package) or set TESSERA_CHROMIUM")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        # As root, Chromium's sandbox cannot start; the page is our own, on loopback.
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


class Frames:
    """Every JSON message the page's WebSockets receive, in order."""

    def __init__(self, page: Page):
        self.page = page
        self.received: list[dict] = []
        self.errors: list[str] = []  # uncaught errors of the page's scripts
        page.on("websocket", lambda ws: ws.on("framereceived", self._frame))

    def _frame(self, payload):
        if isinstance(payload, str):
            self.received.append(json.loads(payload))

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.received if m.get("type") == kind]

    def wait(self, kind: str, count: int) -> list[dict]:
        """Waits until `count` messages of `kind` arrived (the page's event loop runs
        while it waits)."""
        deadline = time.monotonic() + HANG_GUARD_MS / 1000
        while len(self.of_type(kind)) < count:
            assert time.monotonic() < deadline, f"no {count} x {kind}: {self.received[-5:]}"
            self.page.wait_for_timeout(20)
        return self.of_type(kind)


def open_page(browser, server, **context_args):
    context = browser.new_context(**context_args)
    page = context.new_page()
    frames = Frames(page)
    page.on("pageerror", lambda e: frames.errors.append(str(e)))
    page.goto(server.url + "/")
    # The server has an API key: the socket is refused (4401) and the page asks for it.
    expect(page.locator("#key-form")).to_be_visible()
    page.fill("#key-input", API_KEY)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#status")).to_have_text("connected")
    expect(page.locator("#model")).to_have_text("smol")
    return context, page, frames


def watch_rendering(page: Page):
    """Records, at each change of the answers, the last answer's text and whether it is
    still streaming (its cursor shows)."""
    page.evaluate("""() => {
      window.__renders = [];
      new MutationObserver(() => {
        const bubbles = document.querySelectorAll('.msg.assistant .bubble');
        const last = bubbles[bubbles.length - 1];
        if (last) window.__renders.push(
          {text: last.textContent, streaming: last.classList.contains('cursor')});
      }).observe(document.getElementById('messages'),
                 {childList: true, subtree: true, characterData: true, attributes: true});
    }""")


def send(page: Page, text: str):
    page.fill("#input", text)
    page.press("#input", "Enter")


def answers(page: Page) -> list[str]:
    """The answers' text content (what `to_have_text` compares)."""
    return page.locator(".msg.assistant .bubble").all_text_contents()


def test_a_conversation_in_the_browser(browser, chat_server):
    context, page, frames = open_page(browser, chat_server)
    expect(page.locator("#counter")).to_have_text("0 / 512")
    watch_rendering(page)

    # 1. Send with Enter; the answer streams in (rendered while the cursor shows).
    first = "Count from 1 to 20, one number per line."
    send(page, first)
    expect(page.locator(".msg.user .bubble")).to_have_text([first])
    done = frames.wait("generation.done", 1)[0]
    deltas = [m for m in frames.of_type("delta") if m["generation_id"] == done["generation_id"]]
    assert len(deltas) >= 2, deltas
    final = answers(page)[0]
    assert final.strip(), "an answer is shown"
    renders = page.evaluate("window.__renders")
    partial = [r for r in renders if r["streaming"] and 0 < len(r["text"]) < len(final)]
    assert partial, "the answer was never shown while it streamed"
    stats = page.locator(".msg.assistant .stats").first
    expect(stats).to_contain_text("TTFT")
    expect(stats).to_contain_text(f"{done['usage']['output_tokens']} tokens")
    print(f"\npage turn: ttft_ms={done['ttft_ms']} tokens_per_second={done['tokens_per_second']} "
          f"output_tokens={done['usage']['output_tokens']}")
    conversation = page.evaluate("localStorage.getItem('tessera.conversation')")
    assert conversation and conversation.startswith("conv_")
    # The first message names the conversation.
    expect(page.locator(f"#conversations li[data-id='{conversation}'] .title")).to_have_text(first)

    # 2. Stop a long answer mid-stream.
    send(page, "Count from 1 to 500, one number per line.")
    expect(page.locator("#stop")).to_be_visible()
    started = frames.wait("generation.started", 2)[1]
    frames.wait("delta", len(deltas) + 1)
    page.click("#stop")
    stopped = frames.wait("generation.done", 2)[1]
    assert stopped["generation_id"] == started["generation_id"]
    assert stopped["finish_reason"] == "cancelled", stopped
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator(".msg.assistant .stats").nth(1)).to_contain_text("cancelled")

    # 3. Regenerate the stopped answer: the conversation keeps two answers, the last one
    # from a new response.
    page.click(".msg.assistant .regenerate")
    again = frames.wait("generation.done", 3)[2]
    regen_started = frames.of_type("generation.started")[2]
    assert regen_started["regenerate"] is True
    assert again["response_id"] != stopped["response_id"]
    expect(page.locator(".msg.assistant")).to_have_count(2)
    expect(page.locator(".regenerate")).to_have_count(1)

    # 4. Rate the first answer, with a comment.
    good = page.locator(".msg.assistant").first.get_by_role("button", name="Good answer")
    good.click()
    expect(good).to_have_class("on")
    page.locator(".msg.assistant .comment input").fill("clear and short")
    page.click(".msg.assistant .comment button")
    expect(page.locator(".msg.assistant .comment")).to_have_count(0)
    recorded = frames.wait("feedback.recorded", 2)
    assert recorded[1]["feedback"]["comment"] == "clear and short"
    assert recorded[1]["feedback"]["response_id"] == done["response_id"]

    # 5. Reload: the key is remembered, the conversation is listed and its transcript
    # (both answers, as they were) comes back.
    before = answers(page)
    users_before = page.locator(".msg.user .bubble").all_text_contents()
    page.screenshot(path=str(SHOTS / "chat.png"))
    page.reload()
    expect(page.locator("#status")).to_have_text("connected")
    expect(page.locator(f"#conversations li[data-id='{conversation}']")).to_have_class("active")
    expect(page.locator(".msg.user .bubble")).to_have_text(users_before)
    expect(page.locator(".msg.assistant .bubble")).to_have_text(before)
    expect(page.locator(".msg.assistant .regenerate")).to_have_count(1)

    # 6. A blocked input: the policy's message in place of the answer; nothing stored.
    send(page, "how do I make a bomb")
    blocked = page.locator(".msg.assistant.blocked")
    expect(blocked).to_have_count(1)
    expect(blocked.locator(".bubble")).to_have_text(BLOCKED_MESSAGE)
    expect(blocked.locator(".stats")).to_have_text("blocked by the content policy")
    page.screenshot(path=str(SHOTS / "blocked.png"))
    stored = api(chat_server, "GET", f"/conversations/{conversation}/items?order=asc&limit=100")["data"]
    assert [i["role"] for i in stored] == ["user", "assistant", "user", "assistant"], stored

    # 7. The counter follows the policy's max_input_chars (characters, not bytes).
    page.fill("#input", "字" * 513)
    expect(page.locator("#counter")).to_have_text("513 / 512")
    expect(page.locator("#counter")).to_have_class("counter over")
    expect(page.locator("#send")).to_be_disabled()

    # 8. Enter while an IME composes (choosing a candidate) does not send.
    page.fill("#input", "你好")
    users = page.locator(".msg.user").count()
    page.evaluate("""() => document.getElementById('input').dispatchEvent(new KeyboardEvent(
      'keydown', {key: 'Enter', keyCode: 229, isComposing: true, bubbles: true,
                  cancelable: true}))""")
    page.wait_for_timeout(0)
    assert page.locator(".msg.user").count() == users
    expect(page.locator("#input")).to_have_value("你好")
    page.fill("#input", "")

    # 9. Dark theme and a phone-width screen (the sidebar becomes a drawer).
    page.click("#theme")
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    page.screenshot(path=str(SHOTS / "chat-dark.png"))
    page.set_viewport_size({"width": 390, "height": 780})
    expect(page.locator("#menu")).to_be_visible()
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    page.click("#menu")
    expect(page.locator("#sidebar")).to_be_in_viewport()
    # The drawer has slid in (its transition over) before the screenshot.
    page.wait_for_function(
        "() => getComputedStyle(document.getElementById('sidebar')).transform === 'none'")
    page.screenshot(path=str(SHOTS / "chat-phone.png"))
    context.close()

    # The rating is in the fine-tuning export, with the dialog it rated.
    out_dir = tempfile.mkdtemp(prefix="tessera-page-export-")
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    subprocess.run([binary(), "feedback", "export", "--since", today, "--out-dir", out_dir,
                    "--data-dir", chat_server.data_dir], check=True, capture_output=True)
    good_lines = pathlib.Path(out_dir, "feedback-good.jsonl").read_text().splitlines()
    assert len(good_lines) == 1, good_lines
    messages = json.loads(good_lines[0])["messages"]
    assert messages[-2] == {"role": "user", "content": first}
    streamed = "".join(d["text"] for d in deltas)
    assert messages[-1] == {"role": "assistant", "content": streamed}
    assert frames.errors == []


def test_the_page_reconnects_after_a_dropped_connection(browser):
    """The server is killed (the socket drops without a close frame) and started again on
    the same port and store: the page reconnects by itself, shows the conversation again
    and goes on in it."""
    data_dir = tempfile.mkdtemp(prefix="tessera-page-reconnect-")
    flags = ("--chat-defaults", CHAT_DEFAULTS, "--data-dir", data_dir)
    first = Server(*flags)
    context, page, frames = open_page(browser, first)
    send(page, "Say hello.")
    done = frames.wait("generation.done", 1)[0]
    answer = answers(page)
    first.proc.kill()
    first.proc.wait(timeout=60)
    expect(page.locator("#status")).to_contain_text("reconnecting")
    port = int(first.url.rsplit(":", 1)[1])
    second = Server(*flags, port=port)
    try:
        expect(page.locator("#status")).to_have_text("connected")
        # The page asked for the conversation again (it was still on screen).
        history = frames.wait("conversation.history", 1)[0]
        assert history["conversation"]["id"] == done["conversation_id"]
        expect(page.locator(".msg.user .bubble")).to_have_text(["Say hello."])
        expect(page.locator(".msg.assistant .bubble")).to_have_text(answer)
        send(page, "Say it again.")
        resumed = frames.wait("generation.done", 2)[1]
        assert resumed["conversation_id"] == done["conversation_id"]
        assert resumed["usage"]["input_tokens"] > done["usage"]["input_tokens"], "history in the prompt"
        expect(page.locator(".msg.assistant")).to_have_count(2)
        assert frames.errors == []
    finally:
        context.close()
        assert second.stop() == 0


def api(server, method: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(
        server.base_url + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


XSS_TITLE = '<img src=x onerror="window.__xss=\'title\'">'
XSS_ANSWER = "\n\n".join([
    "<script>window.__xss='script'</script>",
    '<img src=x onerror="window.__xss=\'img\'">',
    "[click me](javascript:window.__xss='link')",
    "**bold** and `<b>code</b>`",
    "```html\n<iframe src=\"javascript:window.__xss='frame'\"></iframe>\n```",
])


def test_untrusted_text_renders_as_text(browser, chat_server):
    with urllib.request.urlopen(chat_server.url + "/", timeout=30) as r:
        csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp, csp
    # Model output and a title, stored as a conversation (the Conversations API takes
    # assistant items), shown by the page the way it shows any answer.
    conv = api(chat_server, "POST", "/conversations", {
        "metadata": {"title": XSS_TITLE},
        "items": [
            {"type": "message", "role": "user", "content": "<script>window.__xss='user'</script>"},
            {"type": "message", "role": "assistant",
             "content": XSS_ANSWER},
        ],
    })
    context, page, frames = open_page(browser, chat_server,
                                      permissions=["clipboard-read", "clipboard-write"])
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    title = page.locator(f"#conversations li[data-id='{conv['id']}'] .title")
    expect(title).to_have_text(XSS_TITLE)
    title.click()
    answer = page.locator(".msg.assistant .bubble")
    expect(answer).to_contain_text("<script>window.__xss='script'</script>")
    expect(answer).to_contain_text('<img src=x onerror="window.__xss=\'img\'">')
    expect(answer).to_contain_text("click me")
    expect(page.locator(".msg.user .bubble")).to_have_text("<script>window.__xss='user'</script>")
    # Markdown renders (bold, inline code with its HTML as text, a code block) ...
    expect(answer.locator("strong")).to_have_text("bold")
    expect(answer.locator("p code")).to_have_text("<b>code</b>")
    expect(answer.locator("pre code")).to_contain_text("<iframe")
    # ... and no HTML of the text became an element, no javascript: link exists.
    for selector in ["#messages script", "#messages img", "#messages iframe", "#messages b",
                     "#conversations img", "a[href^='javascript']"]:
        expect(page.locator(selector)).to_have_count(0)
    # Copy takes the answer's own text (the Markdown source), not the rendered HTML.
    copy = page.get_by_role("button", name="Copy the answer")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("() => navigator.clipboard.readText()") == XSS_ANSWER
    page.get_by_text("click me").click()
    page.wait_for_timeout(0)
    assert page.evaluate("window.__xss") is None
    assert dialogs == [] and frames.errors == []
    page.screenshot(path=str(SHOTS / "untrusted.png"))
    context.close()


def test_conversations_are_created_renamed_and_deleted(browser, chat_server):
    context, page, frames = open_page(browser, chat_server)
    page.click("#new-chat")
    created = frames.wait("conversation.created", 1)[0]["conversation"]["id"]
    item = page.locator(f"#conversations li[data-id='{created}']")
    expect(item).to_have_class("active")
    expect(item.locator(".title")).to_have_text("New chat")
    item.get_by_role("button", name="Rename").click()
    item.get_by_role("textbox", name="Title").fill("Holiday plans 假期")
    item.get_by_role("textbox", name="Title").press("Enter")
    expect(item.locator(".title")).to_have_text("Holiday plans 假期")
    stored = api(chat_server, "GET", f"/conversations/{created}")
    assert stored["metadata"]["title"] == "Holiday plans 假期"
    page.once("dialog", lambda d: d.accept())
    item.get_by_role("button", name="Delete").click()
    expect(item).to_have_count(0)
    with pytest.raises(urllib.error.HTTPError) as gone:
        api(chat_server, "GET", f"/conversations/{created}")
    assert gone.value.code == 404
    assert frames.errors == []
    context.close()
