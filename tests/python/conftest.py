"""Starts `tessera serve` (the release binary) for the SDK tests.

The binary is $TESSERA_BIN, else <target dir>/release/tessera; the model is the default
one (scripts/fetch-model.sh; $TESSERA_CACHE_DIR is passed through). Each server listens
on a free loopback port that it prints on stderr (or on `port`, to restart one in place).
"""

import os
import pathlib
import re
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = "smol"
API_KEY = "sk-sdk-test"


def binary() -> str:
    if os.environ.get("TESSERA_BIN"):
        return os.environ["TESSERA_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(pathlib.Path(target) / "release" / "tessera")


class Server:
    def __init__(self, *flags: str, port: int = 0):
        env = dict(os.environ, RUST_LOG="info")
        if "--data-dir" not in flags and "--database-url" not in flags:
            # The dialog store: a fresh temporary directory, never the working tree.
            flags = (*flags, "--data-dir", tempfile.mkdtemp(prefix="tessera-sdk-"))
        defaults = {"--kv-cache-memory": "256MiB", "--max-model-len": "2048"}
        for name in flags:
            defaults.pop(name, None)  # a flag given here replaces its default
        self.proc = subprocess.Popen(
            [binary(), "serve", "--port", str(port), "--served-model-name", MODEL, "--api-key", API_KEY,
             *[part for pair in defaults.items() for part in pair], *flags],
            stderr=subprocess.PIPE, text=True, env=env,
        )
        self.lines: list[str] = []
        found = threading.Event()

        def pump():
            for line in self.proc.stderr:
                self.lines.append(line)
                if not found.is_set() and (m := re.search(r"listening on (http://\S+)", line)):
                    self.url = m.group(1)
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(60):
            self.proc.kill()
            raise RuntimeError("tessera serve did not start:\n" + "".join(self.lines))
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.proc.kill()
        raise RuntimeError("tessera serve never became ready:\n" + "".join(self.lines))

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def sigterm(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="session")
def server():
    s = Server("--max-num-seqs", "64", "--max-queued-requests", "64", "--max-request-bytes", "64KiB")
    yield s
    assert s.stop() == 0


@pytest.fixture()
def tight_server():
    """One running sequence, no queue, a short shutdown timeout: for 413/429/503."""
    s = Server("--max-num-seqs", "1", "--max-queued-requests", "0",
               "--shutdown-timeout", "0.5", "--max-request-bytes", "2KiB")
    yield s
    s.stop()
