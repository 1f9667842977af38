# Vigil in a container: one binary, its data in /data.
#   docker build -t vigil .
#   docker run -p 127.0.0.1:7080:7080 -p 127.0.0.1:8125:8125/udp -v vigil-data:/data vigil
# The image also holds `vigil-load` (the demo fleet: docker-compose.yml's `demo` service).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p vigil -p vigil-load

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /data vigil \
    && mkdir -p /data /etc/vigil \
    && chown vigil /data
COPY --from=build /src/target/release/vigil /src/target/release/vigil-load /usr/local/bin/
COPY docker/vigil.yml /etc/vigil/vigil.yml
USER vigil
VOLUME ["/data"]
EXPOSE 7080 8125/udp 8125/tcp 4317 4318 24224
HEALTHCHECK --interval=10s --timeout=3s CMD ["vigil", "version"]
ENTRYPOINT ["vigil"]
CMD ["serve", "--config", "/etc/vigil/vigil.yml"]
