"""Run every benchmark in bench/ and write bench/RESULTS.md.

Named benchmarks (``run.py sandbox protocol``) replace their own sections of an existing
RESULTS.md and keep the others: each section starts with a marker naming its script."""

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


def _marker(script: Path) -> str:
    return f"<!-- {script.stem} -->"


def _kept_sections(out: Path, scripts: list[Path]) -> dict[str, str]:
    """The sections of an existing RESULTS.md by marker (none if it has no markers)."""
    try:
        text = out.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    kept: dict[str, str] = {}
    markers = [_marker(s) for s in scripts]
    spans = sorted((text.find(m), m) for m in markers if m in text)
    if not spans:
        return {}
    ends = [start for start, _ in spans[1:]] + [len(text)]
    for (start, marker), end in zip(spans, ends, strict=True):
        kept[marker] = text[start:end].strip() + "\n"
    return kept


def main(argv: list[str] | None = None) -> int:
    """Run bench_*.py (or the ones named in argv); each prints a Markdown section."""
    names = argv if argv is not None else sys.argv[1:]
    every = sorted(BENCH_DIR.glob("bench_*.py"))
    scripts = [s for s in every if not names or s.stem in names or s.stem[6:] in names]
    if not scripts:
        print(f"bench: no benchmark named {' '.join(names)}", file=sys.stderr)
        return 2
    out = BENCH_DIR / "RESULTS.md"
    sections = _kept_sections(out, every) if names else {}
    failed = 0
    for script in scripts:
        print(f"bench: running {script.name}", file=sys.stderr)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, check=False
        )
        took = time.monotonic() - started
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        if proc.returncode != 0:
            failed += 1
            body = (
                f"## {script.stem}\n\nFAILED (exit {proc.returncode}):\n\n"
                f"```\n{proc.stderr[-2000:]}\n```\n"
            )
        else:
            body = proc.stdout.strip() + f"\n\n_(ran in {took:.0f} s, {when})_\n"
        sections[_marker(script)] = f"{_marker(script)}\n{body}"
        print(proc.stderr, end="", file=sys.stderr)
    header = (
        "# Benchmark results\n\n"
        f"Command: `make bench` (or `.venv/bin/python bench/run.py [name...]`: those "
        "sections only, the others kept)\n\n"
        f"Machine: {_machine()}\n\n"
        "Every comparison runs side by side in the same run; ratios are what to read, "
        "absolute times vary with the machine. Each section ends with when it ran.\n"
    )
    ordered = [sections[_marker(s)] for s in every if _marker(s) in sections]
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(header + "\n" + "\n".join(ordered), encoding="utf-8")
    os.replace(tmp, out)
    print(f"bench: wrote {out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
