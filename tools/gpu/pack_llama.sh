#!/usr/bin/env bash
# Here (not on the GPU machine): packs the llama.cpp sources of the llama-cpp-python 0.3.36 sdist
# (the CMake project, ggml with its CPU and CUDA backends, llama, common, tools, vendor) into
# .device/llama-src.tar.gz (~8 MB), which tools/gpu/build_llama.sh builds there.
# Usage: tools/gpu/pack_llama.sh SDIST_DIR   (the extracted sdist: pip download --no-deps
#   --no-binary :all: llama-cpp-python==0.3.36, then tar xzf)
set -euo pipefail
src=${1:?usage: pack_llama.sh SDIST_DIR}/vendor
out=$(cd "$(dirname "$0")/../.." && pwd)/.device/llama-src.tar.gz
mkdir -p "$(dirname "$out")"
skip=(docs models media tests benches gguf-py examples .git)
for backend in metal sycl vulkan opencl hexagon et cann musa webgpu; do skip+=("ggml/src/ggml-$backend"); done
tar czf "$out" "${skip[@]/#/--exclude=llama.cpp/}" -C "$src" llama.cpp
ls -l "$out"
