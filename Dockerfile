# syntax=docker/dockerfile:1
# CPU image of Ferrite (no CUDA code in the binary; runs on any x86_64/arm64 host).
#   docker build -t ferrite:cpu .
#   docker run --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 ferrite:cpu
# The GPU image is Dockerfile.cuda.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---- builder: dependencies first (cached until Cargo.toml/Cargo.lock change), then our sources ----
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /build
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
COPY benches ./benches
# build.rs compiles proto/ (gRPC) with protox: its build dependencies belong in the cached layer.
COPY build.rs ./
COPY proto ./proto
RUN mkdir -p src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY . .
# touch: the dummy build left newer timestamps on the crate's own artefacts
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && install -D -m 0755 target/release/ferrite /out/ferrite

# ---- runtime ----
FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ferrite \
    && useradd --system --uid 10001 --gid ferrite --no-create-home --shell /usr/sbin/nologin ferrite
COPY --from=builder /out/ferrite /usr/local/bin/ferrite
# The bundled repository; mount your own over /models (read-only is fine).
COPY --chown=root:root models /models
ENV FERRITE_MODEL_REPOSITORY=/models \
    FERRITE_HOST=0.0.0.0 \
    FERRITE_HTTP_PORT=8000 \
    FERRITE_GRPC_PORT=8001 \
    FERRITE_METRICS_PORT=8002 \
    FERRITE_LOG_FORMAT=json \
    FERRITE_GPUS=none
USER 10001:10001
EXPOSE 8000 8001 8002
# Warm-up happens before ready; start-period covers it. With TLS on (FERRITE_TLS_CERT), HTTPS
# without verifying the certificate: the check is about the process, not the certificate.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["/bin/sh", "-c", "if [ -n \"$FERRITE_TLS_CERT\" ]; then u=https; else u=http; fi; curl -fsSk $u://127.0.0.1:${FERRITE_HTTP_PORT}/v2/health/ready || exit 1"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["ferrite", "serve"]
