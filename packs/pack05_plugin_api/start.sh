#!/usr/bin/env bash
# Start the pack05 loader service detached and wait until it reports ready.
# Environment: AURORA_PACK_{DATA,RUN,LOGS} (defaults: data/, run/, logs/ here),
# PYTHON (default python3), AURORA_PACK05_START_TIMEOUT (seconds, default 20).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" -S "$here/core/process.py" start "$@"
