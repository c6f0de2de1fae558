"""The retry rules of the nginx front (deploy/nginx/tessera.conf), each forced on purpose:
nginx (`deploy/local/cluster.sh front`) in front of two stand-in replicas that answer
each request as a test scripts them. What the rolling-restart test meets by chance (a
refusal, a replica gone, a replica dying under a request) happens here every time.

- a refusal marked not started is replayed, and a replica that refuses twice is passed
  over for another;
- a replay that finds its replica gone (it refused, then stopped listening) goes to
  another replica: nothing was sent to the gone one;
- a 503 without the not-started mark (the request may have run) is never replayed: the
  client gets 503 (with an OpenAI error body);
- a request a replica received and never answered (it died under it) is never sent to a
  second replica, whether it was a first try or a replay: the client gets 502 (with an
  OpenAI error body);
- a request for which nginx has left every replica out goes round once more through
  the same replicas without passive health;
- a request no replica can take (none listening) gets 502 with an OpenAI error body.
"""

import json
import os
import pathlib
import socket
import tempfile
import threading

import pytest

from cluster_support import call, cluster_sh


class StandIn:
    """A replica's stand-in on a loopback port. GETs are answered 200 with its name; each
    POST by the next action of `script`, then by `serve`:
    - `serve`: 200 `{"replica": name}`;
    - `refuse`: 503 with `X-Tessera-Not-Started: true` and `Connection: close` (what a
      draining or loading tessera answers);
    - `refuse_and_vanish`: stops listening, then refuses (a replica that exits just after
      its last refusal);
    - `fail`: 503 without `X-Tessera-Not-Started` (a request that may have run);
    - `drop`: closes the connection without an answer (a replica killed under a request);
    - `hold`: sets `holding`, waits for `release`, then serves (a long stream).
    `posts` counts the POSTs it received."""

    def __init__(self, name: str):
        self.name = name
        self.script: list[str] = []
        self.posts = 0
        self.holding, self.release = threading.Event(), threading.Event()
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # stopped listening
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as stream:
            while (request := read_request(stream)) is not None:
                method, _ = request
                action = self._next_action() if method == "POST" else "serve"
                if action == "drop":
                    return
                if action == "hold":
                    self.holding.set()
                    self.release.wait(timeout=60)
                    action = "serve"
                if action == "refuse_and_vanish":
                    self.vanish()
                if action == "serve":
                    conn.sendall(response(200, {"replica": self.name}, []))
                    continue
                started = [] if action == "fail" else ["X-Tessera-Not-Started: true"]
                conn.sendall(response(503, {"error": {"code": "shutting_down"}},
                                      [*started, "Retry-After: 1"]))
                return

    def vanish(self) -> None:
        """Stops listening: every new connection is refused."""
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()

    def _next_action(self) -> str:
        with self.lock:
            self.posts += 1
            return self.script.pop(0) if self.script else "serve"


def read_request(stream) -> tuple[str, bytes] | None:
    """(method, body) of the next request on a connection; None once it closed."""
    line = stream.readline()
    if not line:
        return None
    length = 0
    while (header := stream.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = header.decode().partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return line.split()[0].decode(), stream.read(length)


def response(status: int, body: dict, headers: list[str]) -> bytes:
    data = json.dumps(body).encode()
    reason = {200: "OK", 503: "Service Unavailable"}[status]
    close = ["Connection: close"] if status != 200 else []
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json",
            f"Content-Length: {len(data)}", *headers, *close]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


class Front:
    """nginx in front of stand-ins, through `cluster.sh front`; `down` at the end."""

    def __init__(self, replicas: list[StandIn]):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="tessera-front-"))
        self.env = dict(os.environ, TESSERA_CLUSTER_DIR=str(self.dir / "state"))
        self.url = self.run("front", *(str(r.port) for r in replicas)).strip().splitlines()[-1]

    def run(self, *args: str) -> str:
        return cluster_sh(self.env, *args)

    def errors(self) -> str:
        path = self.dir / "state" / "nginx" / "error.log"
        return path.read_text() if path.exists() else ""

    def down(self) -> None:
        self.run("down")


@pytest.fixture
def front():
    a, b = StandIn("a"), StandIn("b")
    f = Front([a, b])
    yield f, a, b
    f.down()


