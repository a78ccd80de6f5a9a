"""`make demo`: install the packs on a throw-away AURORA_HOME and run plugins end to end."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "installer" / "aurora_installer.py"
AURORA = REPO / "aurora"  # the operator's one command
EXAMPLES = REPO / "examples" / "plugins"
PACK05 = "pack05_plugin_api"
PACK04 = "pack04_launcher"
PACK03 = "pack03_os_base"

# Exit statuses the demo expects besides 0 (the one table, README "Exit codes").
INSTALLER_APPROVAL = 6  # approval required, no terminal and no --approve
PLUGINS_DENIED = 4  # refused: a requested capability is not granted

# Bounds: one command (install and start poll health within it); one wait for a state.
STEP_TIMEOUT = 90.0
WAIT_TIMEOUT = 20.0
POLL = 0.25

T = TypeVar("T")


class DemoFailed(Exception):
    """A step did not give the exit status or reach the state it should."""


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat, or None when the pid is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _same_process(pid: int, start_time: int) -> bool:
    """Is ``pid`` still the process that started at ``start_time``?"""
    return _start_time(pid) == start_time


def processes_of(home: Path) -> dict[int, str]:
    """Live processes (pid -> command line) that carry ``home`` in their environment or
    command line: the services (AURORA_HOME) and the sandboxed plugins (their data
    directory and package path, since the sandbox clears AURORA_HOME)."""
    needle = str(home).encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if _start_time(int(entry.name)) is None:
            continue
        if needle in environ or needle in cmdline:
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def _write_json_atomic(path: Path, doc: Any) -> None:
    """The plugin reads its config at every round: it must never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as fh:
            json.dump(doc, fh)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_json(path: Path) -> Any:
    """The document, or None while it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _listener() -> Iterator[int]:
    """A TCP listener on 127.0.0.1 (a free port) that accepts and closes connections."""
    stop = threading.Event()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(POLL)

    def _serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = sock.accept()
                conn.close()

    thread = threading.Thread(target=_serve, name="demo-listener", daemon=True)
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()


class Demo:
    """Runs each step as a real command on one throw-away home and checks its exit status."""

    def __init__(self, home: Path) -> None:
        self.home = home
        # Only the throw-away home: no AURORA_PACK_*, registry or sandbox override inherited.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("AURORA_")}
        # Plugin uids are claimed host-wide (pack04 README "Plugin identity"): the demo's
        # claims go with its home, not into the host's /var/lib/aurora.
        self.env = {**inherited, "AURORA_HOME": str(home),
                    "AURORA_UID_CLAIMS": str(home / "uid-claims")}  # fmt: skip
        self.started: list[str] = []  # packs started by the demo and not stopped yet
        self.version: dict[str, str] = {}
        self.t0 = time.monotonic()

    # -- paths of the installed packs (docs/contracts.md, the packs' READMEs) -------------

    def installed(self, pack: str) -> Path:
        return self.home / "packs" / pack / self.version[pack]

    def plugin_data(self, plugin: str) -> Path:
        return self.home / "data" / PACK04 / "plugin-data" / plugin

    @property
    def plugins_dir(self) -> Path:
        return self.home / "data" / PACK05 / "plugins"

    # -- output -------------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def section(self, title: str) -> None:
        self.say(f"== {title} [{time.monotonic() - self.t0:.1f} s]")

    def shown(self, argv: Sequence[str], extra: Mapping[str, str]) -> str:
        """The command line as a person would type it, the home spelled $AURORA_HOME."""
        words = [*(f"{k}={v}" for k, v in extra.items()), *argv]
        line = shlex.join(words).replace(str(self.home), "$AURORA_HOME")
        line = line.replace(f"{sys.executable} {AURORA} ", "./aurora ")
        return line.replace(f"{REPO}/", "")  # commands run from the repository root

    # -- commands -----------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        expected: int = 0,
        *,
        extra: Mapping[str, str] | None = None,
        note: str = "",
        quiet: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run one command, show it and its output, fail unless it exits ``expected``."""
        extra = dict(extra or {})
        if not quiet:
            self.say(f"$ {self.shown(argv, extra)}")
        started = time.monotonic()
        try:
            proc = subprocess.run(
                list(argv),
                env={**self.env, **extra},
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                check=False,
                timeout=STEP_TIMEOUT,
            )
        except subprocess.TimeoutExpired as exc:
            raise DemoFailed(
                f"{self.shown(argv, extra)}: no exit within {STEP_TIMEOUT:.0f} s"
            ) from exc
        took = time.monotonic() - started
        if not quiet:
            for line in proc.stdout.splitlines():
                self.say(f"  {line}")
            extra_note = f" ({note})" if note and proc.returncode == expected else ""
            self.say(f"-> exit {proc.returncode}{extra_note} [{took:.1f} s]\n")
        if proc.returncode != expected:
            if quiet:
                self.say(f"$ {self.shown(argv, extra)}\n{proc.stdout}")
            raise DemoFailed(
                f"{self.shown(argv, extra)}: exit {proc.returncode}, expected {expected}"
            )
        return proc

    def aurora(self, *args: str, expected: int = 0, quiet: bool = False, note: str = "") -> str:
        """``aurora ARGS`` on the demo's home (AURORA_HOME)."""
        argv = [sys.executable, str(AURORA), *args]
        return self.run(argv, expected, note=note, quiet=quiet).stdout

    def installer(self, *args: str, expected: int = 0, note: str = "") -> None:
        """``aurora pack``: the installer."""
        self.aurora("pack", *args, expected=expected, note=note)
        if args[0] == "start" and expected == 0:
            self.started.append(args[args.index("--pack") + 1])
        elif args[0] == "stop" and expected == 0:
            self.started.remove(args[args.index("--pack") + 1])

    def plugins(self, *args: str, expected: int = 0, note: str = "") -> None:
        """``aurora plugin``: pack05's installed CLI, on the registry pack04 reads."""
        self.aurora("plugin", *args, expected=expected, note=note)

    def launcher(self, *args: str, quiet: bool = False) -> str:
        """``aurora launcher``: pack04's installed CLI."""
        return self.aurora("launcher", *args, quiet=quiet)

    def launcher_view(self) -> dict[str, Any]:
        """``aurora launcher list --json``: the plugins pack04 supervises."""
        doc = json.loads(self.launcher("list", "--json", quiet=True))
        plugins: dict[str, Any] = doc["result"]["plugins"]
        return plugins

    def wait_for(self, what: str, probe: Callable[[], T | None]) -> T:
        """Poll ``probe`` until it gives a value, at most WAIT_TIMEOUT seconds."""
        self.say(f"... waiting (up to {WAIT_TIMEOUT:g} s) until {what}")
        started = time.monotonic()
        deadline = started + WAIT_TIMEOUT
        while True:
            value = probe()
            if value is not None:
                self.say(f"    after {time.monotonic() - started:.1f} s: {what}")
                return value
            if time.monotonic() > deadline:
                raise DemoFailed(f"not within {WAIT_TIMEOUT:g} s: {what}")
            time.sleep(POLL)

    def wait_running(self, plugin: str) -> dict[str, Any]:
        # The layers come from pack03's report of the run, read by pack04 a pass later.
        def probe() -> dict[str, Any] | None:
            entry: dict[str, Any] | None = self.launcher_view().get(plugin)
            running = entry is not None and entry.get("state") == "running"
            return entry if running and entry and entry.get("layers") else None

        what = f"`aurora launcher list --json` shows {plugin} running, with its sandbox layers"
        try:
            entry = self.wait_for(what, probe)
        except DemoFailed as exc:
            last = self.launcher_view().get(plugin) or {}
            seen = f"state {last.get('state')!r}, reason {last.get('reason')!r}"
            raise DemoFailed(f"{exc} (last seen: {seen})") from exc
        granted = ", ".join(entry["granted"]) or "nothing"
        self.say(f"{plugin}: running (pid {entry['pid']}, granted: {granted})")
        return entry

    # -- the steps ----------------------------------------------------------------------

    def install(self) -> None:
        self.section("the installer: list, validate, stage, dry-run, install")
        self.installer("list")
        self.installer("validate", "--pack", PACK05)
        self.installer("stage", "--pack", PACK05)
        self.installer("dry-run", "--pack", PACK05)
        self.installer(
            "install",
            "--pack",
            PACK05,
            "--with-deps",
            expected=INSTALLER_APPROVAL,
            note="as expected: refused without --approve",
        )
        self.installer("install", "--pack", PACK05, "--with-deps", "--approve")
        self.installer("status")
        self.installer("verify", "--pack", PACK05)
        state = json.loads((self.home / "state.json").read_text())
        for pack in (PACK03, PACK04, PACK05):
            version = state["packs"][pack]["active_version"]
            if not isinstance(version, str):
                raise DemoFailed(f"{pack}: not installed after install --with-deps")
            self.version[pack] = version

    def start_services(self) -> None:
        self.section("start the loader service (pack05) and the launcher (pack04)")
        self.installer("start", "--pack", PACK05)
        self.installer("start", "--pack", PACK04)
        self.installer("status", "--pack", PACK04)

    def drop_in_inbox(self, plugin: str) -> None:
        """Stage by dropping: build under a dot name (ignored), then rename it in."""
        inbox = self.plugins_dir / "inbox"
        hidden, final = inbox / f".{plugin}.partial", inbox / plugin
        self.say(f"$ {self.shown(['cp', '-r', str(EXAMPLES / plugin), str(hidden)], {})}")
        shutil.copytree(EXAMPLES / plugin, hidden)
        self.say(f"$ {self.shown(['mv', str(hidden), str(final)], {})}")
        os.rename(hidden, final)
        self.say()

        def staged() -> bool | None:
            registry = _read_json(self.plugins_dir / "registry.json") or {}
            return True if plugin in registry.get("plugins", {}) else None

        self.wait_for(f"pack05's loader service has staged {plugin} from its inbox", staged)
        self.plugins("list")

    def portwatch(self, port: int) -> None:
        plugin = "acme.portwatch"
        self.section(f"{plugin}: asks for network; stage, grant, enable, watch a port")
        self.drop_in_inbox(plugin)
        self.plugins(
            "enable",
            plugin,
            expected=PLUGINS_DENIED,
            note="as expected: refused before the operator grants network",
        )
        self.plugins("grant", plugin, "network")
        self.plugins("enable", plugin)
        self.wait_running(plugin)

        self.say(f"(the demo listens on 127.0.0.1:{port})")
        config = self.plugin_data(plugin) / "ports.json"
        doc = {"ports": [port], "interval": 1}
        self.say(f"$ echo {shlex.quote(json.dumps(doc))} > {self.shown([str(config)], {})}")
        _write_json_atomic(config, doc)
        self.say()

        status_file = self.plugin_data(plugin) / "status.json"

        def reachable() -> dict[str, Any] | None:
            status = _read_json(status_file) or {}
            for result in status.get("ports", []):
                if result.get("port") == port and result.get("reachable") is True:
                    return dict(result)
            return None

        self.wait_for(f"{self.shown([str(status_file)], {})} shows port {port}", reachable)
        result = reachable() or {}
        self.say(f"{plugin}: 127.0.0.1:{port} reachable (connect took {result.get('ms')} ms)\n")
        self.show_layers(plugin)
        self.launcher("logs", plugin, "-n", "5")

    def show_layers(self, plugin: str) -> None:
        """What confines the plugin: pack04's list, and pack03's report of this run."""
        entry = self.launcher_view()[plugin]
        self.say(f"{plugin}: active sandbox layers: {', '.join(entry['layers'])}")
        report = _read_json(self.home / "run" / PACK04 / "plugins" / plugin / "report.json")
        layers = report.get("layers", {}) if isinstance(report, dict) else {}
        for name, layer in sorted(layers.items()):
            mark = "on " if layer.get("active") else "off"
            self.say(f"  [{mark}] {name}: {layer.get('detail')}")
        self.say()

    def heartbeat(self) -> dict[str, Any]:
        plugin = "acme.heartbeat"
        self.section(f"{plugin}: asks for nothing; stage with `aurora plugin`, enable")
        self.plugins("stage", str(EXAMPLES / plugin))
        self.plugins("enable", plugin)
        entry = self.wait_running(plugin)
        status_file = self.plugin_data(plugin) / "status.json"

        def beating() -> int | None:
            status = _read_json(status_file) or {}
            beats = status.get("beats")
            return beats if isinstance(beats, int) and beats >= 1 else None

        beats = self.wait_for(f"{plugin} has written its status.json", beating)
        self.say(f"{plugin}: beat {beats} written by pid {entry['pid']}\n")
        self.launcher("list")
        self.aurora("status")
        return entry

    def greeter(self) -> None:
        """A plugin of the Plugin API: started by its first call, answers through the
        launcher, checked against its manifest's schemas."""
        plugin = "acme.greeter"
        self.section(f"{plugin}: an on-call plugin built on the SDK; call its function")
        self.plugins("stage", str(EXAMPLES / plugin))
        self.plugins("enable", plugin)
        out = self.aurora("plugin", "call", plugin, "greet", "--args", '{"name": "demo"}',
                          "--timeout", "20")  # fmt: skip
        if "Hello, demo!" not in out:
            raise DemoFailed(f"{plugin} greet answered {out!r}, not the greeting")
        note = "arguments that break the manifest's schema never reach the plugin"
        self.aurora("plugin", "call", plugin, "greet", "--args", '{"name": ""}', expected=2,
                    note=note)  # fmt: skip
        self.launcher("list")
        self.launcher("logs", plugin)

    def disable(self, entry: dict[str, Any]) -> None:
        plugin = "acme.heartbeat"
        self.section(f"disable {plugin}: the launcher stops it")
        self.plugins("disable", plugin)
        pid, start = int(entry["pid"]), int(entry["pid_start_time"])

        def stopped() -> str | None:
            state = self.launcher_view().get(plugin, {}).get("state")
            if state in ("running", "stopping") or _same_process(pid, start):
                return None
            return str(state)

        state = self.wait_for(f"{plugin} is no longer running and pid {pid} is gone", stopped)
        self.say(f"{plugin}: {state}, pid {pid} gone\n")
        self.launcher("list")

    def stop_services(self, port_entry: dict[str, Any]) -> None:
        self.section("stop the launcher and the loader service")
        self.installer("stop", "--pack", PACK04)
        pid, start = int(port_entry["pid"]), int(port_entry["pid_start_time"])
        if _same_process(pid, start):
            raise DemoFailed(f"acme.portwatch (pid {pid}) still runs after the launcher stopped")
        self.say(f"acme.portwatch: pid {pid} gone with the launcher\n")
        self.installer("stop", "--pack", PACK05)

    def uninstall(self) -> None:
        self.section("uninstall everything (dependents first)")
        for pack in (PACK05, PACK04, PACK03):
            self.installer("uninstall", "--pack", pack)
        self.installer("status")

    def check_nothing_left(self) -> None:
        deadline = time.monotonic() + 5  # what was just stopped may still be exiting
        while (left := processes_of(self.home)) and time.monotonic() < deadline:
            time.sleep(POLL)
        if left:
            listing = "; ".join(f"{pid}: {cmd}" for pid, cmd in sorted(left.items()))
            raise DemoFailed(f"processes of the demo still running: {listing}")
        self.say("no process of the demo is left (none carries $AURORA_HOME)")

    def main_job(self) -> None:
        self.install()
        self.start_services()
        with _listener() as port:
            self.portwatch(port)
            port_entry = self.launcher_view()["acme.portwatch"]
            beat_entry = self.heartbeat()
            self.greeter()
            self.disable(beat_entry)
            self.stop_services(port_entry)
        self.uninstall()
        self.check_nothing_left()

    # -- failure and clean-up -----------------------------------------------------------

    def dump_logs(self) -> None:
        """The logs that say why: the services', the plugins', pack05's quarantine reasons
        (the installer already printed the output of every lifecycle script it ran)."""
        logs = [
            self.home / "logs" / PACK05 / "service.log",
            self.home / "logs" / PACK04 / "launcher.log",
            *sorted((self.home / "logs" / PACK04 / "plugins").glob("*.log")),
        ]
        reasons = sorted((self.plugins_dir / "quarantine").glob("*.reason.json"))
        for path in [*logs, *reasons]:
            try:
                lines = path.read_text(errors="replace").splitlines()[-30:]
            except OSError:
                continue
            print(f"--- {path} (last {len(lines)} lines)", file=sys.stderr)
            for line in lines:
                print(f"  {line}", file=sys.stderr)
        sys.stderr.flush()

    def clean_up(self) -> None:
        """Stop what the demo started; as a last resort kill what still carries its home."""
        for pack in reversed(self.started):
            argv = [sys.executable, str(CLI), "stop", "--pack", pack]
            print(f"clean-up: $ {self.shown(argv, {})}", file=sys.stderr)
            try:
                proc = subprocess.run(
                    argv,
                    env=self.env,
                    cwd=REPO,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    check=False,
                    timeout=STEP_TIMEOUT,
                )
            except subprocess.TimeoutExpired:
                print(f"  no exit within {STEP_TIMEOUT:.0f} s", file=sys.stderr)
                continue
            for line in proc.stdout.splitlines():
                print(f"  {line}", file=sys.stderr)
            print(f"-> exit {proc.returncode}", file=sys.stderr)
        self.started.clear()
        time.sleep(0.5)
        for pid in processes_of(self.home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                print(f"killed leftover pid {pid}", file=sys.stderr)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the temporary AURORA_HOME")
    args = parser.parse_args(argv)
    # A SIGTERM (a test's timeout, a CI job cancelled) cleans up like Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    home = Path(tempfile.mkdtemp(prefix="aurora-demo-")).resolve()
    demo = Demo(home)
    demo.say(f"export AURORA_HOME={home}  # throw-away")
    demo.say(f"export AURORA_UID_CLAIMS={home}/uid-claims  # throw-away too\n")
    failure: str | None = None
    try:
        demo.main_job()
    except DemoFailed as exc:
        failure = str(exc)
    except KeyboardInterrupt:
        failure = "interrupted"
    except Exception as exc:  # a bug of the demo or an unexpected document: logs, then clean up
        traceback.print_exc()
        failure = f"unexpected {type(exc).__name__}: {exc}"
    finally:
        if failure is not None:
            print(f"demo failing: {failure}; the logs follow", file=sys.stderr)
            demo.dump_logs()
        demo.clean_up()
        if args.keep:
            demo.say(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
    took = time.monotonic() - demo.t0
    if failure is not None:
        print(f"demo FAILED after {took:.1f} s: {failure}", file=sys.stderr)
        return 130 if failure == "interrupted" else 1
    demo.say(f"demo passed in {took:.1f} s: every step gave the exit status it should")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
