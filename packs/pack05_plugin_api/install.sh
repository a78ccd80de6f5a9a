#!/usr/bin/env bash
# install.sh --dry-run: check that $PYTHON can run the pack (writes nothing).
# install.sh --install: create the plugin data layout and the run and log dirs.
# Environment: AURORA_PACK_{DATA,RUN,LOGS} (defaults: data/, run/, logs/ here),
# PYTHON (default python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
if [[ "$py" == */* && "$py" != /* ]]; then
    py="$PWD/$py"  # relative to the caller's directory: resolve it before the cd
fi
case "${1:-}" in
    --dry-run) cd "$here" && exec "$py" -B -m core.service --check ;;
    --install) cd "$here" && exec "$py" -m core.service --init ;;
    *)
        echo "usage: install.sh --dry-run | --install (got: '${1:-}')" >&2
        exit 2
        ;;
esac
