#!/usr/bin/env bash
# Print "health OK" (exit 0) or "health FAIL: <reason>" (exit 1) for the pack05
# loader service: pidfile, process identity, fresh heartbeat, readable registry.
# Environment: AURORA_PACK_RUN (default run/ here), PYTHON (default python3).
# Kept lean: no subshell, and -S (no site) because the check needs only the stdlib.
set -euo pipefail
here="${BASH_SOURCE[0]}"
if [[ "$here" == */* ]]; then here="${here%/*}"; else here=.; fi
exec "${PYTHON:-python3}" -S "$here/core/health.py" "$@"
