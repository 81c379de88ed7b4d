#!/usr/bin/env bash
# The "Trust" table of BENCHMARKS.md on this machine's CPU: each activation scheme of twinfer and
# llama.cpp's default path against the float64 reference on bench/agreement (same top, flips, KL,
# greedy tokens before the first divergence), and the decode speed of the same binaries with the
# same flags, alternating rounds.
#
#   tools/trust_table.sh MODEL LLAMA_DIR [ROUNDS]
#
# LLAMA_DIR: a llama.cpp CPU build made outside the repository (llama-cpp-python's sdist) holding
# build/bin/llama-bench and lcpp_agree, the driver that feeds llama.cpp token by token and writes
# its logits and greedy ids (bench/agreement/README.md). Needs ~2.5 GB of free space in $TMPDIR.
set -euo pipefail
model=${1:?model.gguf}
llama=${2:?llama.cpp build folder}
rounds=${3:-3}
threads=2
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

build/tools/twinfer_agreement -m "$model" --paths "" --write-ids "$work"
"$llama/lcpp_agree" logits "$model" "$work/chunks.txt" "$work/llama_logits.bin"
"$llama/lcpp_agree" generate "$model" "$work/prompts.txt" 32 "$work/llama_ids.txt"
build/tools/twinfer_agreement -m "$model" -t "$threads" --paths f32,int8x2,int8 \
    --external "llama.cpp default:$work/llama_logits.bin:$work/llama_ids.txt"

# llama-bench's JSON and twinfer bench's: tokens/s of the first test, mean +- standard deviation.
rate() { python3 -c 'import json,sys; r=json.load(sys.stdin)[0]; print("%.1f +- %.1f" % (r["avg_ts"], r["stddev_ts"]))'; }

echo
echo "decode speed, tg64, $threads threads, $rounds alternating rounds (tokens/s)"
for ((r = 1; r <= rounds; ++r)); do
    for activations in int8x2 int8 f32; do
        printf 'round %d twinfer %-7s ' "$r" "$activations"
        build/apps/twinfer bench -m "$model" -t "$threads" -p 0 -n 64 -r 3 --activations "$activations" -o json | rate
    done
    printf 'round %d llama.cpp         ' "$r"
    "$llama/build/bin/llama-bench" -m "$model" -t "$threads" -p 0 -n 64 -r 3 -o json | rate
done
