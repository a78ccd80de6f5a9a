#!/usr/bin/env bash
# pack03 has no daemon: nothing to stop. Sandboxed plugins belong to pack04, which
# stops them (and kills their trees with `launch.py --kill-tree`).
set -euo pipefail
echo "pack03: no daemon to stop (plugins are stopped by pack04)" >&2
exit 0
