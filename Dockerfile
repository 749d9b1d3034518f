# syntax=docker/dockerfile:1
# The sluice image: a release build of the `sluice` binary on distroless, running as the
# non-root user 65532. `docker build -t sluice:0.1.0 .`; the Helm chart runs it in cluster mode.
#
# Builder and runtime are both Debian 12 (bookworm), so the binary links against the same glibc
# it runs with. TLS to the API server is rustls: the runtime needs no OpenSSL.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts (BuildKit) keep the crate registry and target/ between builds; the binary is
# copied out in the same step because the target/ mount is not part of the image.
# scripts/build-release.sh is the release link the benches measure too: relative relocations
# packed (DT_RELR, glibc 2.36+, which both stages have) and the functions a gateway runs to
# start, compile and serve (build/sluice.order) placed together, so that it keeps about 6 MiB
# of code resident in cluster mode instead of 11. Not in the workspace's own config, which would
# make binaries built on older systems fail to start.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    scripts/build-release.sh \
 && install -D -m 0755 target/release/sluice /out/sluice

# glibc, libgcc, CA certificates, tzdata and a passwd entry for `nonroot` (65532); no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="Kubernetes ingress controller and API gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/sluice /sluice
USER 65532:65532
# A fixed mmap threshold: glibc otherwise raises it after a large free and serves the next
# large blocks from the heap, where they fragment and stay resident; with it, resident memory
# grows less across route changes (docs/performance.md, 2026-12-04).
ENV GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072
# 8080: proxy (SLUICE_LISTEN, default 0.0.0.0:8080). 9901: admin (/healthz, /readyz,
# /metrics), which listens on 127.0.0.1 unless SLUICE_ADMIN_LISTEN says otherwise: the chart
# sets 0.0.0.0:9901; with `docker run`, pass -e SLUICE_ADMIN_LISTEN=0.0.0.0:9901 to reach it.
EXPOSE 8080 9901
ENTRYPOINT ["/sluice"]
# No --manifests: cluster mode, with the in-cluster config (or KUBECONFIG).
CMD ["run"]
