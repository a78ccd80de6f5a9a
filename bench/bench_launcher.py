"""Supervisor cost: plugin start-up through pack04, and its CPU and memory with 50 plugins.

First, start-up: a plugin that does nothing (``pass``) started by the supervisor's own
code path (policy written, package digest checked, log opened, sandbox asked, exit
collected) through pack03's fork server and through the one-shot ``launch.py``, against
the bare ``python -I main.py``, in interleaved rounds. Then the idle cost: starts
``python -m launcher.service`` (default settings: registry poll 1 s, heartbeat 2 s) on a
temp registry of 50 idle Python plugins, each run in the pack03 sandbox (the source
tree's, or the test-only passthrough when pack03 is absent: said in the output), side by
side with a second service that supervises no plugin (the baseline). Once all run, it
samples both supervisors' CPU time and RSS (with their fork server and its spare) in the
same seconds, every second for 20 s, and reports the cost per supervised plugin. One
Markdown section on stdout; progress on stderr; everything in a temp dir.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PACK04 = REPO / "packs" / "pack04_launcher"
PACK03 = REPO / "packs" / "pack03_os_base"
PASSTHROUGH = PACK04 / "tests" / "passthrough_sandbox"
N_PLUGINS = 50
WINDOW_S = 20
TICK = os.sysconf("SC_CLK_TCK")
IDLE_PLUGIN = "import time\nwhile True:\n    time.sleep(3600)\n"
START_ROUNDS = 40
PAUSE_S = 0.2


def _say(msg: str) -> None:
    print(f"bench_launcher: {msg}", file=sys.stderr, flush=True)


def _cpu_ns(pid: int) -> int | None:
    """CPU time of ``pid`` in ns (schedstat: ns resolution, single-threaded processes)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // TICK  # utime + stime


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kib(pid: int) -> int:
    """Proportional set size: each shared page divided among the processes mapping it.

    The sandbox's per-plugin processes are forks of its fork server and share most of
    their pages with it (copy-on-write), which RSS counts in full in every one of them.
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _write_registry(plugins_dir: Path, n: int) -> None:
    doc: dict[str, object] = {"schema": "aurora-plugin-registry-v1", "plugins": {}}
    plugins: dict[str, object] = {}
    for i in range(n):
        pid = f"bench.idle{i:02d}"
        rel = f"packages/{pid}/1.0.0"
        (plugins_dir / rel).mkdir(parents=True)
        (plugins_dir / rel / "main.py").write_text(IDLE_PLUGIN)
        manifest: dict[str, object] = {"id": pid, "name": pid, "version": "1.0.0"}
        manifest |= {"entrypoint": "main.py", "permissions": []}
        plugins[pid] = {
            "enabled": True,
            "active_version": "1.0.0",
            "granted": [],
            "versions": {"1.0.0": {"path": rel, "manifest": manifest, "digest": None}},
        }
    doc["plugins"] = plugins
    (plugins_dir / "registry.json").write_text(json.dumps(doc))


def _status(run: Path) -> dict[str, object]:
    try:
        doc = json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


@dataclass
class _Run:
    """One launcher service on its own temp registry, and what it supervises."""

    base: Path
    n: int
    svc: subprocess.Popen[bytes]
    started: float
    pids: list[int] = field(default_factory=list)
    startup_s: float = 0.0
    server: int | None = None  # its sandbox fork server, if it runs one
    mode: str = "?"

    def own_pids(self) -> list[int]:
        """The supervisor, its fork server, and the server's processes per plugin (not
        the plugins): its spare, and for each plugin its waiter (the server's child)
        and the PID namespace's init (the waiter's child, the plugin's parent)."""
        if self.server is None:
            return [self.svc.pid]
        plugins = set(self.pids)
        forks = [p for p in _children(self.server) if p not in plugins]
        forks += [c for p in forks for c in _children(p) if c not in plugins]
        return [self.svc.pid, self.server, *forks]


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _start(base: Path, n: int, sandbox_root: Path) -> _Run:
    plugins_dir = base / "plugins"
    plugins_dir.mkdir(parents=True)
    _write_registry(plugins_dir, n)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AURORA_PACK_DATA": str(base / "data"),
        "AURORA_UID_CLAIMS": str(base / "uid-claims"),  # not the host's /var/lib/aurora
        "AURORA_PACK_RUN": str(base / "run"),
        "AURORA_PACK_LOGS": str(base / "logs"),
        "AURORA_PLUGIN_REGISTRY": str(plugins_dir / "registry.json"),
        "AURORA_SANDBOX_ROOT": str(sandbox_root),
    }
    with open(base / "service.log", "ab") as log:
        svc = subprocess.Popen(
            [sys.executable, "-m", "launcher.service"],
            cwd=PACK04,
            env=env,
            stdin=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    return _Run(base, n, svc, time.monotonic())


def _wait_all_running(run: _Run) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        doc = _status(run.base / "run")
        plugins = doc.get("plugins", {})
        assert isinstance(plugins, dict)
        run.pids = [p["pid"] for p in plugins.values() if p.get("state") == "running"]
        if doc and len(run.pids) == run.n:
            run.startup_s = time.monotonic() - run.started
            service = doc.get("service", {})
            mode = service.get("sandbox", {}) if isinstance(service, dict) else {}
            run.server = mode.get("server_pid") if isinstance(mode, dict) else None
            run.mode = str(mode.get("mode", "?")) if isinstance(mode, dict) else "?"
            return
        if run.svc.poll() is not None:
            raise RuntimeError(f"service exited {run.svc.returncode}: see {run.base}/service.log")
        time.sleep(0.1)
    raise RuntimeError(f"only {len(run.pids)} of {run.n} plugins running after 90 s")


def _stop(run: _Run) -> None:
    if run.svc.poll() is not None:
        return
    run.svc.send_signal(signal.SIGTERM)
    try:
        run.svc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(run.svc.pid, signal.SIGKILL)
        run.svc.wait()


@dataclass
class _Samples:
    cpu_ms_per_s: list[float] = field(default_factory=list)  # one per 1 s sample
    cpu_ns_total: int = 0
    rss_kib: list[int] = field(default_factory=list)
    pss_kib: list[int] = field(default_factory=list)


def _sample(runs: list[_Run]) -> tuple[dict[int, _Samples], _Samples, float]:
    """Sample every supervisor and the plugins of the last run, in the same seconds."""
    sups = {r.n: _Samples() for r in runs}
    plugins = _Samples()
    plugin_pids = runs[-1].pids

    def cpu_now() -> tuple[dict[int, int], int]:
        return (
            {r.n: sum(_cpu_ns(p) or 0 for p in r.own_pids()) for r in runs},
            sum(_cpu_ns(p) or 0 for p in plugin_pids),
        )

    prev_sup, prev_plug = cpu_now()
    prev_t = t0 = time.monotonic()
    for _ in range(WINDOW_S):
        time.sleep(1.0)
        now = time.monotonic()
        cur_sup, cur_plug = cpu_now()
        dt = now - prev_t
        for r in runs:
            d = cur_sup[r.n] - prev_sup[r.n]
            sups[r.n].cpu_ms_per_s.append(d / 1e6 / dt)
            sups[r.n].cpu_ns_total += d
            own = r.own_pids()
            sups[r.n].rss_kib.append(sum(_rss_kib(p) for p in own))
            sups[r.n].pss_kib.append(sum(_pss_kib(p) for p in own))
        plugins.cpu_ms_per_s.append((cur_plug - prev_plug) / 1e6 / dt)
        plugins.cpu_ns_total += cur_plug - prev_plug
        plugins.rss_kib.append(sum(_rss_kib(p) for p in plugin_pids))
        plugins.pss_kib.append(sum(_pss_kib(p) for p in plugin_pids))
        prev_sup, prev_plug, prev_t = cur_sup, cur_plug, now
    return sups, plugins, time.monotonic() - t0


# --- start-up through the supervisor ------------------------------------------------


def _supervisor(base: Path, sandbox_root: Path, fork_server: bool) -> Any:
    """An in-process pack04 Supervisor on a registry of one ``pass`` plugin."""
    from launcher.digest import tree_digest
    from launcher.paths import Paths
    from launcher.supervisor import Settings, Supervisor

    plugins_dir = base / "plugins"
    rel = "packages/bench.pass/1.0.0"
    (plugins_dir / rel).mkdir(parents=True)
    (plugins_dir / rel / "main.py").write_text("pass\n")
    manifest = {"id": "bench.pass", "name": "bench.pass", "version": "1.0.0",
                "entrypoint": "main.py", "permissions": []}  # fmt: skip
    version = {"path": rel, "manifest": manifest, "digest": tree_digest(plugins_dir / rel)}
    doc = {
        "schema": "aurora-plugin-registry-v1",
        "plugins": {"bench.pass": {"enabled": True, "active_version": "1.0.0", "granted": [],
                                   "versions": {"1.0.0": version}}},
    }  # fmt: skip
    (plugins_dir / "registry.json").write_text(json.dumps(doc))
    paths = Paths(home=None, root=PACK04, data=base / "data", run=base / "run",
                  logs=base / "logs", registry=plugins_dir / "registry.json",
                  uid_claims=base / "uid-claims")  # fmt: skip
    sup = Supervisor(
        paths,
        Settings(python=sys.executable, fork_server=fork_server),
        {"AURORA_SANDBOX_ROOT": str(sandbox_root)},
    )
    sup.open()
    sup.reconcile()  # reads the registry and makes the plugin's slot (its first start)
    return sup


def _one_start(sup: Any) -> float:
    """Seconds from the supervisor's start of the plugin to its exit, collected."""
    slot = sup.slots["bench.pass"]
    if slot.proc is not None:
        slot.proc.wait(timeout=30)
    sup._collect()  # the previous run: exit recorded, its tree killed (not timed)
    started = time.perf_counter()
    sup._start(slot)
    if slot.proc is None:
        raise RuntimeError(f"bench.pass did not start: {slot.state}: {slot.reason}")
    rc = slot.proc.wait(timeout=30)
    took = time.perf_counter() - started
    if rc != 0:
        raise RuntimeError(f"bench.pass exited {rc}: see {sup.paths.plugin_log('bench.pass')}")
    return took


def _start_latency(tmp: Path, sandbox_root: Path) -> tuple[dict[str, list[float]], str]:
    """Interleaved rounds: bare interpreter, supervisor via fork server, via one-shot."""
    sys.path.insert(0, str(PACK04))
    served = _supervisor(tmp / "served", sandbox_root, fork_server=True)
    oneshot = _supervisor(tmp / "oneshot", sandbox_root, fork_server=False)
    server_mode = served.sandbox_mode()
    main_py = tmp / "served" / "plugins" / "packages" / "bench.pass" / "1.0.0" / "main.py"
    bare = [sys.executable, "-I", str(main_py)]
    times: dict[str, list[float]] = {"bare": [], "server": [], "one-shot": []}
    try:
        for _ in range(3):  # warm-up: caches, spares, bytecode
            subprocess.run(bare, check=True)
            _one_start(served)
            _one_start(oneshot)
        for _ in range(START_ROUNDS):
            # Starts spaced as a supervisor's are (back-off >= 1 s): the server has
            # replaced its spare (it does so once idle 0.1 s after a hand-over).
            time.sleep(PAUSE_S)
            started = time.perf_counter()
            subprocess.run(bare, check=True)
            times["bare"].append(time.perf_counter() - started)
            times["server"].append(_one_start(served))
            times["one-shot"].append(_one_start(oneshot))
    finally:
        for sup in (served, oneshot):
            sup.reconcile()
            sup.close()
    note = str(server_mode["mode"])
    if server_mode.get("error"):
        note += f" ({server_mode['error']})"
    return times, note


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a (baseline 0)"


def main() -> int:
    real = (PACK03 / "sandbox" / "launch.py").is_file()
    sandbox_root = PACK03 if real else PASSTHROUGH
    _say(f"sandbox: {'pack03 (real)' if real else 'TEST-ONLY passthrough (pack03 absent)'}")
    with tempfile.TemporaryDirectory(prefix="bench-launcher-") as tmp:
        _say(f"plugin start-up through the supervisor: {START_ROUNDS} interleaved rounds")
        latency, server_note = _start_latency(Path(tmp) / "latency", sandbox_root)
        runs: list[_Run] = []
        try:
            for n in (0, N_PLUGINS):
                _say(f"starting a supervisor with {n} idle plugin(s)")
                runs.append(_start(Path(tmp) / f"n{n}", n, sandbox_root))
            for run in runs:
                _wait_all_running(run)
                _say(f"{run.n} plugin(s) running after {run.startup_s:.1f}s")
            time.sleep(3.0)  # let start-up settle (a status write is due every 2 s)
            _say(f"sampling both supervisors side by side for {WINDOW_S}s")
            sups, plugins, window = _sample(runs)
        finally:
            for run in runs:
                _stop(run)
    print(_report(real, sups, plugins, window, runs, latency, server_note))
    return 0


def _latency_table(latency: dict[str, list[float]], server_note: str) -> list[str]:
    med = {k: statistics.median(v) * 1000 for k, v in latency.items()}
    names = {
        "bare": "bare `python -I main.py` (baseline)",
        "server": f"supervisor, pack03 fork server (mode: {server_note})",
        "one-shot": "supervisor, one-shot `python -I -S launch.py --policy`",
    }
    rows = [
        f"| {names[k]} | {med[k]:.1f} | {min(v) * 1000:.1f} | {_ratio(med[k], med['bare'])} |"
        for k, v in latency.items()
    ]
    return [
        "### Plugin start-up through the supervisor",
        "",
        f"A plugin whose `main.py` is `pass`, {START_ROUNDS} interleaved rounds (after 3 "
        f"warm-up rounds), {PAUSE_S:g} s apart: from the supervisor's start of the plugin "
        "(`Supervisor._start`: package digest checked, log opened, sandbox asked, policy "
        "and report written) to its exit status in the supervisor's hands, against the "
        "bare interpreter running the same file. Every layer and limit of pack03 applies "
        "in both supervisor rows. The fork server row is the supervisor's whole path; "
        "`bench_sandbox.py` times the server's protocol alone.",
        "",
        "| how | median ms | min ms | ratio to bare (median) |",
        "|---|---:|---:|---:|",
        *rows,
        "",
    ]


def _report(
    real: bool,
    sups: dict[int, _Samples],
    plugins: _Samples,
    window: float,
    runs: list[_Run],
    latency: dict[str, list[float]],
    server_note: str,
) -> str:
    startup_s = runs[-1].startup_s
    base, full = sups[0], sups[N_PLUGINS]
    mean = {n: s.cpu_ns_total / 1e6 / window for n, s in sups.items()}  # CPU ms per s
    rss = {n: statistics.median(s.rss_kib) / 1024 for n, s in sups.items()}  # MiB
    pss = {n: statistics.median(s.pss_kib) / 1024 for n, s in sups.items()}  # MiB
    per_plugin_cpu_us = (mean[N_PLUGINS] - mean[0]) * 1000 / N_PLUGINS
    per_plugin_rss_kib = (rss[N_PLUGINS] - rss[0]) * 1024 / N_PLUGINS
    per_plugin_pss_kib = (pss[N_PLUGINS] - pss[0]) * 1024 / N_PLUGINS
    plug_rss_each = statistics.median(plugins.rss_kib) / N_PLUGINS
    plug_pss_each = statistics.median(plugins.pss_kib) / N_PLUGINS
    med_full, med_base = statistics.median(full.cpu_ms_per_s), statistics.median(base.cpu_ms_per_s)
    sandbox_name = "pack03 sandbox" if real else "TEST-ONLY passthrough sandbox (pack03 absent)"

    def row(name: str, s: _Samples, n: int) -> str:
        return (
            f"| {name} | {statistics.median(s.cpu_ms_per_s):.3f} | {mean[n]:.3f} | "
            f"{100 * mean[n] / 1000:.3f} | {rss[n]:.1f} | {pss[n]:.1f} |"
        )

    out = [
        f"## Launcher: plugin start-up, and supervisor cost with {N_PLUGINS} idle plugins",
        "",
        *_latency_table(latency, server_note),
        f"### Supervisor cost with {N_PLUGINS} idle plugins",
        "",
        "Two `python -m launcher.service` processes (default settings: registry poll 1 s, "
        "heartbeat 2 s) run side by side in the same seconds: the baseline supervises "
        f"no plugin, the other {N_PLUGINS} idle Python plugins (`time.sleep` loop) run in "
        f"the {sandbox_name}. Once all run and 3 s have passed, the CPU time "
        f"(`/proc/<pid>/schedstat`, ns), RSS and PSS of each supervisor (its own process, "
        "plus its sandbox fork server, the server's spare and, per plugin, the sandbox's "
        f"waiter and PID-namespace init: mode `{runs[-1].mode}`) are sampled every second "
        f"for {WINDOW_S} s. RSS counts every page a process maps in full; the waiter and "
        "init are forks of the fork server and share most of their pages with it "
        "(copy-on-write), so PSS (`/proc/<pid>/smaps_rollup`: each shared page divided "
        "among the processes that map it) is the honest share.",
        "",
        "| supervisor | CPU ms per s (median of 1 s samples) | CPU ms per s (window mean) "
        "| % of one core (mean) | RSS MiB (median) | PSS MiB (median) |",
        "|---|---:|---:|---:|---:|---:|",
        row("baseline: 0 plugins", base, 0),
        row(f"{N_PLUGINS} idle plugins", full, N_PLUGINS),
        f"| ratio {N_PLUGINS} / 0 | {_ratio(med_full, med_base)} | "
        f"{_ratio(mean[N_PLUGINS], mean[0])} | | {_ratio(rss[N_PLUGINS], rss[0])} | "
        f"{_ratio(pss[N_PLUGINS], pss[0])} |",
        "",
        f"- **Per supervised plugin** ({N_PLUGINS} plugins minus 0, divided by {N_PLUGINS}): "
        f"{per_plugin_cpu_us:.1f} µs of supervisor CPU per second "
        f"({per_plugin_cpu_us / 1e4:.4f} % of one core), {per_plugin_pss_kib:.0f} KiB of "
        f"supervisor PSS ({per_plugin_rss_kib:.0f} KiB RSS, shared pages counted in full).",
        f"- For scale, each idle plugin itself holds {plug_rss_each / 1024:.1f} MiB RSS "
        f"({plug_pss_each / 1024:.1f} MiB PSS, median) and used "
        f"{plugins.cpu_ns_total / 1e6 / window / N_PLUGINS * 1000:.1f} µs "
        "CPU per second: in memory, the plugins, not their supervisor, are what an idle "
        "fleet costs.",
        f"- Time from service start to all {N_PLUGINS} plugins running: {startup_s:.1f} s.",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
