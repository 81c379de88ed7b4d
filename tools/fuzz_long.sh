#!/usr/bin/env bash
# Runs libFuzzer targets of tests/fuzz one after another for a time budget each, from a copy of
# their committed seed corpus (the repository is never written), and prints one summary line per
# target for docs/reliability.md: time, executions, coverage, features, corpus size, findings.
#
#   tools/fuzz_long.sh [-b BUILD_DIR] [-t SECONDS] [-o OUT_DIR] [TARGET...]
#
# BUILD_DIR defaults to build-fuzz (cmake --preset fuzz); TARGET defaults to every target with a
# corpus. A crashing, leaking, slow or memory-hungry input is left as OUT_DIR/TARGET/crash-*,
# leak-*, timeout-* or oom-*; the run then goes on with the next target. Runs at nice 10, one
# process at a time, so that it can share a machine with other work.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
build=build-fuzz
seconds=300
out=/tmp/twinfer-fuzz
while getopts "b:t:o:" flag; do
  case $flag in
    b) build=$OPTARG ;;
    t) seconds=$OPTARG ;;
    o) out=$OPTARG ;;
    *) echo "usage: $0 [-b BUILD_DIR] [-t SECONDS] [-o OUT_DIR] [TARGET...]" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
cd "$repo"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for corpus in tests/fuzz/corpus/*/; do targets+=("$(basename "$corpus")"); done
fi

status=0
for target in "${targets[@]}"; do
  binary="$build/tests/fuzz/${target}_fuzz"
  [ -x "$binary" ] || { echo "$target: $binary not built (cmake --build $build --target fuzz)" >&2; exit 2; }
  work="$out/$target"
  rm -rf "$work" && mkdir -p "$work/corpus"
  cp tests/fuzz/corpus/"$target"/* "$work/corpus/"
  options=(-max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 -artifact_prefix="$work/")
  [ -f "tests/fuzz/$target.dict" ] && options+=(-dict="tests/fuzz/$target.dict")
  start=$(date +%s)
  if nice -n 10 "$binary" "${options[@]}" "$work/corpus" >"$work/log" 2>&1; then result=ok; else result=failed; status=1; fi
  elapsed=$(($(date +%s) - start))
  # libFuzzer's last status line ("#N DONE cov: C ft: F corp: ...") or, after a finding, the last
  # progress line before it; stat::number_of_executed_units counts executions either way.
  executions=$(grep -E '^stat::number_of_executed_units' "$work/log" | awk '{print $2}' | tail -n 1)
  line=$(grep -E '^#[0-9]+' "$work/log" | tail -n 1)
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$line")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$line")
  files=$(find "$work/corpus" -type f | wc -l)
  bytes=$(du -sb "$work/corpus" | cut -f1)
  findings=$(find "$work" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
  echo "$target: $result, ${elapsed} s, ${executions:-?} executions, cov ${cov:-?}, ft ${ft:-?}, corpus $files files / $bytes bytes, $findings findings ($work)"
done
exit $status
