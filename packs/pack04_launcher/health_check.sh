#!/usr/bin/env bash
# pack04 launcher: health. The logic is in launcher/lifecycle.py; see README.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
if [[ "$PYTHON" == */* && "$PYTHON" != /* ]]; then
  PYTHON="$PWD/$PYTHON"  # relative to the caller's directory: resolve it before the cd
fi
# The launcher package is imported from the pack root (the current directory).
cd "$ROOT"
exec "$PYTHON" -m launcher.lifecycle health
