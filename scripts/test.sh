#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds (Release), runs every ctest; then builds
# everything under AddressSanitizer + UndefinedBehaviorSanitizer (no CUDA) and runs every ctest
# again; then runs each libFuzzer target of tests/fuzz for a short fixed budget
# (docs/reliability.md).
set -euo pipefail
cd "$(dirname "$0")/.."
# The tests also run Gemma 3 270M (TransformerModel against the float64 reference).
TWINFER_FETCH_GEMMA=1 scripts/setup.sh
ctest --test-dir build --output-on-failure -j "$(nproc)"

if [ "${TWINFER_SKIP_SANITIZERS:-0}" != 1 ]; then
  if [ ! -f build-asan/build.ninja ]; then
    cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTWINFER_SANITIZE=ON -DTWINFER_CUDA=OFF >/dev/null
  fi
  cmake --build build-asan -j "$(nproc)"
  # An allocation beyond the memory (a context too large) throws std::bad_alloc, as in Release,
  # where ASan would otherwise abort: the tests check the error users see.
  ASAN_OPTIONS=allocator_may_return_null=1 ctest --test-dir build-asan --output-on-failure -j "$(nproc)"
fi

# The fuzz targets, 40,000 inputs each (5-15 s here) from their committed seed corpus, copied so
# that a run never writes into the repository, with a fixed seed: the same commit fuzzes the same
# inputs, so CI does not pass or fail by chance (the longer runs of docs/reliability.md explore).
# Any crash, leak, timeout or sanitizer report fails the suite and leaves the input in
# build-fuzz/findings/ (docs/reliability.md: how to reproduce it).
if [ "${TWINFER_SKIP_FUZZ:-0}" != 1 ]; then
  [ -f build-fuzz/build.ninja ] || cmake --preset fuzz >/dev/null
  cmake --build --preset fuzz -j "$(nproc)"
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  mkdir -p build-fuzz/findings
  for corpus in tests/fuzz/corpus/*/; do
    target=$(basename "$corpus")
    cp -r "$corpus" "$scratch/$target"
    options=(-seed=1 -runs=40000 -rss_limit_mb=2048 -timeout=10 -artifact_prefix=build-fuzz/findings/"$target"-)
    [ -f "tests/fuzz/$target.dict" ] && options+=(-dict="tests/fuzz/$target.dict")
    if ! build-fuzz/tests/fuzz/"$target"_fuzz "${options[@]}" "$scratch/$target" >"$scratch/$target.log" 2>&1; then
      tail -n 60 "$scratch/$target.log"
      echo "fuzz: ${target}_fuzz failed; its input is in build-fuzz/findings/" >&2
      exit 1
    fi
    echo "fuzz: ${target}_fuzz: $(grep -E '^#[0-9]+[[:space:]]+DONE' "$scratch/$target.log" | tail -n 1)"
  done
fi
