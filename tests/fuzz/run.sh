#!/usr/bin/env bash
# Runs every cargo-fuzz target (or the ones named) for a while from its committed corpus and
# regression inputs; fails on the first crash, leak, timeout or out-of-memory.
#
#   bash tests/fuzz/run.sh                    # 15 s per target (RINGMESH_FUZZ_SECS)
#   RINGMESH_FUZZ_SECS=600 bash tests/fuzz/run.sh tls_record h2
#
# New inputs go to target/fuzz/corpus/<target>/ (not committed), libFuzzer's output to
# target/fuzz/logs/<target>.log, crashes to tests/fuzz/artifacts/<target>/ (ignored:
# minimize one and keep it in regressions/).
# Needs the nightly toolchain; installs cargo-fuzz if missing. Without nightly it exits 2
# (under CI=true: 1).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${RINGMESH_FUZZ_SECS:-15}
tdir=${RINGMESH_FUZZ_TARGET_DIR:-target/fuzz}
all=(config zds connect policy tls_record h2 xds)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

if ! cargo +nightly --version >/dev/null 2>&1; then
  if [ "${CI:-}" = true ]; then
    echo "tests/fuzz/run.sh: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
    exit 1
  fi
  echo "tests/fuzz/run.sh: not fuzzing: no nightly toolchain (rustup toolchain install nightly)"
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "tests/fuzz/run.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# Without a sanitizer: safe Rust gets its checks from overflow checks and debug assertions
# (on in fuzz builds), and the build and the runs are several times faster.
# RINGMESH_FUZZ_SANITIZER=address for the long runs (tests/fuzz/README.md).
flags=(--fuzz-dir tests/fuzz --target-dir "$tdir" --sanitizer "${RINGMESH_FUZZ_SANITIZER:-none}")
echo "tests/fuzz/run.sh: building ${#targets[@]} target(s)"
cargo +nightly fuzz build "${flags[@]}"

mkdir -p "$tdir/logs"
for t in "${targets[@]}"; do
  work="$tdir/corpus/$t"
  log="$tdir/logs/$t.log"
  mkdir -p "$work"
  dirs=("$work" "tests/fuzz/corpus/$t")
  [ -d "tests/fuzz/regressions/$t" ] && dirs+=("tests/fuzz/regressions/$t")
  max_len=4096
  # Records up to the 2^14 + 256 limit and past it.
  [ "$t" = tls_record ] && max_len=20000
  if ! cargo +nightly fuzz run "${flags[@]}" "$t" "${dirs[@]}" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len="$max_len" \
      -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz: target $t FAILED after $(grep -Eo '#[0-9]+' "$log" | tail -1) runs; the input is in tests/fuzz/artifacts/$t/"
    exit 1
  fi
  done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1)
  echo "tests/fuzz/run.sh: $t: $done_line, corpus $(find "$work" -type f | wc -l) inputs"
done
echo "fuzz: ${#targets[@]} targets, ${secs} s each, clean"
