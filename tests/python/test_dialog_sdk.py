"""The Responses and Conversations APIs through the official `openai` SDK, unchanged:
chains with previous_response_id (the third prompt holds the first exchange), retrieve /
delete / input_items, typed streaming events, store=false, conversations and their items;
then persistence: SIGKILL in the middle of a stream and a restart on the same --data-dir,
and two servers sharing one PostgreSQL (Debian's package, scripts/postgres.sh).
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import openai
import pytest
from openai import OpenAI

from conftest import API_KEY, MODEL, ROOT, Server

GREEDY = dict(model=MODEL, temperature=0, max_output_tokens=24)


def client(server) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=120)


def prompt_tokens(server, messages: list[dict]) -> int:
    """Tokens of `messages` through the chat template (vLLM's /tokenize)."""
    body = json.dumps({"model": MODEL, "messages": messages}).encode()
    req = urllib.request.Request(server.url + "/tokenize", data=body, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(req, timeout=60) as res:
        return json.load(res)["count"]


def test_chain_of_three_remembers_the_first_exchange(server):
    c = client(server)
    long = dict(GREEDY, max_output_tokens=96)
    first = c.responses.create(input="My name is Lin.", **long)
    assert first.object == "response" and first.id.startswith("resp_")
    assert first.status == "completed" and first.output[0].content[0].type == "output_text"
    second = c.responses.create(input="I like green tea.", previous_response_id=first.id, **long)
    third = c.responses.create(input="What is my name?", previous_response_id=second.id, **long)
    history = [
        {"role": "user", "content": "My name is Lin."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "I like green tea."},
        {"role": "assistant", "content": second.output_text},
        {"role": "user", "content": "What is my name?"},
    ]
    assert third.usage.input_tokens == prompt_tokens(server, history)
    assert third.usage.input_tokens > first.usage.input_tokens + second.usage.output_tokens
    assert third.usage.input_tokens_details.cached_tokens >= second.usage.input_tokens // 16 * 16
    # SmolLM2-135M is too small to answer "Lin" here (greedy, it repeats "I'm glad to hear
    # that."), so the check is that the server's prompt is exactly the client-side history:
    # the same dialog sent statelessly through chat completions gives the same answer.
    chat = c.chat.completions.create(model=MODEL, messages=history, temperature=0, max_tokens=96)
    assert chat.choices[0].message.content == third.output_text
    assert chat.usage.prompt_tokens == third.usage.input_tokens
    assert third.previous_response_id == second.id


def test_retrieve_input_items_and_delete(server):
    c = client(server)
    res = c.responses.create(input=[{"role": "developer", "content": "Be brief."},
                                    {"role": "user", "content": [{"type": "input_text", "text": "Hi!"}]}],
                             metadata={"ticket": "42"}, **GREEDY)
    got = c.responses.retrieve(res.id)
    assert got.id == res.id and got.output_text == res.output_text and got.metadata == {"ticket": "42"}
    items = list(c.responses.input_items.list(res.id, order="asc"))
    assert [i.role for i in items] == ["developer", "user"]
    assert items[1].content[0].text == "Hi!"
    c.responses.delete(res.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(res.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.create(input="again", previous_response_id=res.id, **GREEDY)


def test_streaming_events_parse_in_order(server):
    c = client(server)
    first = c.responses.create(input="Name a color.", **GREEDY)
    events = list(c.responses.create(input="Name another.", previous_response_id=first.id, stream=True, **GREEDY))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert set(kinds[4:-4]) <= {"response.output_text.delta"}
    seqs = [e.sequence_number for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    final = events[-1].response
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert final.output_text == text == events[-4].text
    assert final.usage.input_tokens > first.usage.input_tokens
    assert c.responses.retrieve(final.id).output_text == text, "stored before completed"


def test_unstored_responses_cannot_be_chained(server):
    c = client(server)
    res = c.responses.create(input="Forget me.", store=False, **GREEDY)
    assert res.output_text
    with pytest.raises(openai.NotFoundError):
        c.responses.create(input="next", previous_response_id=res.id, **GREEDY)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(res.id)
    with pytest.raises(openai.BadRequestError) as err:
        c.responses.create(input="x", tools=[{"type": "function", "name": "f", "parameters": {
            "type": "object", "properties": {"a": {"type": "nonsense"}}}}], **GREEDY)
    assert err.value.body["param"] == "tools[0].parameters"


def test_conversations_and_items(server):
    c = client(server)
    conv = c.conversations.create(items=[{"role": "system", "content": "You answer in one word."}],
                                  metadata={"user": "lin"})
    assert conv.object == "conversation" and conv.metadata == {"user": "lin"}
    assert c.conversations.retrieve(conv.id).id == conv.id
    assert c.conversations.update(conv.id, metadata={"user": "lin", "tier": "gold"}).metadata["tier"] == "gold"
    added = c.conversations.items.create(conv.id, items=[{"role": "user", "content": "My name is Lin."},
                                                          {"role": "assistant", "content": "Hello Lin."}])
    assert [i.role for i in added.data] == ["user", "assistant"]
    res = c.responses.create(input="What is my name?", conversation=conv.id, **GREEDY)
    assert res.conversation.id == conv.id
    items = list(c.conversations.items.list(conv.id, order="asc", limit=2))  # pages of 2
    assert [i.role for i in items] == ["system", "user", "assistant", "user", "assistant"]
    assert items[-1].id == res.output[0].id and items[-1].content[0].text == res.output_text
    newest = c.conversations.items.list(conv.id, limit=1)
    assert newest.data[0].id == res.output[0].id and newest.has_more
    one = c.conversations.items.retrieve(items[1].id, conversation_id=conv.id)
    assert one.content[0].text == "My name is Lin."
    c.conversations.items.delete(items[1].id, conversation_id=conv.id)
    assert len(list(c.conversations.items.list(conv.id))) == 4
    with pytest.raises(openai.NotFoundError):
        c.conversations.items.retrieve(items[1].id, conversation_id=conv.id)
    deleted = c.conversations.delete(conv.id)
    assert deleted.deleted and deleted.id == conv.id
    with pytest.raises(openai.NotFoundError):
        c.conversations.retrieve(conv.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.create(input="x", conversation=conv.id, **GREEDY)


def kill_mid_stream(server: Server, conv_id: str) -> None:
    """SIGKILLs the server while a long answer streams (after its first delta)."""
    stream = client(server).responses.create(input="Count from one to one hundred in words.", conversation=conv_id,
                                             stream=True, extra_body={"ignore_eos": True},
                                             model=MODEL, temperature=0, max_output_tokens=400)
    for event in stream:
        if event.type == "response.output_text.delta":
            server.proc.send_signal(signal.SIGKILL)
            break
    server.proc.wait(timeout=30)


def test_sigkill_mid_stream_keeps_every_completed_turn():
    data_dir = tempfile.mkdtemp(prefix="tessera-kill-")
    try:
        first = Server("--data-dir", data_dir)
        c = client(first)
        conv = c.conversations.create()
        try:
            for text in ("My name is Lin.", "I live in Paris."):
                c.responses.create(input=text, conversation=conv.id, **GREEDY)
        except openai.APIError:
            print("".join(first.lines[-40:]))
            raise
        kill_mid_stream(first, conv.id)
        again = Server("--data-dir", data_dir)
        try:
            c = client(again)
            items = list(c.conversations.items.list(conv.id, order="asc"))
            assert len(items) == 4, "the two completed turns, nothing of the killed one"
            assert [i.content[0].text for i in items[::2]] == ["My name is Lin.", "I live in Paris."]
            res = c.responses.create(input="What is my name?", conversation=conv.id, **GREEDY)
            assert res.status in ("completed", "incomplete") and res.output_text
            assert len(list(c.conversations.items.list(conv.id))) == 6
        finally:
            assert again.stop() == 0
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def postgres():
    """A throwaway PostgreSQL cluster (scripts/postgres.sh run), stopped by pid."""
    port = free_port()
    data = pathlib.Path(tempfile.gettempdir()) / f"tessera-sdk-pg-{os.getpid()}-{port}"
    shutil.rmtree(data, ignore_errors=True)
    log = open(f"{data}.log", "w")
    proc = subprocess.Popen(["bash", str(ROOT / "scripts/postgres.sh"), "run", str(data), str(port)],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    deadline = time.time() + 600
    while True:
        assert proc.poll() is None, "PostgreSQL did not start:\n" + open(f"{data}.log").read()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.time() < deadline, "PostgreSQL not ready"
            time.sleep(0.2)
    time.sleep(0.5)  # the port opens just before the server accepts logins
    yield f"postgres://tessera@127.0.0.1:{port}/postgres"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    log.close()
    shutil.rmtree(data, ignore_errors=True)
    os.unlink(f"{data}.log")


def test_two_servers_share_conversations_through_postgres(postgres):
    a = Server("--database-url", postgres)
    b = Server("--database-url", postgres)
    try:
        ca, cb = client(a), client(b)
        conv = ca.conversations.create(metadata={"started": "a"})
        first = ca.responses.create(input="My name is Lin.", conversation=conv.id, **GREEDY)
        second = cb.responses.create(input="What is my name?", conversation=conv.id, **GREEDY)
        assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
        assert [i.role for i in ca.conversations.items.list(conv.id, order="asc")] == \
            ["user", "assistant", "user", "assistant"]
        # A chain started on one server continues on the other, and back.
        r1 = cb.responses.create(input="Remember the number 7.", **GREEDY)
        r2 = ca.responses.create(input="Which number?", previous_response_id=r1.id, **GREEDY)
        r3 = cb.responses.create(input="Thanks.", previous_response_id=r2.id, **GREEDY)
        assert r3.usage.input_tokens > r2.usage.input_tokens + r2.usage.output_tokens
        assert cb.responses.retrieve(r2.id).output_text == r2.output_text
    finally:
        assert a.stop() == 0
        assert b.stop() == 0
