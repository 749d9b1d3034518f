#!/usr/bin/env bash
# The release binary as the image ships it (the Dockerfile and the benches run this):
#
# - relative relocations packed (DT_RELR, glibc 2.36+, as Debian 12 and the image have): 6 KB of
#   them instead of 500 KB that the loader would write, and keep resident, at every start;
# - the functions in build/sluice.order (what a gateway runs to start, compile, serve and
#   reload) placed first and together, so that the code it keeps resident is those pages, not
#   every page the kernel faults in around each of them (at 10,000 routes, 10 -> 5 MiB
#   standalone, 11 -> 6.4 MiB in cluster mode).
#   scripts/symbol-order.sh regenerates the list; a name that no longer exists is skipped.
#
# Both are link arguments of the `sluice` binary only, not the workspace's config: a build on
# an older glibc, or with a linker other than the toolchain's lld, leaves them out by running
# `cargo build --release` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo rustc --release --locked -p sluice-controller --bin sluice -- \
  -C link-arg=-Wl,-z,pack-relative-relocs \
  -C "link-arg=-Wl,--symbol-ordering-file=$PWD/build/sluice.order" \
  -C link-arg=-Wl,--no-warn-symbol-ordering
