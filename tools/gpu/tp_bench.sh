#!/usr/bin/env bash
# On a machine with 2 GPUs, from the repository root: build twinfer with CUDA and NCCL, run the
# tensor-parallel tests (TP=2 against TP=1 on the GPUs, the CPU simulation against F32LlamaModel),
# then time Llama-2-7B-shaped Q4_0 at TP=1 and TP=2 and a 13B shape at TP=2, random weights made
# there (tests/models/tp_llama_test.cpp, TpBench). The benchmark also checks TP=2's logits against
# TP=1's (relative error <= 1e-3) over a prompt and 8 decoding steps.
# Usage: tools/gpu/tp_bench.sh [build-dir]   (default build-gpu); logs go to $OUT when it is set.
# TWINFER_TP_BENCH_ONLY=7B (or 13B) times one shape. The 7B file takes 3.5 GiB and the 13B 6.8 GiB
# of the scratch folder ($TMPDIR) while they run.
#
# Dependencies the machine lacks: as tools/gpu/bench.sh (.deps/debs, unpacked under /tmp/deps).
set -euo pipefail
build=${1:-build-gpu}
log=${OUT:-/tmp}
source "$(dirname "$0")/deps.sh"   # sets deps (CMake arguments) for the carried packages
# NVLink multicast stays off (compute/cuda/nccl_collective.cpp sets it too, before NCCL starts).
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader || true
nvidia-smi topo -m 2>/dev/null | head -5 || true
build_cuda "$build" "$log/tp_build" test_models || exit 1
grep -E "NCCL" "$log/tp_build.cmake.log" || true
if ! grep -q "NCCL: " "$log/tp_build.cmake.log"; then echo "NCCL not found: no tensor parallelism over GPUs in this build" >&2; exit 1; fi
"$build/tests/test_models" --gtest_filter='TensorParallel*:Tp/*' --gtest_brief=1 2>&1 | tee "$log/tp_tests.log" | tail -30
"$build/tests/test_models" --gtest_also_run_disabled_tests --gtest_filter='TpBench.*' 2>&1 | tee "$log/tp_bench.log" |
    grep -E '^\||wrote|loaded|Failure|error|FAILED|OK \]'
