#!/usr/bin/env bash
# The whole test suite: installs what the netns tests need (idempotent), then runs every test.
# netns tests need root; under CI=true a missing privilege or tool fails them, never skips.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
command -v pgrep >/dev/null 2>&1 || need+=(procps)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "tests/run.sh: installing ${need[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "tests/run.sh: missing ${need[*]} and cannot install them (need root and apt-get)" >&2
  fi
fi
# Every test runs under both I/O engines: RINGMESH_IO_ENGINE picks the engine of every node
# proxy the tests start (and of the in-process HBONE tests). RINGMESH_TEST_ENGINES=uring (or
# epoll) runs one.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
rc=0
summary=()
for engine in ${RINGMESH_TEST_ENGINES:-uring epoll}; do
  echo "tests/run.sh: engine ${engine}"
  : >"$log"
  set +e
  RINGMESH_IO_ENGINE=$engine cargo test --all-targets --no-fail-fast "$@" 2>&1 | tee "$log"
  r=${PIPESTATUS[0]}
  set -e
  [ "$r" = 0 ] || rc=$r
  passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
  failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
  # A netns test that skips (no root, a tool missing) still reports "ok": count the skips
  # apart, and as root a skip is a failure (nothing should stop them there).
  skipped=$(grep -c '^SKIP ' "$log" || true)
  if [ "$skipped" -gt 0 ] && [ "$(id -u)" = 0 ]; then
    rc=1
    grep '^SKIP ' "$log" >&2
  fi
  passed=$(( passed - skipped ))
  summary+=("tests (${engine}): ${passed} passed, ${failed} failed, ${skipped} skipped")
  total_p=$(( ${total_p:-0} + passed ))
  total_f=$(( ${total_f:-0} + failed ))
done
# The binary a cluster runs (deploy/Containerfile) leaves out the lab, demo and bench: it must
# still build without them.
if cargo check --quiet --no-default-features --features mimalloc --bins; then
  summary+=("product build (no lab/demo/bench): compiles")
else
  rc=1
  summary+=("product build (no lab/demo/bench): FAILED")
fi
# The deployment files: manifests valid for Kubernetes, YAML clean, seccomp profile well-formed.
if bash deploy/validate.sh; then
  summary+=("deploy: manifests valid")
else
  rc=1
  summary+=("deploy: validate.sh FAILED")
fi
# The fuzz targets (tests/fuzz/README.md), briefly: RINGMESH_FUZZ_SECS seconds each.
: >"$log"
set +e
RINGMESH_FUZZ_SECS=${RINGMESH_FUZZ_SECS:-15} bash tests/fuzz/run.sh 2>&1 | tee "$log"
r=${PIPESTATUS[0]}
set -e
case "$r" in
  0) summary+=("$(grep '^fuzz: ' "$log" | tail -1)") ;;
  2) summary+=("fuzz: not run (no nightly toolchain)") ;;
  *)
    rc=1
    summary+=("fuzz: FAILED ($(grep '^fuzz: ' "$log" | tail -1 | sed 's/^fuzz: //'))")
    ;;
esac
printf '%s\n' "${summary[@]}"
echo "tests: ${total_p} passed, ${total_f} failed"
exit "$rc"
