#!/usr/bin/env bash
# pack01 common: stop. A library has no daemon: nothing to stop.
set -euo pipefail
echo "pack01_common: a library, no daemon to stop"
exit 0
