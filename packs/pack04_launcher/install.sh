#!/usr/bin/env bash
# pack04 launcher: install. The logic is in launcher/lifecycle.py; see README.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
if [[ "$PYTHON" == */* && "$PYTHON" != /* ]]; then
  PYTHON="$PWD/$PYTHON"  # relative to the caller's directory: resolve it before the cd
fi
# The launcher package is imported from the pack root (the current directory).
cd "$ROOT"
case "${1:-}" in
  --dry-run|--install) ;;
  *) echo "usage: install.sh --dry-run | --install" >&2; exit 2 ;;
esac
exec "$PYTHON" -m launcher.lifecycle install "$1"
