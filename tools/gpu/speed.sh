#!/usr/bin/env bash
# On the GPU machine, from the repository root: the issue's speed table. Builds twinfer, makes the
# random-weight models of the benchmark shapes (SmolLM2-135M Q4_1, TinyLlama-1.1B Q4_0 and Q8_0,
# Llama-2-7B Q4_0) with SmolLM2's vocabulary, and runs `twinfer bench --device cuda -p 512 -n 128`
# on each; with LLAMA_BENCH set to a llama-bench binary (llama.cpp's CUDA build, made outside the
# repository), runs it on the same files in the same call (-ngl 99 -fa 1), one after the other.
# Usage: tools/gpu/speed.sh [build-dir] [shape:type ...]; carry .deps and .device (tools/gpu/bench.sh).
# TWINFER_CUDA_PDL=0 / TWINFER_CUDA_GRAPH=0 in the environment measure without those.
set -uo pipefail
build=${1:-build-gpu}
shift || true
shapes=("$@")
[ ${#shapes[@]} -eq 0 ] && shapes=(smollm2-135m:Q4_1 tinyllama-1.1b:Q4_0 tinyllama-1.1b:Q8_0 llama2-7b:Q4_0)
log=${OUT:-/tmp}
models=${TWINFER_MODELS:-/tmp/models}
source "$(dirname "$0")/deps.sh"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader || true
build_cuda "$build" "$log/build" twinfer twinfer_make_random_model || exit 1
mkdir -p "$models"
echo "git $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo '+changes')"
for spec in "${shapes[@]}"; do
    shape=${spec%%:*} type=${spec##*:}
    model=$models/$shape-$type.gguf
    [ -f "$model" ] || "$build/tools/twinfer_make_random_model" "$shape" "$type" .device/smollm2-vocab.gguf "$model" > /dev/null ||
        { echo "could not make $model"; continue; }
    echo "=== $shape $type"
    timeout 120 "$build/apps/twinfer" bench -m "$model" --device cuda -p 512 -n 128 -r 3 --no-progress 2>&1 | grep -E '^\| [^m-]'
    if [ -n "${LLAMA_BENCH:-}" ]; then
        timeout 120 "$LLAMA_BENCH" -m "$model" -ngl 99 -fa 1 -p 512 -n 128 -r 3 2>&1 | grep -E '^\| [^m-]'
    fi
done
