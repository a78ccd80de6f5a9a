"""Per-plugin limits: the operator's settings, stored, audited, applied at the next start."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable

import pytest
from launcher import cli, limits, status
from launcher.errors import ConfigError
from launcher.paths import Paths
from launcher.supervisor import Supervisor
from launcher_testing import FakeRegistry, run_until, run_until_state


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2GiB", 2 << 30), ("512MiB", 512 << 20), ("1G", 10**9), ("4096", 4096), ("1.5KiB", 1536)],
)
def test_sizes(text: str, expected: int) -> None:
    assert limits.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "two GiB", "1PiB", "-1", "1e9"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ConfigError, match="expected a size"):
        limits.parse_size(text)


def test_set_and_show_are_stored_0600_and_audited(
    cli_env: dict[str, str], fake_registry: FakeRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_registry.add("acme.lim")
    argv = ["limits", "set", "acme.lim", "--disk", "2GiB", "--inodes", "200000", "--cpu", "0.5",
            "--memory", "256MiB", "--processes", "32"]  # fmt: skip
    assert cli.main(argv) == cli.EXIT_OK
    capsys.readouterr()
    assert cli.main(["limits", "show", "acme.lim", "--json"]) == cli.EXIT_OK
    doc = json.loads(capsys.readouterr().out)["result"]
    assert doc["plugins"]["acme.lim"] == {
        "disk_bytes": 2 << 30, "inodes": 200000, "cpu_cores": 0.5,
        "memory_bytes": 256 << 20, "processes": 32,
    }  # fmt: skip
    assert doc["defaults"]["disk_bytes"] == 1 << 30 and doc["defaults"]["cpu_cores"] == 1.0
    data = os.path.join(cli_env["AURORA_PACK_DATA"])
    assert stat.S_IMODE(os.stat(os.path.join(data, "limits.json")).st_mode) == 0o600
    audit = [json.loads(line) for line in open(os.path.join(data, "audit.log"))]  # noqa: SIM115
    assert audit[-1]["action"] == "set-limits" and audit[-1]["limits"]["cpu_cores"] == 0.5


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        pytest.param(["--disk", "lots"], cli.EXIT_USAGE, id="bad-size"),
        pytest.param(["--cpu", "0"], cli.EXIT_USAGE, id="no-cpu"),
        pytest.param(["--processes", "0"], cli.EXIT_USAGE, id="no-processes"),
        pytest.param([], cli.EXIT_USAGE, id="nothing"),
    ],
)
def test_bad_settings_record_nothing(
    cli_env: dict[str, str], fake_registry: FakeRegistry, argv: list[str], code: int
) -> None:
    fake_registry.add("acme.lim")
    assert cli.main(["limits", "set", "acme.lim", *argv]) == code
    assert not os.path.exists(os.path.join(cli_env["AURORA_PACK_DATA"], "limits.json"))
    assert cli.main(["limits", "set", "acme.none", "--cpu", "1"]) == cli.EXIT_NOT_FOUND


def test_limits_apply_at_the_next_start(
    make_supervisor: Callable[..., Supervisor], fake_registry: FakeRegistry, paths: Paths
) -> None:
    fake_registry.add("acme.lim")
    sup = make_supervisor()
    run_until_state(sup, "acme.lim", status.RUNNING)
    report = paths.plugin_run("acme.lim") / "report.json"
    first = json.loads(run_until(sup, lambda: report.is_file() and report.read_text()))
    assert first["policy"]["limits"]["cpu_cores"] == 1.0  # the default: one core
    limits.set_limits(paths.limits, paths.limits_lock, paths.audit_log, "acme.lim",
                      {"cpu_cores": 0.25, "processes": 8, "memory_bytes": 128 << 20})  # fmt: skip
    for _ in range(3):
        sup.reconcile()
    assert sup.slots["acme.lim"].state == status.RUNNING  # not restarted for it
    sup._stop([sup.slots["acme.lim"]])
    report.unlink(missing_ok=True)
    run_until_state(sup, "acme.lim", status.RUNNING)
    again = json.loads(run_until(sup, lambda: report.is_file() and report.read_text()))
    got = again["policy"]["limits"]
    assert (got["cpu_cores"], got["processes"], got["memory_bytes"]) == (0.25, 8, 128 << 20)
