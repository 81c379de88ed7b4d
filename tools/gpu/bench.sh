#!/usr/bin/env bash
# On the GPU machine, from the repository root: build twinfer with CUDA, run the CUDA op tests and
# the models' CUDA-vs-CPU tests, time single kernels and Llama-shaped stacks with random weights
# (tests/compute/cuda_bench_test.cpp), and, given a model, `twinfer bench/run/verify --device cuda`.
# Usage: tools/gpu/bench.sh [build-dir] [model.gguf]   (default build-gpu); logs go to $OUT when set.
# The tests read stories260K from tests/data/third_party, which travels with the tree.
#
# That machine cannot fetch packages and lacks PCRE2, nlohmann-json, OpenBLAS, readline, toml++, cpp-httplib and GoogleTest:
# tools/gpu/prepare_carry.sh fetches their Debian packages here into .deps/debs (git-ignored, ~20
# MB), which the call carries and tools/gpu/deps.sh unpacks under /tmp/deps (never into /). The
# carry holds 64 MiB with the tree: take only the .device files a call needs.
set -uo pipefail
build=${1:-build-gpu}
model=${2:-}
log=${OUT:-/tmp}
source "$(dirname "$0")/deps.sh"   # the carried packages; build_cuda, step
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
# The tests first: a missing dependency of the CLI alone (toml++) must not cost the test run.
build_cuda "$build" "$log/build" test_compute test_models || exit 1
ninja -C "$build" -j16 twinfer > "$log/build_cli.log" 2>&1 ||
    { grep -m3 error "$log/build_cli.log"; summary+=("FAIL build of twinfer (build_cli.log)"); model=""; }
step "CUDA op tests" 90 bash -c "'$build/tests/test_compute' --gtest_filter='*Cuda*' --gtest_brief=1 2>&1 | tee '$log/cuda_tests.log' | tail -15"
step "models on CUDA vs CPU" 150 bash -c "'$build/tests/test_models' --gtest_filter='*Cuda*' 2>&1 | tee '$log/model_tests.log' |
    grep -E 'CUDA vs CPU|FAILED|Failure|Expected|Which is|SKIPPED|PASSED|error' | head -60"
if [ -n "$model" ]; then
    step "twinfer bench" 45 "$build/apps/twinfer" bench -m "$model" --device cuda -p 128 -n 128 -r 3
    step "twinfer bench cpu" 30 "$build/apps/twinfer" bench -m "$model" --device cpu -p 128 -n 128 -r 3
    step "twinfer run" 20 "$build/apps/twinfer" run -m "$model" --device cuda --temp 0 -n 48 -p "Once upon a time"
    step "twinfer verify" 45 "$build/apps/twinfer" verify -m "$model" --device cuda -p "Once upon a time, there was a little"
fi
step "kernel bench" 60 bash -c "'$build/tests/test_compute' --gtest_also_run_disabled_tests --gtest_filter='CudaBench.DISABLED_Kernels' 2>&1 |
    tee '$log/kernels.log' | grep -E '^\||device:|FAILED|rror'"
step "stack bench" 120 bash -c "'$build/tests/test_compute' --gtest_also_run_disabled_tests --gtest_filter='CudaBench.DISABLED_LlamaShapes' 2>&1 |
    tee '$log/bench.log' | grep -E '^\||FAILED|rror'"
printf '%s\n' "${summary[@]}"
