#!/usr/bin/env bash
# Stop the pack05 loader service named by its pidfile: identity check, TERM to its
# group, wait, KILL, confirm gone. Never looks for processes by name.
# Environment: AURORA_PACK_RUN (default run/ here), PYTHON (default python3),
# AURORA_PACK05_STOP_TIMEOUT (seconds before KILL, default 10).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" -S "$here/core/process.py" stop "$@"
