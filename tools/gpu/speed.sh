#!/usr/bin/env bash
# On the GPU machine, from the repository root: the issue's speed table. Builds twinfer, makes the
# random-weight models of the benchmark shapes (SmolLM2-135M Q4_1, TinyLlama-1.1B Q4_0 and Q8_0,
# Llama-2-7B Q4_0) with SmolLM2's vocabulary, and runs `twinfer bench --device cuda -p 512 -n 128`
# on each; with LLAMA_BENCH set to a llama-bench binary (llama.cpp's CUDA build, made outside the
# repository), runs it on the same files in the same call (-ngl 99 -fa 1), one after the other.
# A spec TSV=METADATA.gguf instead of shape:type makes the file with `twinfer_make_random_model like`
# (another architecture: bench/shapes/*.tsv, their metadata from tools/make_shape.py).
# Usage: tools/gpu/speed.sh [build-dir] [shape:type | TSV=METADATA ...]; carry .deps and .device
# (tools/gpu/prepare_carry.sh). TWINFER_BENCH_ARGS replaces `-p 512 -n 128 -r 3` on both sides.
# TWINFER_CUDA_PDL=0 / TWINFER_CUDA_GRAPH=0 in the environment measure without those.
set -uo pipefail
build=${1:-build-gpu}
shift || true
shapes=("$@")
[ ${#shapes[@]} -eq 0 ] && shapes=(smollm2-135m:Q4_1 tinyllama-1.1b:Q4_0 tinyllama-1.1b:Q8_0 llama2-7b:Q4_0)
log=${OUT:-/tmp}
source "$(dirname "$0")/deps.sh"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader || true
build_cuda "$build" "$log/build" twinfer twinfer_make_random_model || exit 1
echo "git $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo '+changes')"
for spec in "${shapes[@]}"; do
    model=$(make_model "$build" "$spec") || continue
    echo "=== $(basename "$model" .gguf)"
    read -ra args <<< "${TWINFER_BENCH_ARGS:--p 512 -n 128 -r 3}"
    timeout 240 "$build/apps/twinfer" bench -m "$model" --device cuda "${args[@]}" --no-progress 2>&1 | grep -E '^\| [^m-]|rror'
    if [ -n "${LLAMA_BENCH:-}" ]; then
        timeout 180 "$LLAMA_BENCH" -m "$model" -ngl 99 -fa 1 "${args[@]}" 2>&1 | grep -E '^\| [^m-]|rror'
    fi
done
