#!/usr/bin/env bash
# On the GPU machine, from the repository root: build twinfer with CUDA, run the CUDA tests, then
# time tg128 / pp512 of Llama-shaped stacks (SmolLM2-135M Q4_1, TinyLlama-1.1B Q4_0 and Q8_0,
# Llama-2-7B Q4_0) with random weights, made there (tests/compute/cuda_bench_test.cpp).
# Usage: tools/gpu/bench.sh [build-dir]   (default build-gpu); logs go to $OUT when it is set.
#
# That machine cannot fetch packages and lacks PCRE2, nlohmann-json, OpenBLAS, readline and GoogleTest: fetch
# their Debian packages here, into a git-ignored folder that the call carries:
#   mkdir -p .deps/debs && (cd .deps/debs && apt-get download libpcre2-dev libpcre2-8-0 \
#     nlohmann-json3-dev libopenblas-dev libopenblas0-pthread libopenblas-pthread-dev libgfortran5 libgtest-dev \
#     libreadline-dev libreadline8 libncurses-dev libtinfo6 libncursesw6)
# and this script unpacks them under /tmp/deps (never into /).
set -euo pipefail
build=${1:-build-gpu}
log=${OUT:-/tmp}
deps=()
if [ -d .deps/debs ]; then
    root=/tmp/deps
    for f in .deps/debs/*.deb; do dpkg -x "$f" "$root"; done
    lib=$root/usr/lib/x86_64-linux-gnu
    export PKG_CONFIG_SYSROOT_DIR=$root PKG_CONFIG_PATH=$lib/pkgconfig
    export LD_LIBRARY_PATH=$lib:$lib/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    deps=(-DCMAKE_PREFIX_PATH="$root/usr" -DCMAKE_LIBRARY_PATH="$lib/openblas-pthread;$lib"
          -DCBLAS_INCLUDE_DIR="$root/usr/include/x86_64-linux-gnu/openblas-pthread")
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
cmake -S . -B "$build" -G Ninja -DTWINFER_CUDA=ON -DCMAKE_BUILD_TYPE=Release "${deps[@]}" > "$log/cmake.log" 2>&1 ||
    { tail -30 "$log/cmake.log"; exit 1; }
ninja -C "$build" -j16 test_compute > "$log/build.log" 2>&1 || { grep -B2 -A8 -m5 error "$log/build.log"; tail -20 "$log/build.log"; exit 1; }
"$build/tests/test_compute" --gtest_filter='*Cuda*' --gtest_brief=1 2>&1 | tee "$log/cuda_tests.log" | tail -30
"$build/tests/test_compute" --gtest_also_run_disabled_tests --gtest_filter='CudaBench.*' 2>&1 | tee "$log/bench.log" |
    grep -E '^\||device:|FAILED|rror'
