# syntax=docker/dockerfile:1
# Build: docker build -t opampd .
# Run:   docker run -p 4320:4320 -p 8080:8080 -v opampd-data:/var/lib/opampd opampd

# The base images are arguments so that tests/container/run.sh, which reaches no image registry,
# can build this very file on local images made from Debian packages.
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# jemalloc (the server's allocator) is built from C sources with make.
RUN apt-get update && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, in their own layer: it is rebuilt only when the manifests change.
COPY Cargo.toml Cargo.lock build.rs ./
COPY load/Cargo.toml load/Cargo.toml
COPY ctl/Cargo.toml ctl/Cargo.toml
# The manifest names its benchmarks and their shared support, so cargo wants them present.
COPY benches benches
COPY tests/it/support/postgres.rs tests/it/support/postgres.rs
COPY proto proto
RUN mkdir -p src load/src ctl/src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs load/src/lib.rs ctl/src/lib.rs \
 && echo 'fn main() {}' > load/src/main.rs \
 && echo 'fn main() {}' > ctl/src/main.rs \
 && cargo build --release --locked -p opampd -p opampctl \
 && rm -rf src load/src ctl/src
COPY src src
# The console's assets are embedded in the binary.
COPY console console
COPY migrations migrations
COPY config config
COPY load/src load/src
COPY ctl/src ctl/src
# Make sure cargo sees the real sources as newer than the placeholder build.
RUN touch src/main.rs src/lib.rs ctl/src/main.rs ctl/src/lib.rs \
 && cargo build --release --locked -p opampd -p opampctl

FROM ${RUNTIME_IMAGE}
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/opampd opampd \
 && mkdir -p /var/lib/opampd /etc/opampd \
 && chown opampd:opampd /var/lib/opampd
COPY --from=build /src/target/release/opampd /usr/local/bin/opampd
# The command-line client, for `docker exec <container> opampctl get collectors` (loopback callers
# need no key while none is configured).
COPY --from=build /src/target/release/opampctl /usr/local/bin/opampctl
COPY config/opampd.toml /etc/opampd/opampd.toml
# The SQLite database lives in the volume; set OPAMPD_DATABASE__URL=postgres://… for PostgreSQL.
ENV OPAMPD_CONFIG=/etc/opampd/opampd.toml \
    OPAMPD_SERVER__DATA_DIR=/var/lib/opampd
VOLUME /var/lib/opampd
USER opampd
WORKDIR /var/lib/opampd
EXPOSE 4320 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["opampd", "healthcheck"]
ENTRYPOINT ["opampd"]
CMD ["serve"]
