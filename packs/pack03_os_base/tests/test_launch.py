"""The command line: exit codes, one JSON document with --json, refusal instead of failing open."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sandbox import launch
from sandbox_testing import PLUGIN_GID, PLUGIN_UID

if TYPE_CHECKING:
    from conftest import Probe, Sandbox

LAUNCH = Path(launch.__file__)


def test_help_answers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        launch.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--policy" in out and "125" in out


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-mode"),
        pytest.param(["--probe", "--kill-tree"], id="two-modes"),
        pytest.param(["--policy", "p.json"], id="no-command"),
        pytest.param(["--kill-tree"], id="kill-without-target"),
        pytest.param(["--backend", "docker", "--probe"], id="unknown-backend"),
    ],
)
def test_usage_mistakes_exit_125_without_traceback(
    argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = [str(tmp_path / a) if a.endswith(".json") else a for a in argv]
    assert launch.main(argv) == launch.EXIT_REFUSED
    err = capsys.readouterr().err
    assert err.startswith("sandbox: ") and "Traceback" not in err


def test_invalid_policy_is_refused_with_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps({"plugin_id": "x", "granted": ["netwrk"], "data_dir": "rel"}))
    assert launch.main(["--policy", str(policy), "--", "true"]) == launch.EXIT_REFUSED
    err = capsys.readouterr().err
    assert "granted[0]: unknown capability 'netwrk'" in err
    assert "data_dir: expected an absolute path" in err


@pytest.mark.parametrize(
    ("command", "code"),
    [
        pytest.param(["no-such-command-aurora"], launch.EXIT_NOT_FOUND, id="not-found"),
        pytest.param(["{tmp}/plain.txt"], launch.EXIT_CANNOT_EXECUTE, id="not-executable"),
    ],
)
def test_command_problems_use_env_exit_codes(
    tmp_path: Path, command: list[str], code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    command = [c.format(tmp=tmp_path) for c in command]
    plain = tmp_path / "plain.txt"
    plain.write_text("not a program")
    plain.chmod(0o644)
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps({"plugin_id": "x", "data_dir": str(tmp_path / "d"),
                                  "uid": PLUGIN_UID, "gid": PLUGIN_GID}))  # fmt: skip
    # The command is resolved before any layer is applied: safe in-process.
    assert launch.main(["--policy", str(policy), "--", *command]) == code
    assert command[0] in capsys.readouterr().err


def test_probe_json_is_one_document(capsys: pytest.CaptureFixture[str]) -> None:
    code = launch.main(["--probe", "--json"])
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["schema"] == "aurora-sandbox-probe-v1"
    assert code == (0 if doc["always_ok"] else 1)
    assert set(doc["enforceable"]["native"]) >= {"network", "fs-read", "fs-write", "gpu", "io"}
    for layer in doc["layers"].values():
        assert layer["detail"]  # a reason for every yes and every no
    assert err == ""


def _run_with_layers_missing(
    tmp_path: Path, allow_degraded: bool
) -> subprocess.CompletedProcess[str]:
    """launch.py on a simulated host without Landlock, seccomp or network namespaces."""
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps({
        "plugin_id": "test.degraded", "granted": ["fs-read", "fs-write", "gpu", "io"],
        "data_dir": str(tmp_path / "d"), "allow_degraded": allow_degraded,
        "uid": PLUGIN_UID, "gid": PLUGIN_GID,
    }))  # fmt: skip
    shim = (
        "import sys; sys.path.insert(0, sys.argv.pop(1));"
        "import sandbox.landlock as l, sandbox.seccomp as s, sandbox._libc as c;"
        "l.abi_version = lambda: 0; s.library = lambda: None;"
        "real = c.unshare;"
        "c.unshare = lambda f: (_ for _ in ()).throw(PermissionError(1, 'simulated')) "
        "if f & c.CLONE_NEWNET else real(f);"
        "from sandbox.launch import main; raise SystemExit(main(sys.argv[1:]))"
    )
    return subprocess.run(
        [sys.executable, "-c", shim, str(LAUNCH.parents[1]), "--policy", str(policy),
         "--backend", "native", "--report", str(tmp_path / "r.json"), "--", "/bin/true"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="runs as root, like CI")
def test_refuses_when_no_layer_can_deny_network(tmp_path: Path) -> None:
    proc = _run_with_layers_missing(tmp_path, allow_degraded=False)
    assert proc.returncode == launch.EXIT_REFUSED, proc.stderr
    assert "network: not granted, and no active layer can deny it" in proc.stderr
    assert "unshare(CLONE_NEWNET): simulated" in proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "refused"
    assert any(r.startswith("network:") for r in report["refusal"])
    assert report["cgroup"] is None or not any(os.path.exists(d) for d in report["cgroup"]["dirs"])


@pytest.mark.skipif(os.geteuid() != 0, reason="runs as root, like CI")
def test_allow_degraded_runs_and_says_what_is_not_enforced(tmp_path: Path) -> None:
    proc = _run_with_layers_missing(tmp_path, allow_degraded=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["enforced"]["network"] == []
    assert any(d.startswith("network:") for d in report["degraded"])
    subprocess.run([sys.executable, str(LAUNCH), "--kill-tree", "--report",
                    str(tmp_path / "r.json"), "--grace", "0"], check=True, timeout=60)  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="runs as root, like CI")
def test_report_names_every_layer_and_the_denials_they_enforce(
    native: Sandbox, probe: Probe
) -> None:
    res = native.run(["/bin/true"])
    assert res.returncode == 0, res.stderr
    rep = res.report
    assert rep["status"] == "running" and rep["backend"] == "native"
    assert rep["plugin_id"] == native.plugin_id
    assert rep["pid"] != res.pid and rep["layers"]["pid-namespace"]["active"]  # pidns doc
    for name in ("session", "rlimits", "environment", "no-new-privs", "capabilities"):
        assert rep["layers"][name]["active"], name
    for cap in ("network", "fs-read", "fs-write", "gpu", "io"):
        assert rep["enforced"][cap], cap
    assert rep["limits"]["core"] == 0


def test_kill_tree_of_an_unknown_run_is_not_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert launch.main(["--kill-tree", "--pid", "999999999", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["cgroups"] == []
    assert "nothing to kill" in err


def test_kill_tree_rejects_a_file_that_is_not_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "r.json"
    bogus.write_text("[1, 2]")
    assert launch.main(["--kill-tree", "--report", str(bogus)]) == launch.EXIT_REFUSED
    assert "not a sandbox report" in capsys.readouterr().err


def test_python_without_isolation_is_flagged(native: Sandbox) -> None:
    res = native.run([sys.executable, "-c", "pass"])
    assert any("without -I" in w for w in res.report["warnings"])
