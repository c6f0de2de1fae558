"""A loopback tessera cluster for test_cluster.py, through deploy/local/cluster.sh (the
command users run): PostgreSQL, N replicas, nginx or SGLang's Model Gateway in front.

Every dialog helper here is plain HTTP (urllib), so a test sees each response's headers
(`X-Tessera-Replica`: which replica answered) and status as the front returned them.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from conftest import API_KEY, MODEL, ROOT, binary

CLUSTER = ROOT / "deploy/local/cluster.sh"
# Small replicas: short answers, small KV caches (all conversations of a run still fit,
# so nothing is evicted and cached-token counts are reproducible).
REPLICA_FLAGS = ["--served-model-name", MODEL, "--kv-cache-memory", "192MiB",
                 "--max-model-len", "1024", "--max-num-seqs", "16", "--shutdown-timeout", "60"]
TIMEOUT = 120


def cluster_sh(env: dict[str, str], *args: str) -> str:
    """Runs `cluster.sh ARGS` with `env`: its stdout; RuntimeError with its stderr on failure."""
    done = subprocess.run(["bash", str(CLUSTER), *args], env=env, capture_output=True, text=True,
                          timeout=900, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"cluster.sh {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


class Cluster:
    """`cluster.sh up N [--router]` in its own state directory; `down` at the end."""

    def __init__(self, n: int, router: bool = False, policy: str = "cache_aware"):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="tessera-cluster-"))
        self.dir.chmod(0o755)  # PostgreSQL (as the `postgres` user under root) works inside
        self.env = dict(os.environ, TESSERA_CLUSTER_DIR=str(self.dir / "state"), TESSERA_BIN=binary(),
                        TESSERA_API_KEY=API_KEY, TESSERA_ROUTER_POLICY=policy, RUST_LOG="info")
        self.n = n
        args = ["up", str(n)] + (["--router"] if router else []) + ["--", *REPLICA_FLAGS]
        try:
            self.url = self.run(*args).strip().splitlines()[-1]
        except BaseException:
            self.down()  # whatever did start
            raise

    def run(self, *args: str, env: dict[str, str] | None = None) -> str:
        try:
            return cluster_sh({**self.env, **(env or {})}, *args)
        except RuntimeError as err:
            raise RuntimeError(f"{err}\n{self.logs()}") from None

    def replica_url(self, i: int) -> str:
        return f"http://127.0.0.1:{(self.dir / 'state' / f'replica-{i}.port').read_text().strip()}"

    def stop(self, i: int, kill: bool = False) -> None:
        self.run("stop", str(i), *(["--kill"] if kill else []))

    def start(self, i: int, *flags: str, env: dict[str, str] | None = None) -> None:
        """Starts replica `i` with extra `tessera serve` flags and environment."""
        self.run("start", str(i), "--", *flags, env=env)

    def logs(self) -> str:
        state = self.dir / "state"
        if not state.exists():
            return ""
        logs = sorted(state.glob("*.log")) + sorted(state.glob("nginx/error.log"))
        return "".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs)

    def front_errors(self, lines: int = 20) -> str:
        """Why requests failed at the front (empty behind the gateway), short enough to be
        read whole in a test's failure: the last `lines` access-log lines that nginx
        answered 5xx (with what each replica it tried answered: `upstream_status`), and
        the last 2 x `lines` lines of its error log, its warnings with them (which
        replica it marked failed, and when)."""
        state = self.dir / "state"
        access, errors = state / "front.log", state / "nginx" / "error.log"
        if not errors.exists():
            return ""
        failed = [l for l in access.read_text().splitlines() if re.search(r'" 5\d\d key=', l)]
        logged = errors.read_text().splitlines()
        return "\n".join([f"nginx answered 5xx ({len(failed)}):", *failed[-lines:],
                           f"nginx errors and warnings ({len(logged)}):", *logged[-2 * lines:]])

    def down(self) -> None:
        keep = os.environ.get("TESSERA_CLUSTER_LOGS")  # a directory: the logs are copied there
        if keep and (self.dir / "state").exists():
            shutil.copytree(self.dir / "state", pathlib.Path(keep) / self.dir.name,
                            ignore=shutil.ignore_patterns("pg", "tmp"))
        try:
            self.run("down")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Reply:
    status: int
    replica: str
    body: dict
    headers: dict = field(default_factory=dict)


def call(base: str, path: str, body: dict | None = None, headers: dict | None = None,
         method: str | None = None) -> Reply:
    """One request; an HTTP error status is a Reply too (never an exception)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as res:
            return Reply(res.status, res.headers.get("x-tessera-replica", ""), json.load(res), dict(res.headers))
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = {"raw": raw.decode(errors="replace")}
        return Reply(err.code, err.headers.get("x-tessera-replica", ""), parsed, dict(err.headers))


