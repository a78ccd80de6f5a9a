#!/usr/bin/env bash
# pack01 common: install. A library: --dry-run checks that $PYTHON imports it,
# --install byte-compiles it. See README.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
cd "$ROOT"
case "${1:-}" in
  --dry-run)
    exec "$PYTHON" -c 'import aurora_common.digest, aurora_common.atomic, aurora_common.journal, aurora_common.lock, aurora_common.identity, aurora_common.bounded, aurora_common.structured; print("pack01_common: importable")'
    ;;
  --install)
    exec "$PYTHON" -m compileall -q aurora_common
    ;;
  *) echo "usage: install.sh --dry-run | --install" >&2; exit 2 ;;
esac
