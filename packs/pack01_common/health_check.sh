#!/usr/bin/env bash
# pack01 common: health. Healthy when $PYTHON imports the library from this copy.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
cd "$ROOT"
exec "$PYTHON" -c 'import aurora_common.digest, aurora_common.atomic, aurora_common.journal, aurora_common.lock, aurora_common.identity, aurora_common.bounded; print("pack01_common: importable")'
