#!/usr/bin/env bash
# pack03 health: which confinement layers this host supports (launch.py --probe).
# Exit 0 when the always-on layers work; the report on stderr names every layer.
set -euo pipefail
root="${AURORA_PACK_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
python="${PYTHON:-python3}"
exec "$python" "$root/sandbox/launch.py" --probe
