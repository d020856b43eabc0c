#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20), after the inputs that once crashed one
# (fuzz/regressions/TARGET/, kept in git). Needs the nightly toolchain; installs cargo-fuzz if
# missing. Builds into ~/.cache/moim/fuzz-target and grows a corpus in
# ~/.cache/moim/fuzz-corpus/TARGET (both outside the repository, reused on a warm machine).
#
#   fuzz/run.sh            # CI: every target, 20 s each
#   fuzz/run.sh 600 engine # one target, 10 minutes
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(relay_control relay_datagram signal_message vp8 token engine api meeting_yaml)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/moim
export CARGO_TARGET_DIR=$cache/fuzz-target
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: SKIPPED, no nightly toolchain (rustup toolchain install nightly)" >&2
  exit 0
fi
command -v cargo-fuzz >/dev/null || cargo install -q --locked cargo-fuzz@0.13.2
cargo +nightly fuzz build -O >/dev/null 2>&1 || cargo +nightly fuzz build -O
for t in "${targets[@]}"; do
  corpus=$cache/fuzz-corpus/$t
  mkdir -p "$corpus" "regressions/$t"
  # The first folder gets what the run finds; the regressions (and the example Meetings, for
  # the YAML target) are read and run first.
  seeds=("regressions/$t")
  [ "$t" != meeting_yaml ] || seeds+=(../operator/examples/meetings)
  out=$(cargo +nightly fuzz run -O "$t" "$corpus" "${seeds[@]}" -- \
    -max_total_time="$seconds" -print_final_stats=1 2>&1) || {
    echo "$out" | tail -40 >&2
    echo "fuzz target $t failed; the input is in fuzz/artifacts/$t/ (add it to fuzz/regressions/$t/ once fixed)" >&2
    exit 1
  }
  execs=$(echo "$out" | sed -n 's/^stat::number_of_executed_units: *//p')
  echo "fuzz $t: ${execs:-?} runs in ${seconds} s, no crash"
done
