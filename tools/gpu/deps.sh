# Sourced by the GPU scripts: the GPU machine cannot fetch packages and lacks PCRE2, nlohmann-json,
# OpenBLAS, readline, toml++, CLI11 and GoogleTest, so their Debian packages travel in .deps/debs
# (see tools/gpu/bench.sh) and are unpacked under /tmp/deps, never into /. Sets `deps`, the CMake
# arguments that point the build at them, and the library search path.
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
