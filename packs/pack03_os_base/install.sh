#!/usr/bin/env bash
# pack03 install: --dry-run checks the launcher can run here and writes nothing;
# --install checks the same, then creates the pack's data directory and compiles the
# sandbox library to bytecode in this copy (the installer copies no __pycache__, and
# with PYTHONDONTWRITEBYTECODE every launch would compile it again: ~15 ms a start).
set -euo pipefail
root="${AURORA_PACK_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
data="${AURORA_PACK_DATA:-$root/data}"
python="${PYTHON:-python3}"

case "${1:-}" in
    --dry-run | --install) ;;
    *)
        echo "usage: install.sh --dry-run | --install" >&2
        exit 2
        ;;
esac

"$python" -B "$root/sandbox/launch.py" --check  # -B: not even a .pyc is written
if [ "$1" = "--install" ]; then
    mkdir -p -- "$data"
    "$python" -m compileall -q "$root/sandbox" >&2
    echo "pack03: data directory $data ready" >&2
else
    echo "pack03: dry run ok (would create $data)" >&2
fi
