# syntax=docker/dockerfile:1
#
# One image for every Herald role; the role is the command:
#
#   docker build -t herald .
#   docker run herald gateway --config /etc/herald/herald.toml
#   docker run herald publisher-api --config /etc/herald/herald.toml
#
# Secrets come from the environment (HERALD_AUTH__JWT_SECRET, HERALD_PUBLISHER__API_KEYS);
# see docs/operations.md.

FROM rust:1-bookworm AS build
WORKDIR /src
# The .dockerignore lets in only what the build needs: manifests, crates/, proto/. No protoc is
# needed: the publisher API's proto is compiled by protox, in Rust.
COPY . .
# Cache mounts keep the registry and the compiled dependencies between builds, so a change to
# Herald's own code rebuilds only its crates. The binary is copied out of the cached target
# directory, which does not end up in the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p herald \
    && cp target/release/herald /usr/local/bin/herald

# bookworm-slim rather than distroless: it keeps `bash` and `sleep`, which the compose
# healthchecks (there is no curl) and the Kubernetes preStop hook on older clusters use.
FROM debian:bookworm-slim AS runtime
# A fixed numeric id, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 herald \
    && useradd --system --no-log-init --uid 10001 --gid herald --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin herald
COPY --from=build /usr/local/bin/herald /usr/local/bin/herald
COPY deploy/herald.toml /etc/herald/herald.toml
USER 10001:10001
# 8080: gateway WebSocket /ws, /livez, /readyz, /metrics
# 8081: publisher API HTTP (and its /livez, /readyz, /metrics); 8082: publisher API gRPC;
# 8083: presence HTTP (and its probes and /metrics); 8084: presence gRPC (gateways' reports)
EXPOSE 8080 8081 8082 8083 8084
ENTRYPOINT ["herald"]
CMD ["gateway", "--config", "/etc/herald/herald.toml"]
