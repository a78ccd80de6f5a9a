"""The operator CLI, in-process (``main([...])``) against a real service process."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from launcher import cli, identity, process
from launcher_testing import (
    CLEAN_EXIT,
    CRASH,
    ESCAPE,
    IDLE,
    PASSTHROUGH_ROOT,
    FakeRegistry,
    Service,
    plugin_processes,
    plugin_status_record,
    read_pid,
    real_sandbox_root,
    wait_until,
    wait_until_service_reports,
)

StartForCli = Callable[[dict[str, str]], Service]


def test_list_without_service(cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list", "--json"]) == cli.EXIT_NOT_RUNNING
    out, err = capsys.readouterr()
    assert json.loads(out)["result"]["service"]["running"] is False
    assert "launcher service is not running" in err


def test_list_shows_pid_uptime_restarts_layers(
    start_service_for_cli: StartForCli, capsys: pytest.CaptureFixture[str]
) -> None:
    svc = start_service_for_cli({"acme.idle": IDLE})
    wait_until_service_reports(svc, "acme.idle")
    pid = read_pid(svc.paths.plugin_data("acme.idle") / "pid").pid
    wait_until(
        lambda: plugin_status_record(svc.paths.status, "acme.idle").get("layers"),
        what="layers from the report",
    )
    assert cli.main(["list", "--json"]) == cli.EXIT_OK
    out, err = capsys.readouterr()
    doc = json.loads(out)["result"]
    rec = doc["plugins"]["acme.idle"]
    assert rec["pid"] == pid
    assert rec["restarts"] == 0 and rec["uptime_s"] >= 0
    assert rec["layers"] == ["test-passthrough"]
    # The passthrough sandbox has no fork server: one-shot, and why.
    assert rec["mode"] == "one-shot" and doc["service"]["sandbox"]["mode"] == "one-shot"
    assert "--serve exited" in doc["service"]["sandbox"]["error"]
    assert "sandbox:" not in err  # --json: nothing but the document, and no extra noise
    assert cli.main(["list"]) == cli.EXIT_OK
    table, err = capsys.readouterr()
    assert "acme.idle" in table and str(pid) in table and "test-passthrough" in table
    assert "sandbox: one-shot; " in err


def test_list_shows_each_plugins_uid(
    start_service_for_cli: StartForCli, capsys: pytest.CaptureFixture[str]
) -> None:
    svc = start_service_for_cli({"acme.idle": IDLE})
    wait_until_service_reports(svc, "acme.idle")
    assert cli.main(["list", "--json"]) == cli.EXIT_OK
    rec = json.loads(capsys.readouterr().out)["result"]["plugins"]["acme.idle"]
    assert identity.FIRST_ID <= rec["uid"] == rec["gid"] <= identity.LAST_ID
    assert cli.main(["list"]) == cli.EXIT_OK
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert header.split()[:5] == ["ID", "STATE", "HEALTH", "PID", "UID"]
    assert row.split()[2] == "-"  # no protocol: no health of its own
    assert row.split()[4] == str(rec["uid"])


def test_logs(start_service_for_cli: StartForCli, capsys: pytest.CaptureFixture[str]) -> None:
    svc = start_service_for_cli({"acme.once": CLEAN_EXIT})
    log = svc.paths.plugin_log("acme.once")
    wait_until(lambda: log.is_file() and "exited with status 0" in log.read_text(), what="log")
    assert cli.main(["logs", "acme.once", "--json"]) == cli.EXIT_OK
    lines = json.loads(capsys.readouterr().out)["result"]["lines"]
    assert "| done" in lines  # a plugin line, framed
    assert cli.main(["logs", "acme.nothing"]) == cli.EXIT_NOT_FOUND


def test_stop_then_start_one_plugin(
    start_service_for_cli: StartForCli, capsys: pytest.CaptureFixture[str]
) -> None:
    svc = start_service_for_cli({"acme.idle": IDLE, "acme.other": IDLE})
    wait_until_service_reports(svc, "acme.idle")
    wait_until_service_reports(svc, "acme.other")
    first = read_pid(svc.paths.plugin_data("acme.idle") / "pid")
    other = read_pid(svc.paths.plugin_data("acme.other") / "pid")
    assert cli.main(["stop", "acme.idle"]) == cli.EXIT_OK
    assert not first.alive() and other.alive()  # only that one
    assert cli.main(["start", "acme.idle", "--json"]) == cli.EXIT_OK
    capsys.readouterr()
    assert plugin_status_record(svc.paths.status, "acme.idle")["state"] == "running"


def test_start_reports_a_failing_plugin(
    start_service_for_cli: StartForCli, capsys: pytest.CaptureFixture[str]
) -> None:
    start_service_for_cli({"acme.crash": CRASH})
    assert cli.main(["start", "acme.crash", "--wait", "20"]) == cli.EXIT_PLUGIN_FAILED
    assert "failed" in capsys.readouterr().err


def test_start_unknown_plugin(
    cli_env: dict[str, str], fake_registry: FakeRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_registry.write()
    assert cli.main(["start", "acme.none"]) == cli.EXIT_NOT_FOUND
    assert "plugin 'acme.none': not in the registry" in capsys.readouterr().err


def test_run_in_the_foreground_reports_the_exit_status(
    cli_env: dict[str, str], fake_registry: FakeRegistry, capfd: pytest.CaptureFixture[str]
) -> None:
    fake_registry.add("acme.once", CLEAN_EXIT, enabled=False)  # authors run disabled ones
    assert cli.main(["run", "acme.once"]) == 0
    assert "done" in capfd.readouterr().out
    fake_registry.add("acme.crash", CRASH)
    # The one exit-code table: a plugin that fails is 1; its own status is in the message.
    assert cli.main(["run", "acme.crash"]) == cli.EXIT_PLUGIN_FAILED
    assert "acme.crash: exit 3; layers:" in capfd.readouterr().err
    assert cli.main(["run", "acme.crash", "--json"]) == cli.EXIT_PLUGIN_FAILED
    assert json.loads(capfd.readouterr().out)["result"]["exit_status"] == 3


def test_run_json_is_one_document_and_timeout_kills_the_tree(
    cli_env: dict[str, str],
    fake_registry: FakeRegistry,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    fake_registry.add("acme.idle", "import os, time\nprint('pid', os.getpid(), flush=True)\n"
                      "time.sleep(60)\n")  # fmt: skip
    assert cli.main(["run", "acme.idle", "--timeout", "1", "--json"]) == cli.EXIT_TIMEOUT
    out, err = capfd.readouterr()
    doc = json.loads(out)["result"]  # the plugin's own output went to stderr
    assert doc["timed_out"] is True and doc["layers"] == ["test-passthrough"]
    pid = int(next(line.split()[1] for line in err.splitlines() if line.startswith("pid ")))
    assert process.identify(pid) is None or process.is_zombie(pid)


def test_run_refuses_what_the_service_runs(
    start_service_for_cli: StartForCli, capsys: pytest.CaptureFixture[str]
) -> None:
    svc = start_service_for_cli({"acme.idle": IDLE})
    wait_until_service_reports(svc, "acme.idle")
    assert cli.main(["run", "acme.idle"]) == cli.EXIT_CONFLICT
    assert "stop it first" in capsys.readouterr().err


def test_run_without_sandbox_runs_nothing(
    cli_env: dict[str, str],
    fake_registry: FakeRegistry,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_registry.add("acme.idle", IDLE)
    monkeypatch.setenv("AURORA_SANDBOX_ROOT", str(tmp_path / "nowhere"))
    assert cli.main(["run", "acme.idle"]) == cli.EXIT_NO_SANDBOX
    assert "launch.py: not found" in capsys.readouterr().err
    assert not (tmp_path / "data/plugin-data/acme.idle/pid").exists()
    assert PASSTHROUGH_ROOT.is_dir()


def test_help_answers(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "exit codes: 0 ok" in capsys.readouterr().out
    for argv in (["list"], ["logs"], ["start"], ["stop"], ["run"], ["degraded", "allow"]):
        assert cli.main([*argv, "--help"]) == 0
        assert f"launcher_cli.py {argv[0]}" in capsys.readouterr().out.split("example:")[1]


def test_degraded_allow_is_recorded_audited_and_shown_by_list(
    start_service_for_cli: StartForCli, capsys: pytest.CaptureFixture[str]
) -> None:
    # The passthrough refuses test.degraded unless allow_degraded (one unenforceable denial).
    svc = start_service_for_cli({"test.degraded": IDLE})
    wait_until_service_reports(svc, "test.degraded", "refused")
    assert cli.main(["degraded", "allow", "test.degraded", "--json"]) == cli.EXIT_OK
    out, err = capsys.readouterr()
    doc = json.loads(out)["result"]
    assert doc == {"id": "test.degraded", "allow_degraded": True, "changed": True}
    assert "degraded mode allowed" in err
    audit = [json.loads(x) for x in svc.paths.audit_log.read_text().splitlines()]
    assert audit[-1]["action"] == "allow-degraded" and audit[-1]["plugin"] == "test.degraded"
    wait_until_service_reports(svc, "test.degraded", what="running degraded")
    wait_until(
        lambda: plugin_status_record(svc.paths.status, "test.degraded").get("degraded"),
        what="the report's degraded list",
    )
    assert cli.main(["list"]) == cli.EXIT_OK
    out, err = capsys.readouterr()
    row = next(line for line in out.splitlines() if line.startswith("test.degraded"))
    assert "YES (1)" in row
    assert "test.degraded: DEGRADED, not enforced: network: test gap" in err
    assert cli.main(["degraded", "list", "--json"]) == cli.EXIT_OK
    assert json.loads(capsys.readouterr().out)["result"] == {"allowed": ["test.degraded"]}
    assert cli.main(["degraded", "allow", "test.degraded"]) == cli.EXIT_OK
    assert "already allowed" in capsys.readouterr().err
    assert cli.main(["degraded", "deny", "test.degraded"]) == cli.EXIT_OK
    capsys.readouterr()
    assert cli.main(["degraded", "list"]) == cli.EXIT_OK
    assert "no plugin is allowed to run degraded" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("plugin_id", "message"),
    [
        pytest.param("acme.none", "plugin 'acme.none': not in the registry", id="unknown"),
        pytest.param("../etc", "not a plugin id", id="bad-id"),
    ],
)
def test_degraded_allow_needs_a_registered_plugin(
    cli_env: dict[str, str],
    fake_registry: FakeRegistry,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    plugin_id: str,
    message: str,
) -> None:
    fake_registry.write()
    assert cli.main(["degraded", "allow", plugin_id]) == cli.EXIT_NOT_FOUND
    assert message in capsys.readouterr().err
    assert not (tmp_path / "data" / "degraded.json").exists()


def test_run_in_the_foreground_honours_the_degraded_allowance(
    cli_env: dict[str, str], fake_registry: FakeRegistry, capfd: pytest.CaptureFixture[str]
) -> None:
    fake_registry.add("test.degraded", CLEAN_EXIT)
    # pack03 refuses (its exit 125): a denial not enforceable
    assert cli.main(["run", "test.degraded"]) == cli.EXIT_SANDBOX_REFUSED
    assert "refused to start" in capfd.readouterr().err
    assert cli.main(["degraded", "allow", "test.degraded"]) == cli.EXIT_OK
    capfd.readouterr()
    assert cli.main(["run", "test.degraded", "--json"]) == 0
    out, err = capfd.readouterr()
    doc = json.loads(out)["result"]
    assert doc["allow_degraded"] is True and doc["degraded"] == ["network: test gap"]
    assert "DEGRADED, not enforced: network: test gap" in err


@pytest.mark.parametrize(
    ("argv", "registry_text", "code", "message"),
    [
        pytest.param(
            ["logs", "../x"], None, cli.EXIT_NOT_FOUND, "not a plugin id", id="logs-bad-id"
        ),
        pytest.param(
            ["logs", "acme.none"], None, cli.EXIT_NOT_FOUND, "no log at", id="logs-no-log"
        ),
        pytest.param(
            ["start", "../../x"], None, cli.EXIT_NOT_FOUND, "not a plugin id", id="start-bad-id"
        ),
        pytest.param(
            ["stop", "acme.none"], None, cli.EXIT_NOT_FOUND, "not in the registry", id="stop-typo"
        ),
        pytest.param(
            ["run", "acme.none"], None, cli.EXIT_NOT_FOUND, "not in the registry", id="run-unknown"
        ),
        pytest.param(
            ["start", "acme.x"], "{oops", cli.EXIT_ERROR, "not JSON", id="corrupt-registry"
        ),
        pytest.param(
            ["degraded", "deny", "ACME.X"],
            None,
            cli.EXIT_NOT_FOUND,
            "not a plugin id",
            id="degraded-bad-id",
        ),
    ],
)
def test_operator_mistakes_are_one_message_and_their_exit_code(
    cli_env: dict[str, str],
    fake_registry: FakeRegistry,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    argv: list[str],
    registry_text: str | None,
    code: int,
    message: str,
) -> None:
    fake_registry.write()
    if registry_text is not None:
        fake_registry.path.write_text(registry_text)
    assert cli.main(argv) == code
    out, err = capsys.readouterr()
    assert message in err and out == ""
    # With --json the one document on stdout says the same.
    assert cli.main([*argv, "--json"]) == code
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert (doc["ok"], doc["exit"], doc["result"]) == (False, code, None)
    assert err.strip() == f"launcher_cli.py: error: {doc['error']['message']}"
    assert not (tmp_path / "run" / "control.json").exists()  # nothing was recorded


def test_ctrl_c_while_waiting_is_a_message_not_a_traceback(
    cli_env: dict[str, str],
    fake_registry: FakeRegistry,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_registry.add("acme.idle", IDLE)

    def _interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.process, "running_from_pidfile", _interrupted)
    assert cli.main(["stop", "acme.idle"]) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip() == "launcher_cli.py: error: interrupted"


def test_run_in_the_real_sandbox_leaves_nothing_at_timeout(
    cli_env: dict[str, str],
    fake_registry: FakeRegistry,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("AURORA_SANDBOX_ROOT", str(real_sandbox_root()))
    fake_registry.add("acme.escape", ESCAPE)  # a setsid child and grandchild
    assert cli.main(["run", "acme.escape", "--timeout", "4", "--json"]) == cli.EXIT_TIMEOUT
    doc = json.loads(capfd.readouterr().out)["result"]
    assert doc["timed_out"] is True and "landlock" in doc["layers"]
    # No process of the plugin is left, the setsid grandchild included (found by the
    # environment pack03 gives every process of the run).
    assert plugin_processes("acme.escape") == []


def test_a_call_result_never_drives_the_operators_terminal(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """adv8 F7: C1 controls (U+009B is CSI), bidi overrides and ESC in a plugin's result
    reach stdout as JSON escapes; the text stays valid JSON, and readable non-ASCII stays."""
    from aurora_common.calls import CallOutcome

    hostile = {"t": "C1:\u009b2J bidi:\u202eTXT esc:\u001b[31m tag:\U000e0041 caf\u00e9 \u4e16"}
    monkeypatch.setattr(cli.calls, "call", lambda *a, **k: CallOutcome("result", hostile))
    assert cli.main(["call", "acme.x", "f"]) == 0
    out = capsys.readouterr().out
    assert not [ch for ch in out if ch != "\n" and not ch.isprintable()], ascii(out)
    assert json.loads(out) == hostile
    assert "caf\u00e9 \u4e16" in out
    assert cli.main(["call", "acme.x", "f", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.isascii() and json.loads(out)["result"]["value"] == hostile
