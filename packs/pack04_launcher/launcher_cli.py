#!/usr/bin/env python3
"""Operator CLI of the pack04 launcher: list, logs, start, stop, run (see README)."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

try:
    from launcher import aurora_boot  # noqa: F401
except Exception as exc:  # an incomplete or damaged installation: one line, no traceback
    missing = isinstance(exc, ImportError)  # exit 3: "not installed"; else 1: "failed"
    what = exc if missing else f"internal error: {type(exc).__name__}: {exc} (a damaged copy?)"
    print(f"{os.environ.get('AURORA_PROG') or 'launcher_cli.py'}: error: {what}", file=sys.stderr)
    raise SystemExit(3 if missing else 1) from None

from aurora_common import cli as conventions

with conventions.damage_is_one_line(__name__):  # a damaged installed copy: no traceback
    from launcher.cli import main

if __name__ == "__main__":
    raise SystemExit(conventions.run_main(main))
