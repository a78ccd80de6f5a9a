"""`aurora`, the operator's one command, as real processes against a throw-away home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
AURORA = REPO / "aurora"
PLUGINS = REPO / "examples" / "plugins"


def aurora(
    *argv: str, env: dict[str, str] | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AURORA_")}
    base["AURORA_UID_CLAIMS"] = os.environ["AURORA_UID_CLAIMS"]  # conftest: never /var/lib
    return subprocess.run(
        [sys.executable, str(AURORA), *argv],
        env={**base, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def envelope(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(proc.stdout)  # exactly one JSON document on stdout
    assert {"ok", "exit", "command", "result", "error"} <= set(doc)
    assert doc["exit"] == proc.returncode, proc.stderr
    return doc


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A home with pack05 and pack04 (and pack03) installed through `aurora pack`."""
    root = tmp_path_factory.mktemp("front-door") / "home"
    for pack in ("pack05_plugin_api", "pack04_launcher"):
        proc = aurora(
            "--home", str(root), "pack", "install", "--pack", pack, "--with-deps", "--approve"
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    yield root
    for pack in ("pack04_launcher", "pack05_plugin_api"):
        aurora("--home", str(root), "pack", "stop", "--pack", pack)


def test_a_pack_not_installed_is_exit_3_naming_the_command_to_run(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    proc = aurora("--home", str(empty), "plugin", "list", "--json")
    assert proc.returncode == 3
    doc = envelope(proc)
    assert "pack05_plugin_api is not installed" in doc["error"]["message"]
    assert f"aurora --home {empty} pack install --pack pack05_plugin_api" in proc.stderr
    assert proc.stderr.startswith("aurora: error: ")
    assert not empty.exists()  # asking wrote nothing
    assert aurora("--home", str(empty), "launcher", "--help").returncode == 0  # help works


def _snapshot(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def test_plugin_verbs_reach_the_installed_pack_data(home: Path) -> None:
    source = REPO / "packs" / "pack05_plugin_api" / "data" / "plugins" / "registry.json"
    before = _snapshot(source)
    proc = aurora("--home", str(home), "plugin", "stage", str(PLUGINS / "acme.heartbeat"))
    assert proc.returncode == 0, proc.stderr
    registry = home / "data" / "pack05_plugin_api" / "plugins" / "registry.json"
    assert "acme.heartbeat" in json.loads(registry.read_text())["plugins"]
    # nothing went into the source tree or the installed copy
    assert _snapshot(source) == before
    assert not (home / "packs" / "pack05_plugin_api" / "0.1.0" / "data").exists()


def test_the_home_rule_is_home_then_aurora_home(home: Path, tmp_path: Path) -> None:
    other = {"AURORA_HOME": str(tmp_path / "elsewhere")}
    listed = envelope(aurora("--json", "pack", "list", env={"AURORA_HOME": str(home)}))
    assert {r["id"]: r["installed"] for r in listed["result"]}["pack05_plugin_api"] == "0.1.0"
    beaten = envelope(aurora("pack", "list", "--json", "--home", str(home), env=other))
    assert beaten["result"] == listed["result"]
    assert aurora("plugin", "list", env=other).returncode == 3


def test_status_shows_packs_plugins_grants_and_the_launcher(home: Path) -> None:
    aurora("--home", str(home), "plugin", "stage", str(PLUGINS / "acme.portwatch"))
    doc = envelope(aurora("status", "--json", "--home", str(home)))
    result = doc["result"]
    assert {p["pack"]: p["active_version"] for p in result["packs"]} == {
        "pack01_common": "0.1.0",
        "pack03_os_base": "0.1.0",
        "pack04_launcher": "0.1.0",
        "pack05_plugin_api": "0.1.0",
    }
    rows = {p["id"]: p for p in result["plugins"]["result"]["plugins"]}
    assert (
        rows["acme.portwatch"]["missing"] == ["network"] and not rows["acme.portwatch"]["enabled"]
    )
    assert result["launcher"]["exit"] == 7  # the service is not running
    text = aurora("status", "--home", str(home))
    assert text.returncode == 0, text.stderr
    assert "acme.portwatch" in text.stdout and "missing=network" in text.stdout
    assert "launcher (pack04_launcher 0.1.0): service not running" in text.stdout


def test_launcher_exit_codes_pass_through(home: Path) -> None:
    proc = aurora("launcher", "list", "--home", str(home))
    assert proc.returncode == 7 and "launcher service is not running" in proc.stderr
    proc = aurora("launcher", "logs", "acme.nope", "--json", "--home", str(home))
    assert proc.returncode == 3 and envelope(proc)["command"] == "logs"
    # the one error line, naming the program as the operator typed it
    assert proc.stderr.startswith("aurora launcher: error: acme.nope: no log at ")
    shown = aurora("--home", str(home), "plugin", "show", "acme.nope")
    assert (shown.returncode, shown.stderr) == (
        3,
        "aurora plugin: error: unknown plugin: acme.nope\n",
    )


def test_a_closed_stdout_ends_quietly(home: Path) -> None:
    for argv in (["plugin", "list", "--json"], ["pack", "status"], ["status", "--json"]):
        shown = " ".join([sys.executable, str(AURORA), "--home", str(home), *argv])
        proc = subprocess.run(
            f"{shown} | true; exit ${{PIPESTATUS[0]}}",
            shell=True,
            executable="/bin/bash",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (proc.returncode, proc.stderr) == (0, ""), argv


def test_usage_errors_are_one_line_and_exit_2() -> None:
    proc = aurora("bogus", "--json")
    assert proc.returncode == 2 and envelope(proc)["error"]["message"].startswith("unknown command")
    assert proc.stderr.strip().endswith("(known: pack, plugin, launcher, status, completion)")
    assert aurora().returncode == 2
    assert aurora("--help").returncode == 0


def test_bash_completion_completes_groups_and_verbs(tmp_path: Path) -> None:
    script = tmp_path / "aurora.bash"
    proc = aurora("completion", "bash")
    assert proc.returncode == 0
    script.write_text(proc.stdout)

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        probe = (
            f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _aurora; "
            'printf "%s\\n" "${COMPREPLY[@]}"'
        )
        out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
        return out.stdout.split()

    assert complete("aurora", "pl") == ["plugin"]
    assert complete("aurora", "pack", "st") == ["stage", "status", "start", "stop"]
    assert complete("aurora", "--home", "/tmp", "launcher", "l") == ["list", "logs", "limits"]
    assert "grant" in complete("aurora", "plugin", "")
    assert aurora("completion", "zsh").stdout.startswith("#compdef aurora")


def test_status_shows_what_the_launcher_runs(home: Path) -> None:
    """With both services up: each plugin row carries the launcher's state and pid."""
    h = ["--home", str(home)]
    try:
        for pack in ("pack05_plugin_api", "pack04_launcher"):
            started = aurora(*h, "pack", "start", "--pack", pack)
            assert started.returncode == 0, started.stdout + started.stderr
        assert aurora(*h, "plugin", "stage", str(PLUGINS / "acme.heartbeat")).returncode == 0
        assert aurora(*h, "plugin", "enable", "acme.heartbeat").returncode == 0
        waited = aurora(*h, "launcher", "start", "acme.heartbeat", "--wait", "30")
        assert waited.returncode == 0, waited.stderr
        result = envelope(aurora(*h, "status", "--json"))["result"]
        row = next(p for p in result["plugins"]["result"]["plugins"] if p["id"] == "acme.heartbeat")
        assert row["enabled"] and row["launcher_state"] == "running"
        assert Path(f"/proc/{row['launcher_pid']}").is_dir()  # a live process, as reported
        assert result["launcher"]["result"]["service"]["running"] is True
        text = aurora(*h, "status").stdout
        assert f"launcher: running (pid {row['launcher_pid']})" in text
        # adv8 F6: `disable` returns once the launcher has stopped the plugin's processes
        disabled = aurora(*h, "plugin", "disable", "acme.heartbeat")
        assert disabled.returncode == 0, disabled.stderr
        assert not _alive(row["launcher_pid"]), "disable returned while the plugin ran"
        listed = envelope(aurora(*h, "launcher", "list", "--json"))["result"]["plugins"]
        assert listed["acme.heartbeat"]["state"] == "disabled"
    finally:
        aurora(*h, "plugin", "disable", "acme.heartbeat")
        for pack in ("pack04_launcher", "pack05_plugin_api"):
            aurora(*h, "pack", "stop", "--pack", pack)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_the_console_script_entry_point_works_without_the_wrapper(tmp_path: Path) -> None:
    # What `pip install -e .` installs: `aurora_cli.main:run` with only the checkout on
    # sys.path (no ./aurora to put pack01_common there first).
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); "
        "from aurora_cli.main import run; sys.argv = ['aurora', '--help']; raise SystemExit(run())"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: aurora")


def test_a_broken_installation_is_one_clear_line_never_a_traceback(tmp_path: Path) -> None:
    """adv9 F14: pack01_common removed with --force under an installed pack05/pack04, or a
    module of the installed copy that raises: each command says what is wrong, no traceback,
    and `status` does not claim that no plugin is staged when it cannot know."""
    root = tmp_path / "home"
    proc = aurora("--home", str(root), "pack", "install", "--pack", "pack04_launcher",
                  "--with-deps", "--approve")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert aurora("--home", str(root), "pack", "install", "--pack", "pack05_plugin_api",
                  "--approve").returncode == 0  # fmt: skip
    forced = aurora("--home", str(root), "pack", "uninstall", "--pack", "pack01_common", "--force")
    assert forced.returncode == 0, forced.stderr
    for argv, prog in ((["plugin", "list"], "aurora plugin"),
                       (["launcher", "list"], "aurora launcher")):  # fmt: skip
        proc = aurora("--home", str(root), *argv)
        assert proc.returncode == 3, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr + proc.stdout
        assert proc.stderr.startswith(f"{prog}: error: pack01_common is not installed"), proc.stderr
        assert "aurora pack install --pack pack01_common" in proc.stderr
    status = aurora("--home", str(root), "status")
    assert "Traceback" not in status.stderr + status.stdout
    assert "none staged" not in status.stdout and "  unknown" in status.stdout, status.stdout
    # a module of the installed copy that raises: one line naming the file, exit 1
    assert aurora("--home", str(root), "pack", "install", "--pack", "pack01_common",
                  "--approve").returncode == 0  # fmt: skip
    (cli,) = (root / "packs" / "pack05_plugin_api").glob("*/core/capabilities.py")
    cli.write_text(cli.read_text() + "\nraise RuntimeError('damaged copy')\n")
    proc = aurora("--home", str(root), "plugin", "list")
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.returncode in (1, 3), proc.stderr
    assert "damaged copy" in proc.stderr and proc.stderr.startswith("aurora plugin: error:")
