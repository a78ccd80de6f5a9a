#!/usr/bin/env bash
# Placeholder until the launcher lands: checks its environment, creates its data dir.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")" && pwd)"
DATA="${AURORA_PACK_DATA:-$ROOT/data}"
MODE="${1:-}"

case "$MODE" in
  --dry-run)
    echo "[pack04] dry run: would create $DATA (placeholder pack, no service yet)"
    ;;
  --install)
    mkdir -p "$DATA"
    echo "[pack04] installed: created $DATA (placeholder pack, no service yet)"
    ;;
  *)
    echo "[pack04] usage: install.sh --dry-run | --install" >&2
    exit 2
    ;;
esac
