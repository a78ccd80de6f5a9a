#!/usr/bin/env bash
# pack04 launcher: stop. The logic is in launcher/lifecycle.py; see README.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
# The launcher package is imported from the pack root (the current directory).
cd "$ROOT"
exec "$PYTHON" -m launcher.lifecycle stop
