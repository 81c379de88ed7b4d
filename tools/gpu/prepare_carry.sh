#!/usr/bin/env bash
# Here (not on the GPU machine): makes what the GPU scripts carry, in git-ignored folders, skipping
# what is there already:
#   .deps/debs/                 the Debian packages that machine lacks (tools/gpu/deps.sh unpacks them)
#   .device/llama-src.tar.gz    llama.cpp's sources from the llama-cpp-python 0.3.36 sdist (PyPI),
#                               built there by tools/gpu/build_llama.sh
#   .device/smollm2-vocab.gguf  SmolLM2's keys without tensors, for twinfer_make_random_model SHAPE TYPE
#   .device/SHAPE-meta.gguf     the benchmark shapes' metadata, for twinfer_make_random_model like
#                               bench/shapes/SHAPE-....tsv (tools/make_shape.py; Gemma 3's from its file,
#                               where scripts/setup.sh fetched it with TWINFER_FETCH_GEMMA=1)
# Needs scripts/setup.sh done (the default model, the test vocabularies, Python's gguf). A call then
# carries .deps and the .device files it uses (64 MiB in all): e.g. carry [".deps",
# ".device/smollm2-vocab.gguf", ".device/llama-src.tar.gz", ".device/qwen3-1.7b-meta.gguf"].
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .deps/debs .device

if ! ls .deps/debs/*.deb > /dev/null 2>&1; then
    (cd .deps/debs && apt-get download libpcre2-dev libpcre2-8-0 nlohmann-json3-dev libopenblas-dev \
        libopenblas0-pthread libopenblas-pthread-dev libgfortran5 libgtest-dev libreadline-dev libreadline8 \
        libncurses-dev libtinfo6 libncursesw6 libtomlplusplus-dev libtomlplusplus3 libcli11-dev \
        libcpp-httplib-dev libcpp-httplib0.11 libssl-dev libbrotli-dev zlib1g-dev > /dev/null)
fi

if [ ! -f .device/llama-src.tar.gz ]; then
    sdist=$(mktemp -d)
    python3 -m pip download -q --no-deps --no-binary :all: -d "$sdist" llama-cpp-python==0.3.36
    tar xzf "$sdist"/llama_cpp_python-0.3.36.tar.gz -C "$sdist"
    tools/gpu/pack_llama.sh "$sdist"/llama_cpp_python-0.3.36 > /dev/null
    rm -rf "$sdist"
fi

[ -f .device/smollm2-vocab.gguf ] ||
    python3 tools/make_shape.py metadata models/SmolLM2-135M-Instruct.Q4_1.gguf .device/smollm2-vocab.gguf
if [ ! -f .device/gemma-3-270m-meta.gguf ] && [ -f models/gemma-3-270m-it-Q4_K_M.gguf ]; then
    python3 tools/make_shape.py metadata models/gemma-3-270m-it-Q4_K_M.gguf .device/gemma-3-270m-meta.gguf
fi
vocabs=tests/data/third_party/tokenizers
for spec in qwen3-1.7b:$vocabs/ggml-vocab-qwen2.gguf qwen3-30b-a3b:$vocabs/ggml-vocab-qwen2.gguf \
            llama-3.2-1b:$vocabs/ggml-vocab-llama-bpe.gguf llama-3.1-8b:$vocabs/ggml-vocab-llama-bpe.gguf \
            smollm2-135m:.device/smollm2-vocab.gguf gpt-oss-20b:$vocabs/ggml-vocab-gpt-2.gguf; do
    shape=${spec%%:*}
    [ -f ".device/$shape-meta.gguf" ] || python3 tools/make_shape.py "$shape" "${spec#*:}" ".device/$shape-meta.gguf" > /dev/null
done
du -sh .deps .device/* | sed 's/^/carry: /'
