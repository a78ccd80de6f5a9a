#!/usr/bin/env bash
# pack01 common: start. A library has no daemon: nothing to start.
set -euo pipefail
echo "pack01_common: a library, no daemon to start"
exit 0