def send(url: str, method: str, path: str, key: str) -> tuple[int, dict]:
    """One request keyed by `key` (X-Session-Id): (status, JSON body, or {"raw": text})."""
    body = {"input": "hello"} if method == "POST" else None
    reply = call(url, path, body, headers={"X-Session-Id": key}, method=method)
    return reply.status, reply.body


def key_of(url: str, replica: StandIn) -> str:
    """A session key the front's consistent hash sends to `replica`."""
    for n in range(256):
        key = f"session-{n}"
        if send(url, "GET", "/v1/models", key)[1].get("replica") == replica.name:
            return key
    raise AssertionError(f"no key of 256 hashes to {replica.name}")


def test_a_replica_refusing_twice_is_passed_over(front):
    f, a, b = front
    key = key_of(f.url, a)
    a.script = ["refuse", "refuse"]
    assert send(f.url, "POST", "/v1/responses", key) == (200, {"replica": "b"}), f.errors()
    assert (a.posts, b.posts) == (2, 1)


def test_a_replay_that_finds_its_replica_gone_goes_to_another(front):
    f, a, b = front
    key = key_of(f.url, a)
    a.script = ["refuse_and_vanish"]
    assert send(f.url, "POST", "/v1/responses", key) == (200, {"replica": "b"}), f.errors()
    assert (a.posts, b.posts) == (1, 1)


@pytest.mark.parametrize("script", [["drop"], ["refuse", "drop"]], ids=["first_try", "replay"])
def test_a_request_that_reached_a_dying_replica_is_never_sent_again(front, script):
    f, a, b = front
    key = key_of(f.url, a)
    a.script = list(script)
    status, body = send(f.url, "POST", "/v1/responses", key)
    assert (status, body["error"]["code"]) == (502, "replica_failed"), body
    assert (a.posts, b.posts) == (len(script), 0)


def test_a_503_without_the_not_started_mark_is_never_replayed(front):
    f, a, b = front
    key = key_of(f.url, a)
    a.script = ["fail"]
    status, body = send(f.url, "POST", "/v1/responses", key)
    assert (status, body["error"]["code"]) == (503, "replica_stopped"), body
    assert (a.posts, b.posts) == (1, 0)


def test_a_request_finding_every_replica_left_out_goes_round_once_more(front):
    """nginx leaves a replica that failed out of its pool; once fail_timeout has passed it
    sends one request there (a probe) and leaves the replica out of everything else until
    that request ends. With a long stream as the probe and the other replica refusing
    twice (draining), no replica was left: 502 "no live upstreams" (the rolling-restart
    failure of CI). Now that request goes round once more without passive health: the
    refusing replica refuses it twice more (@tessera_unreachable, @tessera_last_replay),
    and the probed one serves it."""
    f, a, b = front
    key_a, key_b = key_of(f.url, a), key_of(f.url, b)
    b.script = ["drop"]
    assert send(f.url, "POST", "/v1/responses", key_b)[0] == 502
    probe = threading.Thread(target=send_until_held, args=(f.url, key_b, b))
    probe.start()
    try:
        assert b.holding.wait(timeout=30), "the probe never reached b"
        a.script, a.posts, b.posts = ["refuse"] * 4, 0, 0
        assert send(f.url, "POST", "/v1/responses", key_a) == (200, {"replica": "b"}), f.errors()
        assert (a.posts, b.posts) == (4, 1)
    finally:
        b.release.set()
        probe.join(timeout=30)


def test_a_request_no_replica_can_take_gets_an_openai_error(front):
    f, a, b = front
    a.vanish()
    b.vanish()
    status, body = send(f.url, "POST", "/v1/responses", "session-0")
    assert (status, body["error"]["code"]) == (502, "no_replica_reachable"), body
    assert (a.posts, b.posts) == (0, 0)


def send_until_held(url: str, key: str, replica: StandIn) -> None:
    """Sends POSTs keyed to `replica` until one of them is held there (nginx sends them
    elsewhere while it leaves `replica` out)."""
    replica.script = ["hold"]
    while not replica.holding.wait(timeout=0.05):
        send(url, "POST", "/v1/responses", key)
