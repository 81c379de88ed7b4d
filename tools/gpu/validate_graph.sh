#!/usr/bin/env bash
# On the GPU machine, from the repository root: checks the CUDA-graph decode step and device-side
# greedy (F32DecodeStep, forward_greedy), then times generation with the graph off and on.
#   1. builds test_models, twinfer and twinfer_make_random_model with CUDA (-j16);
#   2. runs the models' CUDA tests (CUDA vs CPU, graph replay vs direct steps, forward_greedy);
#   3. makes a random SmolLM2-135M-shaped Q4_1 model with SmolLM2's vocabulary and runs
#      `twinfer bench --device cuda -p 512 -n 128 -r 3` with TWINFER_CUDA_GRAPH=0 and =1, and a
#      greedy `twinfer run` both ways (the generated text must be the same).
# Usage: tools/gpu/validate_graph.sh [build-dir]   (default build-gpu); logs go to $OUT when set.
# Carry .deps (Debian packages) and .device/smollm2-vocab.gguf, which tools/gpu/prepare_carry.sh makes: run with
# carry [".deps", ".device/smollm2-vocab.gguf"]. About 3 minutes on an H100.
set -uo pipefail
build=${1:-build-gpu}
log=${OUT:-/tmp}
source "$(dirname "$0")/deps.sh"   # the carried packages; build_cuda, step
summary=()
step() {   # step NAME SECONDS COMMAND...: runs it with a time limit, records PASS/FAIL
    local name=$1 limit=$2
    shift 2
    echo "=== $name"
    if timeout "$limit" "$@"; then summary+=("PASS $name"); else summary+=("FAIL($?) $name"); fi
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
build_cuda "$build" "$log/build" test_models twinfer twinfer_make_random_model || exit 1

step "models on CUDA (vs CPU, graph vs direct, forward_greedy)" 150 bash -c "'$build/tests/test_models' \
    --gtest_filter='*Cuda*:*DecodeStep*' 2>&1 | tee '$log/model_tests.log' |
    grep -E 'CUDA vs CPU|FAILED|Failure|Expected|Which is|differs|SKIPPED|PASSED|OK \]|error' | head -60;
    exit \${PIPESTATUS[0]}"

model=/tmp/smol.gguf
step "random SmolLM2-135M Q4_1" 60 "$build/tools/twinfer_make_random_model" smollm2-135m Q4_1 .device/smollm2-vocab.gguf "$model"
if [ -f "$model" ]; then
    for graph in 0 1; do
        step "bench TWINFER_CUDA_GRAPH=$graph" 60 bash -c "TWINFER_CUDA_GRAPH=$graph '$build/apps/twinfer' bench -m '$model' \
            --device cuda -p 512 -n 128 -r 3 2>&1 | tee '$log/bench_graph$graph.log'"
        step "greedy run TWINFER_CUDA_GRAPH=$graph" 30 bash -c "TWINFER_CUDA_GRAPH=$graph '$build/apps/twinfer' run -m '$model' \
            --device cuda --temp 0 -n 64 -p 'Once upon a time' > '$log/run_graph$graph.txt' 2> '$log/run_graph$graph.err'"
    done
    step "greedy text identical with and without the graph" 5 cmp "$log/run_graph0.txt" "$log/run_graph1.txt"
fi

echo "=== summary"
printf '%s\n' "${summary[@]}"
for graph in 0 1; do
    [ -f "$log/bench_graph$graph.log" ] && grep -E '(pp|tg)[0-9]+' "$log/bench_graph$graph.log" | sed "s/^/graph=$graph /"
done
grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$log/model_tests.log" 2>/dev/null
