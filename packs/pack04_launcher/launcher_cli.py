#!/usr/bin/env python3
"""Operator CLI of the pack04 launcher: list, logs, start, stop, run (see README)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from launcher.cli import conventions, main

if __name__ == "__main__":
    raise SystemExit(conventions.run_main(main))
