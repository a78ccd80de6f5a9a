"""Run the installer or an installed pack's command line as a child process.

Packs never import each other: `aurora` runs their CLIs with stdin, stdout and
stderr passed through and hands back their exit status.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from aurora_cli.home import INSTALLER, InstalledPack


def run_child(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Run ``argv`` with stdio passed through. Ctrl-C reaches the child too (same
    terminal group): wait for it and return its status. A signal death is 128+N."""
    proc = subprocess.Popen(list(argv), env={**os.environ, **env})
    while True:
        try:
            rc = proc.wait()
            break
        except KeyboardInterrupt:
            continue
    return rc if rc >= 0 else 128 - rc


def capture_child(argv: Sequence[str], env: Mapping[str, str]) -> tuple[int, str, str]:
    """Run ``argv`` for its JSON document: (exit status, stdout, stderr)."""
    proc = subprocess.run(
        list(argv), env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    return proc.returncode, proc.stdout, proc.stderr


def installer_argv(home: Path, args: Sequence[str]) -> list[str]:
    """``aurora pack ARGS``: the installer, on this home."""
    return [sys.executable, str(INSTALLER), *args, "--home", str(home)]


def installer_env(home: Path) -> dict[str, str]:
    return {"AURORA_PROG": "aurora pack"}


def pack_cli_env(pack: InstalledPack, prog: str) -> dict[str, str]:
    """What an installed pack's CLI runs with: the lifecycle scripts' environment."""
    return {**pack.env(), "PYTHON": sys.executable, "AURORA_PROG": prog}
