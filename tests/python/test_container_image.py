"""The Dockerfile and .dockerignore, checked without building the image (no container
runtime or registry here): the build context .dockerignore leaves is a cargo workspace
that resolves offline from Cargo.lock with the `tessera` binary in it; every COPY source
is in that context; the server stage's TESSERA_* variables are flags of `tessera serve`
and its model is the one scripts/fetch-model.sh fetches; the image tags, user and ports
are the ones deploy/k8s runs.
"""

import json
import pathlib
import re
import shutil
import subprocess
import tempfile

import pytest
import yaml

from conftest import ROOT, binary

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def ignore_patterns() -> list[re.Pattern]:
    """.dockerignore as Docker reads it (Go's filepath.Match per path segment, `**` for
    any depth, a match also excludes everything below); `!` exceptions are not used."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("!"), "exceptions are not supported by this check"
        glob = line.strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        patterns.append(re.compile(f"{regex}(/.*)?"))
    return patterns


def context_files() -> list[str]:
    """What a clean clone would send as the build context."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n")
    patterns = ignore_patterns()
    return [f for f in listed if f and (ROOT / f).exists() and not any(p.fullmatch(f) for p in patterns)]


def stages() -> dict[str, str]:
    """Each stage's text by its name (`FROM … AS name`)."""
    parts = re.split(r"^FROM ", DOCKERFILE, flags=re.M)[1:]
    return {re.match(r"\S+ AS (\S+)", part).group(1): part for part in parts}


def test_context_leaves_out_build_outputs_caches_and_tests():
    files = context_files()
    assert "Cargo.toml" in files and "Cargo.lock" in files and "src/main.rs" in files
    for left_out in ("target/", ".cache/", "tests/", ".git/"):
        assert not any(f.startswith(left_out) for f in files), left_out


def test_context_is_a_workspace_that_builds_the_server_binary():
    """`cargo build --locked --bin tessera` in the build stage needs the workspace to
    resolve from the context alone: checked offline on a copy of it."""
    with tempfile.TemporaryDirectory(prefix="tessera-image-context-") as copy:
        for f in context_files():
            dest = pathlib.Path(copy) / f
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest)
        done = subprocess.run(["cargo", "metadata", "--locked", "--offline", "--format-version", "1",
                               "--filter-platform", host_triple()],
                              cwd=copy, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    meta = json.loads(done.stdout)
    (server,) = [p for p in meta["packages"] if p["name"] == "tessera"]
    assert {"tessera"} <= {t["name"] for t in server["targets"] if "bin" in t["kind"]}


def host_triple() -> str:
    out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    return re.search(r"^host: (\S+)", out, re.M).group(1)


def test_every_copy_source_is_in_the_context():
    files = context_files()
    for source in re.findall(r"^COPY (?!--from)(\S+) ", DOCKERFILE, re.M):
        if source == ".":
            continue
        assert source in files, source


def test_server_stage_env_and_model_match_the_server():
    server = stages()["server"]
    help_text = subprocess.run([binary(), "serve", "--help"], capture_output=True, text=True,
                               check=True).stdout
    env = dict(re.findall(r"(TESSERA_[A-Z_]+)=(\S+)", server))
    assert env, "the server stage sets no TESSERA_ variable"
    for name in env:
        assert f"[env: {name}" in help_text, name
    fetch = (ROOT / "scripts/fetch-model.sh").read_text()
    model_file = re.search(r'dest="\$cache/models/([^"]+)"', fetch).group(1)
    assert env["TESSERA_MODEL"] == f"/opt/tessera/models/{model_file}"
    assert f"/cache/models/{model_file}" in server  # copied from the model stage
    assert re.search(r"^CMD \[\"serve\"\]", server, re.M) and 'ENTRYPOINT ["tessera"]' in server
    assert list(stages())[-1] == "server", "the default target must be the server"


@pytest.mark.parametrize("stage,deployment,container", [("server", "tessera", "tessera"),
                                                        ("router", "tessera-router", "router")])
def test_image_matches_what_kubernetes_runs(stage, deployment, container):
    text = stages()[stage]
    base = {(d["kind"], d["metadata"]["name"]): d
            for path in (ROOT / "deploy/k8s/base").glob("*.yaml") if path.name != "kustomization.yaml"
            for d in yaml.safe_load_all(path.read_text()) if d}
    pod = base[("Deployment", deployment)]["spec"]["template"]["spec"]
    (spec,) = [c for c in pod["containers"] if c["name"] == container]
    user = re.search(r"^USER (\d+):(\d+)", text, re.M)
    assert (int(user.group(1)), int(user.group(2))) == (pod["securityContext"]["runAsUser"],
                                                        pod["securityContext"]["runAsGroup"])
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split()}
    assert {p["containerPort"] for p in spec["ports"]} == exposed
    name, tag = spec["image"].split(":")
    if stage == "server":
        version = re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
        assert (name, tag) == ("tessera", version)
    else:
        pins = (ROOT / "deploy/local/router-requirements.txt").read_text()
        assert (name, tag) == ("tessera-router", re.search(r"^sglang-router==(\S+)$", pins, re.M).group(1))
        assert "deploy/local/router-requirements.txt" in text
