# The gateway's release binary on Debian slim. Built by docker-compose.yml; also
#   docker build -t inference-gateway .
FROM rust:1-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpq-dev libsqlite3-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin inference-gateway \
    && install -m 0755 target/release/inference-gateway /usr/local/bin/inference-gateway

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libpq5 libsqlite3-0 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/inference-gateway --create-home inference-gateway
COPY --from=build /usr/local/bin/inference-gateway /usr/local/bin/inference-gateway
COPY fixtures /etc/inference-gateway/fixtures
USER inference-gateway
WORKDIR /var/lib/inference-gateway
ENV GATEWAY__SERVER__BIND=0.0.0.0:8000 \
    GATEWAY__FIXTURES__DIR=/etc/inference-gateway/fixtures
EXPOSE 8000
# SIGTERM: stop accepting, let requests and streams finish (server.shutdown_grace_secs).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/inference-gateway"]
CMD ["serve"]
