# syntax=docker/dockerfile:1
#
# The event-router image: one static-ish binary on a slim Debian base,
# running as a non-root user. Build it from the repository root:
#
#   docker build -t event-router:0.1.0 .
#
# Stage 1 compiles the dependencies from Cargo.toml/Cargo.lock alone, so that
# layer stays cached until they change; stage 2 adds the sources.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS deps
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Empty targets stand in for the sources: `cargo build` then compiles only
# the dependency graph.
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && for bench in $(sed -n '/^\[\[bench\]\]/{n;s/^name = "\(.*\)"/\1/p}' Cargo.toml); do \
           echo 'fn main() {}' > "benches/${bench}.rs"; \
       done \
    && cargo build --release --locked --bin event-router \
    && rm -rf src benches

FROM deps AS build
COPY src ./src
COPY benches ./benches
COPY examples ./examples
COPY ui ./ui
# Newer mtimes than the stand-ins, so cargo rebuilds the crate itself.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin event-router \
    && install -m 0755 target/release/event-router /usr/local/bin/event-router

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="event-router" \
      org.opencontainers.image.description="Kubernetes-native event router for AI agents and services" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 event-router \
    && useradd --system --uid 10001 --gid event-router --no-create-home \
           --home-dir /nonexistent --shell /usr/sbin/nologin event-router
COPY --from=build /usr/local/bin/event-router /usr/local/bin/event-router
USER 10001:10001
# HTTP, WebSocket, SSE and /metrics share one port.
EXPOSE 8080
ENV EVENT_ROUTER_LISTEN=0.0.0.0:8080 \
    EVENT_ROUTER_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/event-router"]
CMD ["serve"]
