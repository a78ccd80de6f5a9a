#!/usr/bin/env bash
# Placeholder until the launcher lands: there is no service to stop.
set -euo pipefail
echo "[pack04] the launcher has no service yet: nothing to stop"
