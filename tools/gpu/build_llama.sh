#!/usr/bin/env bash
# On the GPU machine, from the repository root: builds llama.cpp's CUDA tools (llama-bench,
# llama-server) from the llama-cpp-python 0.3.36 sdist's sources, which the call carries in
# .device/llama-src.tar.gz (made here by tools/gpu/pack_llama.sh), into the git-ignored .llama/.
# Never part of the repository. sm_90 only and llama.cpp's other defaults (flash-attention kernels
# for f16/q8_0 caches). Prints the path of llama-bench; the build log is in $OUT/llama-build[-cpu].log.
# LLAMA_CUDA=OFF builds the CPU-only tools instead, into .llama/build-cpu (llama.cpp's defaults for
# the machine's CPU, GGML_NATIVE).
# Usage: tools/gpu/build_llama.sh [targets...]   (default: llama-bench)
set -uo pipefail
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(llama-bench)
cuda=${LLAMA_CUDA:-ON}
suffix=$([ "$cuda" = ON ] || echo -cpu)
dir=.llama/build$suffix
log=${OUT:-/tmp}/llama-build$suffix.log
if [ ! -d .llama/src ]; then
    mkdir -p .llama/src && tar xzf .device/llama-src.tar.gz -C .llama/src --strip-components=1 || exit 1
fi
if [ ! -f $dir/build.ninja ]; then
    cmake -S .llama/src -B $dir -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=$cuda \
        -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
        -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_COMMIT=0c1e57098 > "$log" 2>&1 || { tail -30 "$log"; exit 1; }
fi
ninja -C $dir -j"$(nproc)" "${targets[@]}" >> "$log" 2>&1 || { grep -m5 -A5 error "$log"; tail -20 "$log"; exit 1; }
echo "$PWD/$dir/bin/llama-bench"
