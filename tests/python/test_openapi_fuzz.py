"""openapi.yaml against the live server, fuzzed by schemathesis (its CLI, pinned in
requirements.txt): every operation gets a bounded number of generated requests, valid and
invalid; the run fails on any 5xx, on a response that does not match its schema, on an
undocumented status or content type, on a schema-invalid request that is accepted, and on
a request without the API key that is not refused (every check, less what
schemathesis.toml turns off and says why). The server runs with the example moderation
policy and an admin key, so /v1/moderations and the admin routes are exercised too; the
keys reach schemathesis.toml through the environment (ordinary key for every route, the
admin key for /admin/).

Bounded for CI (2 cores): SCHEMATHESIS_MAX_EXAMPLES generated cases per operation and
phase (default 12), a fixed seed, and a small --max-model-len so that generations stay
short; ~1.5 minutes (measured: 1,155 cases in 90 s on 2 busy cores). The summary (case
counts, time) is printed.
"""

import os
import pathlib
import re
import subprocess
import sys
import time

from conftest import API_KEY, ROOT, Server

HERE = pathlib.Path(__file__).resolve().parent
ADMIN_KEY = "sk-fuzz-admin"


def test_openapi_spec_holds_under_fuzzing():
    server = Server(
        "--max-model-len", "256", "--max-num-seqs", "8", "--max-request-bytes", "64KiB",
        "--moderation-policy", str(ROOT / "deploy" / "moderation" / "example.toml"),
        "--admin-api-key", ADMIN_KEY,
    )
    keys = {"TESSERA_FUZZ_API_KEY": API_KEY, "TESSERA_FUZZ_ADMIN_KEY": ADMIN_KEY}
    try:
        started = time.monotonic()
        run = subprocess.run(
            [
                str(pathlib.Path(sys.executable).with_name("schemathesis")),
                "--config-file", str(HERE / "schemathesis.toml"),
                "run", str(ROOT / "openapi.yaml"),
                "--url", server.url,
                "--max-examples", os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "12"),
                "--seed", "20261204",
                # One worker: with two, hypothesis (parsing lambda sources with `ast` in each
                # thread) hit CPython 3.11's "AST constructor recursion depth mismatch".
                "--workers", "1",
                "--request-timeout", "120",
                "--no-color",
                "--suppress-health-check", "all",
            ],
            capture_output=True, text=True, timeout=900, env={**os.environ, **keys},
        )
        elapsed = time.monotonic() - started
    finally:
        assert server.stop() == 0, "server did not stop cleanly:\n" + "".join(server.lines[-50:])
    output = run.stdout + run.stderr
    summary = [line for line in output.splitlines() if re.search(r"generated|passed|failed|error", line)]
    print(f"schemathesis: exit {run.returncode} in {elapsed:.0f} s; " + " | ".join(summary[-4:]))
    assert run.returncode == 0, output[-20000:]
    assert re.search(r"\d+ generated", output), output[-5000:]
