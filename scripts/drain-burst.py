"""SIGTERM to an idle `tessera serve` together with a burst of requests: how each request
ends. A proxy can replay a refusal (`503`, nothing started) and a refused connection;
it must not replay a request whose connection was cut after it was sent (`eof`,
`ConnectionResetError`): that one reaches its client as 502.

    python3 scripts/drain-burst.py BINARY RUNS [MODEL]

Each run starts the server, waits until it is ready and idle, then sends 24 requests at
once while it signals SIGTERM; prints the outcome counts over all runs. (A diagnostic for
docs/scaling.md; not part of the test suite, whose drain tests wait for events.)
"""
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

BURST = 24


def request() -> bytes:
    body = json.dumps({"model": "m", "max_tokens": 2,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    head = ("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


def start(binary: str, model: str) -> tuple[subprocess.Popen, int]:
    server = subprocess.Popen(
        [binary, "serve", "--port", "0", "--model", model, "--served-model-name", "m",
         "--data-dir", tempfile.mkdtemp(prefix="drain-burst-"),
         "--kv-cache-memory", "64MiB", "--max-model-len", "512"],
        stderr=subprocess.PIPE, text=True)
    port = None
    for line in server.stderr:
        if m := re.search(r"listening on http://127\.0\.0\.1:(\d+)", line):
            port = int(m.group(1))
        if " ready models=" in line:
            break
    threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
    return server, port


def outcome(port: int, start_together: threading.Barrier) -> str:
    conn = socket.socket()
    start_together.wait()
    try:
        conn.connect(("127.0.0.1", port))
        conn.sendall(request())
        conn.settimeout(30)
        data = conn.recv(64)
        return data.split()[1].decode() if data else "eof"
    except ConnectionRefusedError:
        return "refused"
    except OSError as err:
        return type(err).__name__
    finally:
        conn.close()


def main() -> None:
    binary, runs = sys.argv[1], int(sys.argv[2])
    model = sys.argv[3] if len(sys.argv) > 3 else ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    counts: dict[str, int] = {}
    for _ in range(runs):
        server, port = start(binary, model)
        time.sleep(0.5)  # idle: no connection closed lately
        together = threading.Barrier(BURST + 1)
        ends: list[str] = []
        threads = [threading.Thread(target=lambda: ends.append(outcome(port, together)))
                   for _ in range(BURST)]
        for t in threads:
            t.start()
        together.wait()
        server.send_signal(signal.SIGTERM)
        for t in threads:
            t.join()
        server.wait(timeout=60)
        for end in ends:
            counts[end] = counts.get(end, 0) + 1
    print(binary, dict(sorted(counts.items())))


if __name__ == "__main__":
    main()
