"""Benchmark: pack05 plugin registry (register, get, list) and staging, against the reference."""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "packs" / "pack05_plugin_api"))

from core.loader import PluginLoader  # noqa: E402  (needs the path above)
from core.registry import PluginRegistry  # noqa: E402

SIZES = (1_000, 10_000)
REPEATS = {
    1_000: {"register": 40, "get": 300, "list": 30},
    10_000: {"register": 8, "get": 60, "list": 6},
}
STAGE_FILES = 20
STAGE_FILE_SIZE = 5_000_000  # 20 x 5 MB = 100 MB
STAGE_REPEATS = 5


class ReferenceRegistry:
    """The reference patch's registry (5A), unchanged but for the path: no lock, no fsync,
    rewritten in place with indent=2."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def list(self) -> Any:
        return json.loads(self._path.read_text())

    def register(self, manifest: dict[str, Any], files: list[str]) -> bool:
        d = self.list()
        plugin_id = manifest["id"]
        d[plugin_id] = {
            "manifest": manifest,
            "files": files,
            "installed_at": __import__("time").time(),
            "enabled": False,
        }
        self._path.write_text(json.dumps(d, indent=2))
        return True

    def get(self, plugin_id: str) -> Any:
        return self.list().get(plugin_id)


def _manifest(i: int) -> dict[str, Any]:
    return {
        "id": f"acme.plugin{i}",
        "name": f"Plugin {i}",
        "version": "1.0.0",
        "entrypoint": "main.py",
        "description": "A generated plugin for the benchmark.",
        "permissions": ["network"],
    }


def _log(message: str) -> None:
    print(f"bench_registry: {message}", file=sys.stderr, flush=True)


def _fill_reference(path: Path, n: int) -> ReferenceRegistry:
    data = {
        _manifest(i)["id"]: {
            "manifest": _manifest(i),
            "files": ["manifest.json", "main.py"],
            "installed_at": time.time(),
            "enabled": False,
        }
        for i in range(n)
    }
    path.write_text(json.dumps(data, indent=2))
    return ReferenceRegistry(path)


def _fill_ours(plugins_dir: Path, n: int) -> PluginRegistry:
    """n plugins in our on-disk format: one real registration, its record cloned n times."""
    seed = PluginRegistry(plugins_dir)
    seed.register(_manifest(0), ["manifest.json", "main.py"])
    doc = json.loads(seed.path.read_text())
    template = json.dumps(doc["plugins"]["acme.plugin0"])
    plugins = {}
    for i in range(n):
        record = json.loads(template.replace("acme.plugin0", f"acme.plugin{i}"))
        record["versions"]["1.0.0"]["manifest"]["name"] = f"Plugin {i}"
        plugins[f"acme.plugin{i}"] = record
    doc["plugins"] = plugins
    seed.path.write_text(json.dumps(doc, separators=(",", ":")))
    return PluginRegistry(plugins_dir)


def _median_ms(op: Callable[[int], object], repeats: int) -> float:
    times = []
    for k in range(repeats):
        began = time.perf_counter()
        op(k)
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def _measure(work: Path, n: int, rng: random.Random) -> list[tuple[str, int, float, float]]:
    reps = REPEATS[n]
    ref = _fill_reference(work / f"ref-{n}.json", n)
    ours = _fill_ours(work / f"ours-{n}", n)
    rows: list[tuple[str, int, float, float]] = []
    _log(f"{n} plugins: register")
    ref_reg = _median_ms(lambda k: ref.register(_manifest(n + k), ["main.py"]), reps["register"])
    ours_reg = _median_ms(lambda k: ours.register(_manifest(n + k), ["main.py"]), reps["register"])
    rows.append(("register (locked, fsync, backup, audit)", n, ref_reg, ours_reg))
    _log(f"{n} plugins: get, list")
    ids = [f"acme.plugin{rng.randrange(n)}" for _ in range(reps["get"])]
    ref_get = _median_ms(lambda k: ref.get(ids[k]), reps["get"])
    ours_get = _median_ms(lambda k: ours.get(ids[k]), reps["get"])
    rows.append(("get", n, ref_get, ours_get))
    ref_list = _median_ms(lambda k: ref.list(), reps["list"])
    ours_list = _median_ms(lambda k: ours.list(), reps["list"])
    rows.append(("list", n, ref_list, ours_list))
    # A new process has no cached copy: it pays one read and parse (and, to list, a freeze).
    cold_get = _median_ms(lambda k: PluginRegistry(ours.plugins_dir).get(ids[k]), reps["list"])
    rows.append(("get, new registry object (cold)", n, ref_get, cold_get))
    cold_list = _median_ms(lambda k: PluginRegistry(ours.plugins_dir).list(), reps["list"])
    rows.append(("list, new registry object (cold)", n, ref_list, cold_list))
    cold_reg = _median_ms(
        lambda k: PluginRegistry(ours.plugins_dir).register(_manifest(2 * n + k), ["main.py"]),
        reps["list"],
    )
    rows.append(("register, new registry object (cold)", n, ref_reg, cold_reg))
    return rows


def _registry_rows(work: Path) -> list[tuple[str, int, float, float]]:
    rng = random.Random(1)
    return [row for n in SIZES for row in _measure(work, n, rng)]


def _make_plugin(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({**_manifest(0), "id": "acme.big"}))
    (root / "main.py").write_text("print('big')\n")
    for i in range(STAGE_FILES):
        (root / f"blob{i:02d}.bin").write_bytes(os.urandom(STAGE_FILE_SIZE))
    return root


def _stage_rows(work: Path) -> tuple[float, float]:
    src = _make_plugin(work / "big")
    files = sorted(str(p.relative_to(src)) for p in src.iterdir())
    base_times, ours_times = [], []
    for k in range(STAGE_REPEATS):
        _log(f"staging 100 MB: round {k + 1}/{STAGE_REPEATS}")
        dest = work / f"cp-{k}"
        began = time.perf_counter()
        subprocess.run(["cp", "-a", str(src), str(dest)], check=True)
        subprocess.run(["sha256sum", "--", *files], cwd=dest, check=True, stdout=subprocess.DEVNULL)
        base_times.append(time.perf_counter() - began)
        shutil.rmtree(dest)
        loader = PluginLoader(work / f"plugins-{k}")
        began = time.perf_counter()
        loader.stage_package(src)
        ours_times.append(time.perf_counter() - began)
        shutil.rmtree(work / f"plugins-{k}")
    return statistics.median(base_times), statistics.median(ours_times)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        work = Path(tmp)
        rows = _registry_rows(work)
        base, ours = _stage_rows(work)
    by_key = {(op, n): (ref, us) for op, n, ref, us in rows}
    out = [
        "## Plugin registry and staging (pack05)",
        "",
        "`bench/bench_registry.py`. The reference is the 5A patch's `PluginRegistry` (no lock,",
        "no fsync, whole file re-serialized with `indent=2`), run side by side in a temp dir.",
        "Ours replaces `registry.json` atomically under `flock`, fsyncs file and directory,",
        "keeps `registry.json.bak` and appends `audit.log` on every register. Reads reuse the",
        "parsed file while its (device, inode, size, mtime, ctime) are unchanged: `get` returns",
        "a private copy of one record, `list` a read-only view shared until the file changes.",
        "The cold rows use a new registry object per call (what a new process pays): a",
        "reader parses the file straight into read-only containers, a writer parses it plainly.",
        "Medians; ratio = ours / reference (below 1 is faster).",
        "",
        "| operation | plugins | reference (ms) | ours (ms) | ratio | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    targets = {
        "register (locked, fsync, backup, audit)": "<= 1.0 at 1,000",
        "get": "<= 0.5 at 1,000",
        "list": "<= 0.5 at 1,000",
    }
    for op, n, ref, us in rows:
        target = targets.get(op, "-") if n == 1_000 else "-"
        out.append(f"| {op} | {n:,} | {ref:.3f} | {us:.3f} | {us / ref:.2f} | {target} |")
    out += [
        "",
        "Growth from 1,000 to 10,000 plugins (cost at 10,000 / cost at 1,000):",
        "",
        "| operation | reference | ours |",
        "|---|---:|---:|",
    ]
    for op in dict.fromkeys(op for op, _, _, _ in rows):
        r1, o1 = by_key[(op, 1_000)]
        r10, o10 = by_key[(op, 10_000)]
        out.append(f"| {op} | {r10 / r1:.1f}x | {o10 / o1:.1f}x |")
    out += [
        "",
        f"Staging a 100 MB plugin ({STAGE_FILES} files of {STAGE_FILE_SIZE // 1_000_000} MB) "
        "with `PluginLoader.stage_package` (checks, copy + sha256 in one pass, fsync of every "
        "file, rename, register) against `cp -a` + `sha256sum` of the copy "
        f"(median of {STAGE_REPEATS}):",
        "",
        "| operation | cp -a + sha256sum (s) | stage_package (s) | ratio | target |",
        "|---|---:|---:|---:|---|",
        f"| stage 100 MB | {base:.3f} | {ours:.3f} | {ours / base:.2f} | <= 1.5 |",
    ]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
