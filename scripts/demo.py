"""`make demo`: the installer's main job on a throw-away AURORA_HOME, each step printed."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "installer" / "aurora_installer.py"


# Exit status 6: approval is required and there is no terminal to ask on.
APPROVAL_REFUSED = 6


def _steps(pack: str) -> list[tuple[list[str], int]]:
    """Each command with the exit status it must give."""
    return [
        (["list"], 0),
        (["validate", "--pack", pack], 0),
        (["stage", "--pack", pack], 0),
        (["dry-run", "--pack", pack], 0),
        # Without a terminal the operator's approval must be given explicitly.
        (["install", "--pack", pack, "--with-deps"], APPROVAL_REFUSED),
        (["install", "--pack", pack, "--with-deps", "--approve"], 0),
        (["status"], 0),
        (["verify", "--pack", pack], 0),
        (["start", "--pack", pack], 0),
        (["health", "--pack", pack], 0),
        (["status", "--pack", pack], 0),
        (["stop", "--pack", pack], 0),
        (["uninstall", "--pack", pack], 0),
        (["status", "--pack", pack], 0),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pack", default="pack05_plugin_api", help="pack to install")
    parser.add_argument("--keep", action="store_true", help="keep the temporary AURORA_HOME")
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="aurora-demo-"))
    env = {**os.environ, "AURORA_HOME": str(home)}
    print(f"AURORA_HOME={home} (throw-away)\n", flush=True)
    failed: list[str] = []
    started = False
    try:
        for step, expected in _steps(args.pack):
            shown = "python3 installer/aurora_installer.py " + shlex.join(step)
            print(f"$ {shown}", flush=True)
            proc = subprocess.run(
                [sys.executable, str(CLI), *step],
                env=env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                check=False,
                timeout=600,
            )
            note = " (as expected: refused without --approve)" if expected else ""
            print(f"-> exit {proc.returncode}{note}\n", flush=True)
            if step[0] == "start":
                started = True
            elif step[0] == "stop" and proc.returncode == 0:
                started = False
            if proc.returncode != expected:
                failed.append(f"{shown} (exit {proc.returncode}, expected {expected})")
                break
    finally:
        if started:  # leave nothing running behind the throw-away home
            subprocess.run(
                [sys.executable, str(CLI), "stop", "--pack", args.pack],
                env=env,
                check=False,
                stdin=subprocess.DEVNULL,
                timeout=120,
            )
        if args.keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    if failed:
        print(f"demo FAILED at: {failed[0]}", file=sys.stderr)
        return 1
    print("demo passed: every step gave the exit status it should")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
