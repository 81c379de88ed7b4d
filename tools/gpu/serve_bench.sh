#!/usr/bin/env bash
# On the GPU machine, from the repository root: issue 19's throughput check, twinfer serve beside
# llama.cpp's llama-server on the same random-weight files, one server at a time, the same client
# (bench/serve/streams.py: N distinct ~100-token greedy prompts sent at once, 128 tokens each,
# ignore_eos). Builds twinfer with CUDA and llama-server (tools/gpu/build_llama.sh, from the
# carried .device/llama-src.tar.gz), makes the files with SmolLM2's vocabulary
# (.device/smollm2-vocab.gguf), then for each shape: llama-server, twinfer, llama-server, twinfer.
# llama-server gets --parallel N and -c N * 256 (256 positions a slot: 104 prompt + 128 generated);
# twinfer gets --parallel N and -c 2048 (its KV pool is not divided among the slots).
# Usage: tools/gpu/serve_bench.sh [shape:type ...]   (default smollm2-135m:Q4_1)
# STREAMS="1 4 16 64" and ROUNDS=2 in the environment change what each server runs.
set -uo pipefail
shapes=("$@")
[ ${#shapes[@]} -eq 0 ] && shapes=(smollm2-135m:Q4_1)
streams=${STREAMS:-1 4 16 64}
rounds=${ROUNDS:-2}
log=${OUT:-/tmp}
source "$(dirname "$0")/deps.sh"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader || true
echo "git $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo '+changes')"
build_cuda build-gpu "$log/build" twinfer twinfer_make_random_model || exit 1
tools/gpu/build_llama.sh llama-server || exit 1
llama_server=$PWD/.llama/build/bin/llama-server
parallel=0
for n in $streams; do [ "$n" -gt "$parallel" ] && parallel=$n; done

# Waits for GET /health on the port (at most two minutes).
up() {
    python3 - "$1" <<'PY'
import sys, time, urllib.request
for _ in range(240):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2)
        sys.exit(0)
    except Exception:
        time.sleep(0.5)
sys.exit(1)
PY
}

# run NAME PORT COMMAND...: starts the server, runs the client, stops the server.
run() {
    local name=$1 port=$2
    shift 2
    "$@" > "$log/$name.log" 2>&1 &
    local pid=$!
    if up "$port"; then
        echo "=== $name"
        timeout 300 python3 bench/serve/streams.py --url "http://127.0.0.1:$port" --streams $streams --tokens 128 2>&1 |
            grep -v '^note'
        # twinfer's split of its time: the model's passes against whole steps (llama-server serves
        # no /metrics without --metrics).
        python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$port/metrics').read().decode())" 2> /dev/null |
            grep -E '^twinfer_(pass_seconds|step_seconds|steps|step_rows)_total'
    else
        echo "=== $name did not come up"; tail -5 "$log/$name.log"
    fi
    kill "$pid" 2> /dev/null
    wait "$pid" 2> /dev/null
}

for spec in "${shapes[@]}"; do
    model=$(make_model build-gpu "$spec") || continue
    for round in $(seq "$rounds"); do
        echo "##### $(basename "$model" .gguf), round $round"
        run llama-server 18091 "$llama_server" -m "$model" -ngl 99 --parallel "$parallel" -c $((parallel * 256)) --port 18091
        run twinfer 18090 build-gpu/apps/twinfer serve -m "$model" --device cuda --parallel "$parallel" -c 2048 --port 18090 --no-progress
    done
done
