#!/usr/bin/env bash
# On the GPU machine, from the repository root: issue 21's CPU check on a machine bigger than the
# 2-core one here -- decoding and prompts on its CPU at 4 and 16 threads, twinfer beside llama.cpp's
# CPU build (tools/gpu/build_llama.sh with LLAMA_CUDA=OFF, outside the repository) on the same
# files, engine after engine, ROUNDS rounds (2): `twinfer bench --device cpu -t T` and `llama-bench -t T`,
# both `-p 128 -n 64 -r 3` (TWINFER_BENCH_ARGS replaces that on both sides). The files are
# deps.sh's make_model's: shape:type, or TSV=METADATA for `twinfer_make_random_model like`.
# Usage: tools/gpu/cpu_threads.sh [build-dir] [spec ...]   (default: build-gpu and the
#   Llama-3.2-1B Q4_K_M shape); THREADS="1 2 4 8 16" in the environment for a curve. Carry .deps,
#   .device/llama-src.tar.gz and the specs' metadata (tools/gpu/prepare_carry.sh makes them).
set -uo pipefail
build=${1:-build-gpu}
shift || true
specs=("$@")
[ ${#specs[@]} -eq 0 ] && specs=(bench/shapes/llama-3.2-1b-Q4_K_M.tsv=.device/llama-3.2-1b-meta.gguf)
threads=${THREADS:-4 16}
rounds=${ROUNDS:-2}
log=${OUT:-/tmp}
source "$(dirname "$0")/deps.sh"
lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core|Socket|Flags)' | cut -c1-200
echo "git $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo '+changes')"
build_cuda "$build" "$log/build" twinfer twinfer_make_random_model || exit 1
llama_bench=$(LLAMA_CUDA=OFF "$(dirname "$0")/build_llama.sh" llama-bench) || exit 1
read -ra args <<< "${TWINFER_BENCH_ARGS:--p 128 -n 64 -r 3}"
for spec in "${specs[@]}"; do
    model=$(make_model "$build" "$spec") || continue
    for round in $(seq "$rounds"); do
        for t in $threads; do
            echo "=== $(basename "$model" .gguf), $t threads, round $round"
            timeout 300 "$build/apps/twinfer" bench -m "$model" --device cpu -t "$t" "${args[@]}" --no-progress 2>&1 |
                grep -E '^\| [^m-]|rror'
            timeout 300 "$llama_bench" -m "$model" -t "$t" "${args[@]}" 2>&1 | grep -E '^\| [^m-]|rror'
        done
    done
done
