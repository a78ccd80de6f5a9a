#!/usr/bin/env bash
# pack03 has no daemon: the sandbox is a command (sandbox/launch.py) that pack04
# runs once per plugin start. Nothing to start.
set -euo pipefail
echo "pack03: no daemon to start (the sandbox runs per plugin, via pack04)" >&2
exit 0
