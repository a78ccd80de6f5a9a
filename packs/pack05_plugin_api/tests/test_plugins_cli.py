"""The operator command line, in-process (plugins.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import plugins
import pytest
from core.audit import read_audit

from pack05_testlib import make_manifest, make_zip, write_package

PACK_ROOT = Path(__file__).resolve().parent.parent


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    """Run the CLI with --json; return (exit code, the envelope's result with its ok, exit
    and error beside it, stderr)."""
    code = plugins.main([*argv, "--json"])
    out, err = capsys.readouterr()
    doc = json.loads(out)  # exactly one JSON document, or json.loads fails
    assert set(doc) == {"ok", "exit", "command", "result", "error"}
    assert (doc["ok"], doc["exit"]) == (code == 0, code)
    assert doc["command"] == next((a for a in argv if a in plugins._VERBS), None)
    view = dict(doc["result"] or {})
    view.update(ok=doc["ok"], exit=doc["exit"], error=doc["error"])
    return code, view, err


@pytest.fixture
def data(tmp_path: Path) -> str:
    return str(tmp_path / "plugins")


@pytest.fixture
def pkg(tmp_path: Path) -> str:
    return str(write_package(tmp_path / "pkg", make_manifest(permissions=["network", "gpu"])))


def test_full_operator_story(
    capsys: pytest.CaptureFixture[str], data: str, pkg: str, tmp_path: Path
) -> None:
    code, doc, _ = run(capsys, "--data", data, "stage", pkg)
    assert (
        code == plugins.EXIT_OK
        and doc["id"] == "acme.echo"
        and doc["missing"] == ["gpu", "network"]
    )
    code, doc, err = run(capsys, "enable", "acme.echo", "--data", data)
    assert code == plugins.EXIT_DENIED and doc["error"]["capabilities"] == ["gpu", "network"]
    assert "grant acme.echo gpu network" in err
    code, doc, _ = run(capsys, "grant", "acme.echo", "network", "gpu", "--data", data)
    assert code == 0 and doc["granted"] == ["gpu", "network"]
    code, doc, _ = run(capsys, "enable", "acme.echo", "--data", data)
    assert code == 0 and doc["enabled"] is True
    code, doc, _ = run(capsys, "list", "--data", data)
    assert [p["id"] for p in doc["plugins"]] == ["acme.echo"] and doc["plugins"][0]["enabled"]
    # a new version that asks for more waits; the operator sees the difference
    v2 = write_package(
        tmp_path / "v2", make_manifest(version="2.0.0", permissions=["network", "gpu", "io"])
    )
    code, doc, _ = run(capsys, "stage", str(v2), "--data", data)
    assert code == 0 and doc["pending_version"] == "2.0.0" and doc["missing"] == ["io"]
    code, doc, _ = run(capsys, "show", "acme.echo", "--verify", "--data", data)
    assert code == 0 and doc["active_version"] == "1.0.0" and doc["pending_version"] == "2.0.0"
    assert doc["problems"] == [] and doc["pending_missing"] == ["io"]
    assert plugins.main(["list", "--data", data]) == 0
    assert "pending=2.0.0 (needs io)" in capsys.readouterr()[0]
    run(capsys, "grant", "acme.echo", "io", "--data", data)
    code, doc, _ = run(capsys, "enable", "acme.echo", "--data", data)
    assert doc["active_version"] == "2.0.0"
    code, doc, _ = run(capsys, "rollback", "acme.echo", "--data", data)
    assert code == 0 and doc["active_version"] == "1.0.0"
    code, doc, _ = run(capsys, "revoke", "acme.echo", "network", "--data", data)
    assert code == 0 and doc["disabled"] is True
    code, doc, _ = run(capsys, "disable", "acme.echo", "--data", data)
    assert code == 0
    code, doc, _ = run(capsys, "remove", "acme.echo", "--version", "2.0.0", "--data", data)
    assert code == 0 and not (Path(data) / "packages" / "acme.echo" / "2.0.0").exists()
    code, doc, _ = run(capsys, "remove", "acme.echo", "--data", data)
    assert code == 0 and not (Path(data) / "packages" / "acme.echo").exists()
    actions = [e["action"] for e in read_audit(Path(data) / "audit.log")]
    assert actions[0] == "register" and actions[-1] == "unregister" and "rollback" in actions


def test_policy_verb(capsys: pytest.CaptureFixture[str], data: str) -> None:
    code, doc, _ = run(capsys, "policy", "--data", data)
    assert code == 0 and doc["allowed"] == [] and doc["blocked"] == []
    assert doc["capabilities"]["network"]["policy"] == "ask"
    code, doc, _ = run(capsys, "policy", "--allow", "io", "--block", "network", "--data", data)
    assert doc["allowed"] == ["io"] and doc["blocked"] == ["network"]
    assert doc["capabilities"]["network"]["risk"] == "high"
    code, doc, _ = run(capsys, "policy", "--block", "netwrk", "--data", data)
    assert code == plugins.EXIT_INVALID and "unknown capability 'netwrk'" in doc["error"]["message"]


def test_validate_verb(capsys: pytest.CaptureFixture[str], pkg: str, tmp_path: Path) -> None:
    code, doc, _ = run(capsys, "validate", pkg)
    assert code == 0 and doc["id"] == "acme.echo"
    code, doc, _ = run(capsys, "validate", str(Path(pkg) / "manifest.json"))
    assert code == 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(make_manifest(permissions=["netwrk"], id="X")))
    code, doc, err = run(capsys, "validate", str(bad))
    assert code == plugins.EXIT_INVALID
    assert (
        "permissions[0]: unknown capability 'netwrk' (known: fs-read, fs-write, gpu, io, network)"
        in doc["error"]["problems"]
    )
    assert any(p.startswith("id:") for p in doc["error"]["problems"])
    assert "permissions[0]" in err
    os.remove(Path(pkg) / "main.py")
    code, doc, _ = run(capsys, "validate", pkg)
    assert code == plugins.EXIT_INVALID and "'main.py' does not exist" in doc["error"]["reason"]


def test_validate_checks_a_package_like_stage_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], pack_data: Path, tmp_path: Path
) -> None:
    good = write_package(tmp_path / "good")
    code, doc, _ = run(capsys, "validate", str(good))
    assert code == 0 and doc["digest"].startswith("tree-v1:sha256:") and doc["files"] == 2
    bad = make_zip(
        tmp_path / "bad.zip",
        [
            ("manifest.json", json.dumps(make_manifest()).encode(), 0o100644),
            ("../evil", b"x", 0o100644),
        ],
    )
    code, doc, _ = run(capsys, "validate", str(bad))
    assert code == plugins.EXIT_INVALID and "escapes the package" in doc["error"]["reason"]
    assert not (pack_data / "plugins").exists()


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        pytest.param(["show", "acme.nope"], plugins.EXIT_NOT_FOUND, id="show-unknown"),
        pytest.param(["enable", "acme.nope"], plugins.EXIT_NOT_FOUND, id="enable-unknown"),
        pytest.param(["disable", "acme.nope"], plugins.EXIT_NOT_FOUND, id="disable-unknown"),
        pytest.param(["remove", "acme.nope"], plugins.EXIT_NOT_FOUND, id="remove-unknown"),
        pytest.param(["grant", "acme.nope", "io"], plugins.EXIT_NOT_FOUND, id="grant-unknown"),
        pytest.param(["revoke", "acme.nope", "io"], plugins.EXIT_NOT_FOUND, id="revoke-unknown"),
        pytest.param(["rollback", "acme.nope"], plugins.EXIT_NOT_FOUND, id="rollback-unknown"),
        pytest.param(["stage", "/nonexistent/pkg"], plugins.EXIT_NOT_FOUND, id="stage-missing"),
        pytest.param(["validate", "/nonexistent"], plugins.EXIT_NOT_FOUND, id="validate-missing"),
        pytest.param(["grant", "acme.nope"], plugins.EXIT_INVALID, id="grant-no-capability"),
        pytest.param(["frobnicate"], plugins.EXIT_INVALID, id="unknown-verb"),
        pytest.param([], plugins.EXIT_INVALID, id="no-verb"),
        pytest.param(["show"], plugins.EXIT_INVALID, id="show-no-id"),
        pytest.param(["policy", "--allow"], plugins.EXIT_INVALID, id="policy-allow-nothing"),
        pytest.param(["list", "--bogus"], plugins.EXIT_INVALID, id="unknown-option"),
    ],
)
def test_bad_input_gives_a_message_and_an_exit_code(
    capsys: pytest.CaptureFixture[str], data: str, argv: list[str], code: int
) -> None:
    got, doc, err = run(capsys, *argv, "--data", data)
    assert got == code and doc["ok"] is False and doc["exit"] == code
    assert err.startswith("plugins.py: error: ") and "Traceback" not in err


def test_hostile_package_is_refused_with_its_reason(
    capsys: pytest.CaptureFixture[str], data: str, pkg: str
) -> None:
    os.symlink("/etc/passwd", Path(pkg) / "passwd")
    code, doc, _err = run(capsys, "stage", pkg, "--data", data)
    assert code == plugins.EXIT_INVALID and "is absolute" in doc["error"]["reason"]


def test_corrupt_registry_is_a_failure_naming_the_file(
    capsys: pytest.CaptureFixture[str], data: str, pkg: str
) -> None:
    run(capsys, "stage", pkg, "--data", data)
    (Path(data) / "registry.json").write_text("{oops")
    code, _doc, err = run(capsys, "list", "--data", data)
    assert code == plugins.EXIT_FAILED and "registry.json" in err and "registry.json.bak" in err


def test_human_output_without_json(capsys: pytest.CaptureFixture[str], data: str, pkg: str) -> None:
    assert plugins.main(["stage", pkg, "--data", data]) == 0
    assert plugins.main(["list", "--data", data]) == 0
    out, err = capsys.readouterr()
    assert "staged: acme.echo 1.0.0" in out and "acme.echo" in out and "missing=gpu,network" in out
    assert plugins.main(["--data", data, "show", "acme.nope"]) == plugins.EXIT_NOT_FOUND
    out, err = capsys.readouterr()
    assert out == "" and "unknown plugin: acme.nope" in err


def test_help_answers(capsys: pytest.CaptureFixture[str]) -> None:
    assert plugins.main(["--help"]) == 0
    out, _ = capsys.readouterr()
    for verb in ("validate", "stage", "list", "show", "enable", "disable", "remove", "grant",
                 "revoke", "rollback", "policy"):  # fmt: skip
        assert verb in out
    assert "exit codes" in out
    assert plugins.main(["grant", "--help"]) == 0
    assert "network" in capsys.readouterr()[0]


def test_default_data_dir_is_aurora_pack_data(
    capsys: pytest.CaptureFixture[str], pack_data: Path, pkg: str
) -> None:
    code, _doc, _ = run(capsys, "stage", pkg)
    assert code == 0 and (pack_data / "plugins" / "registry.json").exists()


def test_runs_as_a_script_from_the_repository_root(tmp_path: Path, pkg: str) -> None:
    repo = PACK_ROOT.parent.parent
    result = subprocess.run(
        [
            sys.executable,
            "packs/pack05_plugin_api/plugins.py",
            "--data",
            str(tmp_path / "d"),
            "stage",
            pkg,
            "--json",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["result"]["id"] == "acme.echo"


def test_unknown_versions_name_the_staged_ones(
    capsys: pytest.CaptureFixture[str], data: str, pkg: str
) -> None:
    run(capsys, "stage", pkg, "--data", data)
    for argv in (
        ["enable", "acme.echo", "--version", "9"],
        ["rollback", "acme.echo", "9"],
        ["remove", "acme.echo", "--version", "9"],
    ):
        code, doc, err = run(capsys, *argv, "--data", data)
        assert code == plugins.EXIT_NOT_FOUND
        assert "acme.echo has no staged version 9 (staged: 1.0.0)" in err
        assert doc["error"]["message"] in err
    code, _doc, err = run(capsys, "rollback", "acme.echo", "--data", data)
    assert code == plugins.EXIT_NOT_FOUND and "no staged version older than 1.0.0" in err


def test_an_io_error_names_the_file_without_errno(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pkg: str
) -> None:
    (tmp_path / "file").write_text("x")
    code, doc, err = run(capsys, "stage", pkg, "--data", str(tmp_path / "file" / "plugins"))
    assert code == plugins.EXIT_FAILED
    where = tmp_path / "file" / "plugins"
    assert doc["error"]["message"] == f"{where}: Not a directory"
    assert "Errno" not in err and "Traceback" not in err


def test_blocking_with_a_corrupt_registry_changes_nothing(
    capsys: pytest.CaptureFixture[str], data: str, pkg: str
) -> None:
    run(capsys, "stage", pkg, "--data", data)
    run(capsys, "grant", "acme.echo", "network", "--data", data)
    registry = Path(data) / "registry.json"
    registry.write_text("{oops")
    audit = (Path(data) / "audit.log").read_bytes()
    code, _doc, err = run(capsys, "policy", "--block", "network", "--data", data)
    assert code == plugins.EXIT_FAILED and "registry.json" in err
    assert not (Path(data) / "permissions.json").exists()  # the policy was not changed
    assert registry.read_text() == "{oops"
    assert (Path(data) / "audit.log").read_bytes() == audit


@pytest.mark.parametrize(
    "value", [pytest.param("", id="empty"), pytest.param("/dev/null", id="not-a-directory")]
)
def test_a_bad_data_dir_is_a_usage_error(capsys: pytest.CaptureFixture[str], value: str) -> None:
    code, doc, err = run(capsys, "--data", value, "list")
    assert code == plugins.EXIT_INVALID and doc["exit"] == code
    assert err.startswith("plugins.py: error: --data: ")


def test_list_marks_grants_a_hand_edited_policy_blocks(
    capsys: pytest.CaptureFixture[str], data: str, pkg: str
) -> None:
    run(capsys, "stage", pkg, "--data", data)
    run(capsys, "grant", "acme.echo", "network", "--data", data)
    policy = Path(data) / "permissions.json"
    policy.write_text(json.dumps({"allowed": [], "blocked": ["network"]}))
    code, doc, _ = run(capsys, "list", "--data", data)
    assert code == 0 and doc["plugins"][0]["blocked_by_policy"] == ["network"]
    assert plugins.main(["list", "--data", data]) == 0
    assert "blocked-by-policy=network" in capsys.readouterr()[0]
    # `policy --block` withdraws it although the file already says blocked
    code, doc, _ = run(capsys, "policy", "--block", "network", "--data", data)
    assert code == 0
    code, doc, _ = run(capsys, "list", "--data", data)
    assert doc["plugins"][0]["granted"] == [] and doc["plugins"][0]["blocked_by_policy"] == []
    code, doc, _ = run(capsys, "show", "acme.echo", "--data", data)
    assert doc["granted"] == [] and doc["blocked_by_policy"] == []
    # an invalid policy does not stop list or show: a warning names the file
    policy.write_text("{oops")
    code, doc, err = run(capsys, "list", "--data", data)
    assert code == 0 and "permissions.json" in err and doc["plugins"][0]["id"] == "acme.echo"


def test_list_tells_a_blocked_capability_from_a_missing_grant(
    capsys: pytest.CaptureFixture[str], data: str, pkg: str
) -> None:
    run(capsys, "policy", "--block", "network", "--data", data)
    run(capsys, "stage", pkg, "--data", data)
    code, doc, _ = run(capsys, "show", "acme.echo", "--data", data)
    assert code == 0 and doc["missing"] == ["gpu"] and doc["blocked"] == ["network"]
    assert plugins.main(["list", "--data", data]) == 0
    line = capsys.readouterr()[0]
    assert "missing=gpu" in line and "blocked=network (policy)" in line
    code, _doc, _err = run(capsys, "grant", "acme.echo", "network", "--data", data)
    assert code == plugins.EXIT_DENIED  # what `blocked` announced


def test_aurora_home_finds_the_installed_pack_data(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pkg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AURORA_PACK_DATA", raising=False)
    monkeypatch.setenv("AURORA_HOME", str(tmp_path / "home"))
    code, doc, _ = run(capsys, "--json", "stage", pkg)
    assert code == 1 and "not installed there" in doc["error"]["message"]  # not the source tree
    (tmp_path / "home").mkdir(exist_ok=True)
    state = {
        "schema": "aurora-state-v1",
        "packs": {"pack05_plugin_api": {"active_version": "0.1.0"}},
    }
    (tmp_path / "home" / "state.json").write_text(json.dumps(state))
    code, _doc, _ = run(capsys, "--json", "stage", pkg)
    assert code == 0
    registry = tmp_path / "home" / "data" / "pack05_plugin_api" / "plugins" / "registry.json"
    assert "acme.echo" in json.loads(registry.read_text())["plugins"]


def test_a_closed_stdout_ends_quietly(tmp_path: Path, pkg: str) -> None:
    data = tmp_path / "plugins"
    cli = [sys.executable, str(PACK_ROOT / "plugins.py")]
    subprocess.run([*cli, "stage", pkg, "--data", str(data)], check=True, capture_output=True)
    for argv in (["show", "acme.echo"], ["list", "--json"]):
        proc = subprocess.run(
            f"{' '.join(cli + argv)} --data {data} | true; exit ${{PIPESTATUS[0]}}",
            shell=True,
            executable="/bin/bash",
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == "", proc.stderr


def test_show_verify_names_the_changed_file(
    capsys: pytest.CaptureFixture[str], data: str, pkg: str
) -> None:
    run(capsys, "stage", pkg, "--data", data)
    staged = next((Path(data) / "packages").glob("*/*"))
    (staged / "main.py").write_text("print('tampered')\n")
    code, doc, _ = run(capsys, "show", "acme.echo", "--verify", "--data", data)
    assert code == plugins.EXIT_FAILED
    assert doc["problems"] == [
        "acme.echo 1.0.0: content differs from the registry (changed: main.py)"
    ]
