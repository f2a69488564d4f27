#!/usr/bin/env bash
# Measures the io_uring engine's knobs side by side in one `ringmesh bench` run: ringmesh on
# its defaults (uring), ringmesh-epoll, and one contender per knob variant (a `--peer` that is
# ringmesh with that one knob changed). Extra arguments go to `ringmesh bench` (e.g. --quick,
# --rounds 3, --json knobs.json). Needs root. With SYSTEM_ALLOC_BIN set to a ringmesh built
# with `cargo build --release --no-default-features --target-dir target/sysalloc`, the system
# allocator is a contender too.
set -euo pipefail
cd "$(dirname "$0")/.."
RINGMESH=${RINGMESH:-$(pwd)/target/release/ringmesh}
[ -x "$RINGMESH" ] || cargo build --release
node='node --config $CONFIG --zds-socket $ZDS_SOCKET --ca-cert $CA_CERT --ca-key $CA_KEY --io-engine uring'
variants=(
  "taskrun-defer=--uring-taskrun defer"
  "taskrun-interrupt=--uring-taskrun interrupt"
  "sqpoll=--uring-sqpoll 100"
  "send-zc-16k=--uring-send-zc-threshold 16384"
  "bufs-16k-x1024=--uring-buffer-size 16384 --uring-buffers 1024"
  "bufs-64k-x64=--uring-buffers 64"
  "entries-128=--uring-entries 128"
  "sendq-64k=--uring-send-queue 65536"
)
peers=()
for v in "${variants[@]}"; do
  peers+=(--peer "${v%%=*}=$RINGMESH $node ${v#*=}")
done
if [ -n "${SYSTEM_ALLOC_BIN:-}" ]; then
  peers+=(--peer "system-alloc=$SYSTEM_ALLOC_BIN $node")
fi
exec "$RINGMESH" bench --no-raw --engines uring,epoll "${peers[@]}" "$@"