def new_conversation(base: str) -> str:
    reply = call(base, "/v1/conversations", {})
    assert reply.status == 200, reply.body
    return reply.body["id"]


def turn_text(conv: int, turn: int) -> str:
    return f"Conversation {conv}, message {turn}: tell me one fact about the number {conv * 7 + turn}."


def responses_turn(base: str, conv_id: str, text: str, max_tokens: int = 8, **extra) -> Reply:
    return call(base, "/v1/responses", {"model": MODEL, "input": text, "conversation": conv_id,
                                        "temperature": 0, "max_output_tokens": max_tokens, **extra})


def items_of(base: str, conv_id: str) -> list[dict]:
    """Every item of a conversation, oldest first (following pagination)."""
    items, after = [], None
    while True:
        query = "?order=asc&limit=100" + (f"&after={after}" if after else "")
        reply = call(base, f"/v1/conversations/{conv_id}/items{query}")
        assert reply.status == 200, reply.body
        items += reply.body["data"]
        if not reply.body["has_more"]:
            return items
        after = reply.body["last_id"]


def assert_dialog_intact(base: str, conv_id: str, sent: list[str], answers: list[str]) -> None:
    """The conversation holds exactly the completed turns, in order, once each."""
    items = items_of(base, conv_id)
    assert [i["role"] for i in items] == ["user", "assistant"] * len(sent), items
    assert [i["content"][0]["text"] for i in items[::2]] == sent
    assert [i["content"][0]["text"] for i in items[1::2]] == answers
    assert len({i["id"] for i in items}) == len(items), "an item appears twice"


def stream_turn(base: str, conv_id: str, text: str, max_tokens: int, on_first_delta=None) -> tuple[str, str]:
    """A streamed turn: returns (replica, final output text); raises on any failure (a
    status other than 200, a stream that ends without `response.completed`)."""
    body = {"model": MODEL, "input": text, "conversation": conv_id, "temperature": 0,
            "max_output_tokens": max_tokens, "stream": True}
    req = urllib.request.Request(base + "/v1/responses", data=json.dumps(body).encode(), headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(req, timeout=TIMEOUT) as res:
        replica = res.headers.get("x-tessera-replica", "")
        final, seen_delta = None, False
        for raw in res:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            event = json.loads(line[len("data: "):])
            if event["type"] == "response.output_text.delta" and not seen_delta:
                seen_delta = True
                if on_first_delta:
                    on_first_delta(replica)
            if event["type"] in ("response.completed", "response.incomplete", "response.failed"):
                final = event
        if final is None or final["type"] == "response.failed":
            raise RuntimeError(f"stream from {replica} ended without completing: {final}")
        return replica, final["response"]["output_text"]


def chat_turns(base: str, dialogs: int, turns: int, headers_of=None) -> list[list[Reply]]:
    """`dialogs` stateless chats of `turns` turns each (the history resent every turn),
    one after another: returns each dialog's replies."""
    runs = []
    for d in range(dialogs):
        messages, replies = [], []
        for t in range(turns):
            messages.append({"role": "user", "content": turn_text(d, t)})
            reply = call(base, "/v1/chat/completions",
                         {"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 8},
                         headers=headers_of(d) if headers_of else None)
            assert reply.status == 200, reply.body
            messages.append({"role": "assistant", "content": reply.body["choices"][0]["message"]["content"]})
            replies.append(reply)
        runs.append(replies)
    return runs


def hit_rate(runs: list[list[Reply]], usage_of) -> float:
    """Cached prompt tokens / prompt tokens over turns 2.. of every dialog."""
    cached = total = 0
    for replies in runs:
        for reply in replies[1:]:
            got, of = usage_of(reply.body)
            cached, total = cached + got, total + of
    return cached / total


def chat_usage(body: dict) -> tuple[int, int]:
    usage = body["usage"]
    return usage["prompt_tokens_details"]["cached_tokens"], usage["prompt_tokens"]


def split(runs: list[list[Reply]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for replies in runs:
        for reply in replies:
            counts[reply.replica] = counts.get(reply.replica, 0) + 1
    return dict(sorted(counts.items()))


def figures_file() -> pathlib.Path:
    """Where the cluster tests leave what they measured (JSON, one key per test)."""
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    target.mkdir(parents=True, exist_ok=True)
    return target / "cluster-figures.json"


def record(name: str, value) -> None:
    path = figures_file()
    figures = json.loads(path.read_text()) if path.exists() else {}
    figures[name] = value
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
