#!/usr/bin/env bash
# Placeholder until the launcher lands: healthy only if install created the data dir.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")" && pwd)"
DATA="${AURORA_PACK_DATA:-$ROOT/data}"
if [[ -d "$DATA" ]]; then
  echo "health OK: data dir $DATA exists (placeholder pack, no service yet)"
else
  echo "health FAIL: data dir $DATA missing (not installed?)"
  exit 1
fi
