"""Run every benchmark in bench/ and write bench/RESULTS.md."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def _machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.system()} {platform.release()} {platform.machine()}, {cpu}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run bench_*.py (or the ones named in argv); each prints a Markdown section."""
    names = argv if argv is not None else sys.argv[1:]
    scripts = sorted(BENCH_DIR.glob("bench_*.py"))
    if names:
        scripts = [s for s in scripts if s.stem in names or s.stem.removeprefix("bench_") in names]
    sections: list[str] = []
    failed = 0
    for script in scripts:
        print(f"bench: running {script.name}", file=sys.stderr)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, check=False
        )
        took = time.monotonic() - started
        if proc.returncode != 0:
            failed += 1
            sections.append(
                f"## {script.stem}\n\nFAILED (exit {proc.returncode}):\n\n"
                f"```\n{proc.stderr[-2000:]}\n```\n"
            )
        else:
            sections.append(proc.stdout.strip() + f"\n\n_(ran in {took:.0f} s)_\n")
        print(proc.stderr, end="", file=sys.stderr)
    header = (
        "# Benchmark results\n\n"
        f"Command: `make bench` (or `.venv/bin/python bench/run.py [name...]`)\n\n"
        f"Machine: {_machine()}\n\n"
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
        "Every comparison runs side by side in the same run; ratios are what to read, "
        "absolute times vary with the machine.\n"
    )
    out = BENCH_DIR / "RESULTS.md"
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(header + "\n" + "\n".join(sections))
    os.replace(tmp, out)
    print(f"bench: wrote {out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
