"""Benchmark: `stage` of a 200 MB pack in 2,000 files against `cp -a` + `sha256sum`."""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "installer"))

from aurora.installer import Installer  # noqa: E402  (needs the path above)

FILES = 2000
FILE_SIZE = 100_000  # 2,000 x 100 kB = 200 MB
REPEATS = 5

MANIFEST = """\
schema_version: "aurora-manifest-v1"
pack:
  id: "bigpack"
  name: "Big pack"
  version: "1.0.0"
  description: "generated for bench_stage"
  entrypoint: {install: "install.sh", start: "start.sh", stop: "stop.sh",
               health: "health_check.sh"}
  dependencies: []
  artifacts: [{path: "blobs/00/0000.bin", sha256: "%s"}]
  safety: {dry_run_supported: true, operator_approval_required: false,
           health_check_timeout_seconds: 30}
"""


def _generate(packs: Path) -> Path:
    root = packs / "bigpack"
    root.mkdir(parents=True)
    for name in ("install.sh", "start.sh", "stop.sh", "health_check.sh"):
        (root / name).write_text("#!/usr/bin/env bash\nset -euo pipefail\n")
        (root / name).chmod(0o755)
    for i in range(FILES):
        sub = root / "blobs" / f"{i // 100:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:04d}.bin").write_bytes(os.urandom(FILE_SIZE))
    pinned = hashlib.sha256((root / "blobs/00/0000.bin").read_bytes()).hexdigest()
    (root / "manifest.yaml").write_text(MANIFEST % pinned)
    return root


def _time_stage(packs: Path, work: Path, run: int) -> float:
    home = work / f"home-{run}"
    installer = Installer(home, packs)
    began = time.perf_counter()
    installer.stage("bigpack")
    took = time.perf_counter() - began
    shutil.rmtree(home)
    return took


def _time_baseline(src: Path, work: Path, run: int) -> float:
    dst = work / f"copy-{run}"
    began = time.perf_counter()
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    subprocess.run(
        f"cd {dst} && find . -type f -print0 | sort -z | xargs -0 sha256sum > /dev/null",
        shell=True,
        check=True,
    )
    took = time.perf_counter() - began
    shutil.rmtree(dst)
    return took


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-stage-") as tmp:
        work = Path(tmp)
        print(f"bench_stage: generating {FILES} files x {FILE_SIZE} B", file=sys.stderr)
        src = _generate(work / "packs")
        # Warm the page cache for both sides alike.
        _time_baseline(src, work, -1)
        stage_times: list[float] = []
        base_times: list[float] = []
        for run in range(REPEATS):
            # Alternate the order so neither side always runs on a warmer cache.
            if run % 2:
                base_times.append(_time_baseline(src, work, run))
                stage_times.append(_time_stage(work / "packs", work, run))
            else:
                stage_times.append(_time_stage(work / "packs", work, run))
                base_times.append(_time_baseline(src, work, run))
            print(
                f"bench_stage: run {run + 1}/{REPEATS}: stage {stage_times[-1]:.3f} s, "
                f"cp -a + sha256sum {base_times[-1]:.3f} s",
                file=sys.stderr,
            )
    stage = statistics.median(stage_times)
    base = statistics.median(base_times)
    ratio = stage / base
    mb = FILES * FILE_SIZE / 1e6
    verdict = "meets" if ratio <= 1.5 else "MISSES"
    print("## Staging a pack (installer `stage`)\n")
    print(
        f"Stages a generated pack of {mb:.0f} MB in {FILES:,} files (validation, copy through "
        "a temp dir and a rename, sha256 of every file, tree digest, state write) and "
        "compares with `cp -a` of the same tree followed by `sha256sum` of every copied "
        f"file, side by side in the same run. {REPEATS} repetitions each, medians; page "
        "cache warm for both.\n"
    )
    print("| operation | median (s) | throughput (MB/s) |")
    print("|---|---:|---:|")
    print(f"| `stage` (in-process `Installer.stage`) | {stage:.3f} | {mb / stage:.0f} |")
    print(f"| `cp -a` + `sha256sum` (baseline) | {base:.3f} | {mb / base:.0f} |")
    print(f"| **ratio stage / baseline** | **{ratio:.2f}x** | target <= 1.5x: {verdict} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
