#!/usr/bin/env bash
# Run every fuzz target for a short, bounded time (FUZZ_SECONDS each, 20 by default) on top of
# the committed seeds (fuzz/corpus/<target>). scripts/test.sh runs it, so CI fails when a parser
# crashes on a seed or on what the fuzzer finds within that time. A crash's input is kept in
# fuzz/artifacts/<target>/ and its log printed; make it a regression test (fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${FUZZ_SECONDS:-20}
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz-smoke: installing cargo-fuzz" >&2
  cargo install --quiet --locked cargo-fuzz
fi
for target in resp_decode reply_scan command_rewrite cluster_slots script_calls command_reply; do
  # New inputs go to a scratch directory; the committed seeds are only read.
  work=$(mktemp -d)
  log=$(mktemp)
  dict=()
  case $target in resp_decode | command_rewrite | script_calls) dict=(-dict=commands.dict) ;; esac
  if ! RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "$work" "corpus/$target" -- "${dict[@]}" \
      -max_total_time="$seconds" >"$log" 2>&1; then
    echo "fuzz-smoke: $target failed:" >&2
    tail -n 60 "$log" >&2
    exit 1
  fi
  echo "fuzz-smoke: $target: $(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" || echo done)" >&2
  rm -rf "$work" "$log"
done
