# Sourced by the GPU scripts: the GPU machine cannot fetch packages and lacks PCRE2, nlohmann-json,
# OpenBLAS, readline, toml++, CLI11, cpp-httplib and GoogleTest, so their Debian packages travel in .deps/debs
# (tools/gpu/prepare_carry.sh) and are unpacked under /tmp/deps, never into /. Sets `deps`, the CMake
# arguments that point the build at them, and the library search path; defines build_cuda and
# step, which the scripts share.
deps=()
if [ -d .deps/debs ]; then
    root=/tmp/deps
    for f in .deps/debs/*.deb; do dpkg -x "$f" "$root"; done
    lib=$root/usr/lib/x86_64-linux-gnu
    export PKG_CONFIG_SYSROOT_DIR=$root PKG_CONFIG_PATH=$lib/pkgconfig
    export LD_LIBRARY_PATH=$lib:$lib/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    deps=(-DCMAKE_PREFIX_PATH="$root/usr" -DCMAKE_LIBRARY_PATH="$lib/openblas-pthread;$lib"
          -DCBLAS_INCLUDE_DIR="$root/usr/include/x86_64-linux-gnu/openblas-pthread")
fi

# build_cuda DIR LOG TARGET...: configures DIR (CUDA on, Release, the packages above; the CMake log
# in LOG.cmake.log) and builds the targets (LOG.log), incrementally: a warm machine's earlier build
# is brought up to date, never reused as it was. On failure prints the first errors, returns 1.
build_cuda() {
    local dir=$1 log=$2
    shift 2
    cmake -S . -B "$dir" -G Ninja -DTWINFER_CUDA=ON -DCMAKE_BUILD_TYPE=Release "${deps[@]}" > "$log.cmake.log" 2>&1 ||
        { tail -30 "$log.cmake.log"; return 1; }
    ninja -C "$dir" -j16 "$@" > "$log.log" 2>&1 || { grep -B2 -A8 -m5 error "$log.log"; tail -20 "$log.log"; return 1; }
}

# step NAME SECONDS COMMAND...: runs it with a time limit and records PASS or FAIL in `summary`.
summary=()
step() {
    local name=$1 limit=$2
    shift 2
    echo "=== $name"
    if timeout "$limit" "$@"; then summary+=("PASS $name"); else summary+=("FAIL($?) $name"); fi
}

# make_model BUILD SPEC: prints the path of SPEC's random-weight file under ${TWINFER_MODELS:-/tmp/models},
# made by BUILD's twinfer_make_random_model where missing: shape:type (with SmolLM2's vocabulary,
# .device/smollm2-vocab.gguf) or TSV=METADATA (`like`: another architecture, bench/shapes/*.tsv).
# Returns 1, printing why, if it cannot be made.
make_model() {
    local build=$1 spec=$2 models=${TWINFER_MODELS:-/tmp/models} model make
    if [[ $spec == *=* ]]; then
        model=$models/$(basename "${spec%%=*}" .tsv).gguf
        make=(like "${spec%%=*}" "${spec#*=}" "$model")
    else
        model=$models/${spec%%:*}-${spec##*:}.gguf
        make=("${spec%%:*}" "${spec##*:}" .device/smollm2-vocab.gguf "$model")
    fi
    mkdir -p "$models"
    [ -f "$model" ] || "$build/tools/twinfer_make_random_model" "${make[@]}" > /dev/null ||
        { echo "could not make $model" >&2; return 1; }
    echo "$model"
}
