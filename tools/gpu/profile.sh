#!/usr/bin/env bash
# On the GPU machine, from the repository root: where the time of a forward pass goes, per kernel,
# by Nsight Compute (ncu; Nsight Systems is not installed there). Builds twinfer, makes random-weight
# models of the benchmark shapes, and for each prints the kernels' summed durations for one
# prompt of 512 tokens and for 4 single-token decode steps (CUDA graph off, so ncu sees each
# launch; its serialization removes launch overlap, so compare the kernels' sums, not the wall time).
# PHASES="tg4" profiles decoding alone; a phase rowsN profiles the server's batched decode step of
# N sequences instead (twinfer_batched_bench: a prompt of one token a slot, 4 one-row warm-up
# steps, 2 steps of N rows; the upload's and prompt's kernels, repack, cuBLAS's, are in the sums
# too, under their own names: a long prompt's would use up ncu's -c before the steps). Each phase
# also sums the bytes the kernels read from DRAM (dram__bytes_read.sum: what a decode step really
# streams, e.g. a mixture of experts' chosen experts against all of them). A spec TSV=METADATA.gguf makes the file as tools/gpu/speed.sh does.
# Usage: tools/gpu/profile.sh [build-dir] [shape:type | TSV=METADATA ...]   (default build-gpu smollm2-135m:Q4_1
#   tinyllama-1.1b:Q4_0 llama2-7b:Q4_0). Carry .deps and .device (tools/gpu/prepare_carry.sh makes them).
set -uo pipefail
build=${1:-build-gpu}
shift || true
shapes=("$@")
[ ${#shapes[@]} -eq 0 ] && shapes=(smollm2-135m:Q4_1 tinyllama-1.1b:Q4_0 llama2-7b:Q4_0)
log=${OUT:-/tmp}
source "$(dirname "$0")/deps.sh"
build_cuda "$build" "$log/build" twinfer twinfer_make_random_model twinfer_batched_bench || exit 1
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
# ncu's per-kernel summary as "total_us calls name", largest first.
summarize() {
    python3 - "$1" <<'PY'
import csv, sys, collections
rows = list(csv.reader(open(sys.argv[1])))
head = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
h = rows[head]; name = h.index("Kernel Name"); metric = h.index("Metric Name"); value = h.index("Metric Value"); unit = h.index("Metric Unit")
total = collections.defaultdict(float); calls = collections.Counter()
dram = 0.0
for r in rows[head + 1:]:
    if len(r) > value and r[metric] == "dram__bytes_read.sum":
        scale = {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9}.get(r[unit], 1)
        dram += float(r[value].replace(",", "")) * scale
    if len(r) <= value or r[metric] != "gpu__time_duration.sum": continue
    v = float(r[value].replace(",", "")); u = r[unit]
    v = v / 1000 if u in ("nsecond", "ns") else v * 1000 if u in ("msecond", "ms") else v
    k = r[name].replace("(anonymous namespace)::", "").split("(")[0][-60:]
    total[k] += v; calls[k] += 1
all_us = sum(total.values())
print(f"{'us':>10} {'%':>5} {'calls':>6} kernel   (sum {all_us:.0f} us, DRAM read {dram / 1e6:.1f} MB)")
for k, v in sorted(total.items(), key=lambda kv: -kv[1])[:14]:
    print(f"{v:10.1f} {100*v/all_us:5.1f} {calls[k]:6d} {k}")
PY
}
for spec in "${shapes[@]}"; do
    if [[ $spec == *=* ]]; then shape=$(basename "${spec%%=*}" .tsv) type=""; else shape=${spec%%:*} type=${spec##*:}; fi
    model=$(make_model "$build" "$spec") || continue
    for phase in ${PHASES:-pp512 tg4}; do
        case $phase in
        pp512) run=("$build/apps/twinfer" bench -m "$model" --device cuda -p 512 -n 0 -r 1 --no-progress) ;;
        rows*) run=("$build/tools/twinfer_batched_bench" --device cuda --batched-only "$model" 0 1 2 "${phase#rows}") ;;
        *) run=("$build/apps/twinfer" bench -m "$model" --device cuda -p 0 -n 4 -r 1 --no-progress) ;;
        esac
        TWINFER_CUDA_GRAPH=0 timeout 300 "$ncu" --clock-control none --cache-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv -c 4000 \
            --log-file "$log/ncu-$shape-$type-$phase.csv" "${run[@]}" > /dev/null 2>&1 || { echo "ncu failed on $shape $phase"; continue; }
        echo "=== $shape $type $phase"
        summarize "$log/ncu-$shape-$type-$phase.csv"
    done
done
