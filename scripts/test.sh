#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds (Release), runs every ctest; then builds
# the parsers (format/, tokenizer/) under AddressSanitizer + UndefinedBehaviorSanitizer and runs
# their tests, hostile-file corpus included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ctest --test-dir build --output-on-failure -j "$(nproc)"

if [ "${TWINFER_SKIP_SANITIZERS:-0}" != 1 ]; then
  if [ ! -f build-asan/build.ninja ]; then
    cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTWINFER_SANITIZE=ON -DTWINFER_CUDA=OFF >/dev/null
  fi
  cmake --build build-asan -j "$(nproc)" --target test_format test_tokenizer
  ctest --test-dir build-asan --output-on-failure -j "$(nproc)" -R '^(Gguf|Quant|Safetensors|Tokenizer|Bpe|Spm|ChatTemplate|TemplateSandbox|Vocab|Broken)'
fi
