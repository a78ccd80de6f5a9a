"""The installer CLI end to end on a temporary home: every command and every exit code."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from pathlib import Path

import pytest
from aurora import ApprovalRequest, Installer, IntegrityError
from aurora.exitcodes import ExitCode
from aurora_testing import Env, alive, tree_bytes, wait_for


def _install_chain(env: Env) -> None:
    env.make_pack("base", "0.1.0")
    env.make_pack("mid", "0.2.0", deps=[("base", ">=0.1.0")])
    env.make_pack("top", "1.0.0", deps=[("mid", "~=0.2"), ("base", "!=0.0.9")])


COMMANDS_WITH_PACK = (
    "validate",
    "stage",
    "seal",
    "dry-run",
    "install",
    "uninstall",
    "verify",
    "status",
    "start",
    "stop",
    "health",
)


def test_help_answers(capsys: pytest.CaptureFixture[str]) -> None:
    import aurora_installer

    assert aurora_installer.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("list", *COMMANDS_WITH_PACK):
        assert command in out
    assert aurora_installer.main(["install", "--help"]) == 0
    assert "--with-deps" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-command"),
        pytest.param(["frobnicate"], id="unknown-command"),
        pytest.param(["stage"], id="missing-pack"),
        pytest.param(["stage", "--pack", "a", "--wait", "-1"], id="negative-wait"),
        pytest.param(["stage", "--pack", "a", "--wait", "abc"], id="wait-not-a-number"),
        pytest.param(["stage", "--pack", "a", "--wait", "nan"], id="wait-nan"),
        pytest.param(["list", "--wait", "inf"], id="wait-inf"),
        pytest.param(["install", "--pack", "a", "--script-timeout", "0"], id="zero-script-timeout"),
        pytest.param(["start", "--pack", "a", "--check-timeout", "0"], id="zero-check-timeout"),
        pytest.param(["start", "--pack", "a", "--retries", "0"], id="zero-retries"),
        pytest.param(["stop", "--pack", "a", "--timeout", "-5"], id="negative-stop-timeout"),
        pytest.param(["health", "--pack", "a", "--count", "2"], id="count-without-watch"),
    ],
)
def test_usage_errors_exit_2_without_traceback(env: Env, argv: list[str]) -> None:
    env.make_pack("a")
    result = env.run(*argv)
    assert result.code == ExitCode.USAGE
    assert "Traceback" not in result.err
    assert "error:" in result.err
    assert not env.home.exists()  # nothing happened


def test_usage_error_in_json_mode_is_one_document(env: Env) -> None:
    result = env.run("stage", "--json")
    assert result.code == ExitCode.USAGE
    doc = result.json
    assert doc["ok"] is False and doc["exit_code"] == 2 and doc["command"] == "stage"
    assert "--pack" in doc["error"]["message"]
    no_command = env.run("--json")
    assert no_command.code == ExitCode.USAGE and no_command.json["command"] is None


def test_options_before_the_command(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    import aurora_installer

    env.make_pack("alpha")
    code = aurora_installer.main(
        [
            "--json",
            "--home",
            str(env.home),
            "--packs-dir",
            str(env.packs_dir),
            "stage",
            "--pack",
            "alpha",
        ]
    )
    doc = json.loads(capsys.readouterr().out)
    assert (code, doc["command"], doc["result"]["pack"]) == (0, "stage", "alpha")
    # After the command, an option wins over the same option before it.
    elsewhere = env.home.parent / "elsewhere"
    code = aurora_installer.main(
        [
            "--home",
            str(elsewhere),
            "list",
            "--home",
            str(env.home),
            "--packs-dir",
            str(env.packs_dir),
        ]
    )
    assert code == 0 and "staged 1.0.0" in capsys.readouterr().out
    assert not elsewhere.exists()


def test_list_shows_versions_and_states(env: Env) -> None:
    env.make_pack("alpha", "1.0.0", approval=False)
    env.make_pack("beta", "2.0.0")
    (env.packs_dir / "broken").mkdir()
    (env.packs_dir / "broken" / "manifest.yaml").write_text("pack: [\n")
    assert env.run("install", "--pack", "alpha").code == 0
    result = env.run("list", "--json")
    assert result.code == 0
    rows = {row["id"]: row for row in result.json["result"]}
    assert rows["alpha"]["installed"] == "1.0.0"
    assert rows["alpha"]["staged"] == ["1.0.0"]
    assert rows["beta"]["version"] == "2.0.0" and rows["beta"]["installed"] is None
    assert rows["broken"]["valid"] is False
    human = env.run("list")
    assert "alpha" in human.out and "installed 1.0.0" in human.out
    assert "INVALID" in human.out


def test_list_on_missing_home_creates_nothing(env: Env) -> None:
    env.make_pack("alpha")
    assert env.run("list").code == 0
    assert not env.home.exists()


def test_validate_ok_and_writes_nothing(env: Env) -> None:
    root = env.make_pack("alpha", artifacts=[("lib.py", "")], files={"lib.py": "x = 1\n"})
    before = tree_bytes(root)
    result = env.run("validate", "--pack", "alpha", "--json")
    assert result.code == 0
    assert result.json["result"]["warnings"] == [
        "pack.artifacts[0]: lib.py has no sha256 (run seal)"
    ]
    assert tree_bytes(root) == before
    assert not env.home.exists()


def test_validate_invalid_manifest_exit_2_lists_every_problem(env: Env) -> None:
    root = env.make_pack("alpha")
    text = (root / "manifest.yaml").read_text()
    (root / "manifest.yaml").write_text(
        text.replace('    health: "health_check.sh"\n', "").replace("name:", "nmae:")
    )
    result = env.run("validate", "--pack", "alpha", "--json")
    assert result.code == ExitCode.USAGE
    problems = result.json["error"]["problems"]
    assert "pack.entrypoint.health: required" in problems
    assert "pack.name: required" in problems
    assert any(p.startswith("pack.nmae: unknown key") for p in problems)
    assert "pack.entrypoint.health: required" in result.err


def test_malformed_yaml_exit_2_names_line(env: Env) -> None:
    root = env.make_pack("alpha")
    (root / "manifest.yaml").write_text('schema_version: "x"\npack:\n  id: "a\n')
    result = env.run("stage", "--pack", "alpha")
    assert result.code == ExitCode.USAGE
    assert "line 4, column 1" in result.err
    assert "quoted scalar that began at line 3, column 7" in result.err
    assert not (env.home / "state.json").exists()


def test_unknown_pack_exit_3_and_nothing_created(env: Env) -> None:
    env.make_pack("alpha")
    for command in COMMANDS_WITH_PACK:
        result = env.run(command, "--pack", "nope")
        assert result.code == ExitCode.NOT_FOUND, (command, result.err)
        assert "unknown pack 'nope'" in result.err and "alpha" in result.err, command
        assert not env.home.exists(), f"{command} created {env.home}"


def test_not_installed_exit_3_and_nothing_created(env: Env) -> None:
    env.make_pack("alpha")
    for command in ("verify", "uninstall", "start", "stop", "health"):
        result = env.run(command, "--pack", "alpha")
        assert result.code == ExitCode.NOT_FOUND, (command, result.err)
        assert "alpha is not installed (install --pack alpha)" in result.err
        assert not env.home.exists(), f"{command} created {env.home}"


def test_missing_packs_dir_is_named(env: Env) -> None:
    missing = env.packs_dir / "nowhere"
    env.packs_dir = missing  # a mistyped --packs-dir
    result = env.run("validate", "--pack", "alpha")
    assert result.code == ExitCode.NOT_FOUND
    assert f"{missing} (no such directory)" in result.err
    listed = env.run("list")
    assert listed.code == 0 and f"no packs found in {missing} (no such directory)" in listed.out
    missing.parent.mkdir(parents=True, exist_ok=True)
    missing.write_text("a file, not the packs directory")
    result = env.run("stage", "--pack", "alpha")
    assert result.code == ExitCode.NOT_FOUND
    assert f"{missing} (not a directory)" in result.err


def test_stage_copies_and_records_digest(env: Env) -> None:
    root = env.make_pack(
        "alpha", files={"lib/a.py": "a\n", "data/runtime.txt": "x", "lib/__pycache__/a.pyc": "junk"}
    )
    result = env.run("stage", "--pack", "alpha", "--json")
    assert result.code == 0
    staged = Path(result.json["result"]["path"])
    assert staged == env.home / "staging" / "alpha" / "1.0.0"
    assert (staged / "lib" / "a.py").read_text() == "a\n"
    assert os.access(staged / "install.sh", os.X_OK)
    # Runtime dirs and caches of a source tree are not part of the pack.
    assert not (staged / "data").exists()
    assert not (staged / "lib" / "__pycache__").exists()
    record = env.state()["packs"]["alpha"]["staged"]["1.0.0"]
    assert record["digest"] == result.json["result"]["digest"]
    assert env.audit()[-1]["event"] == "stage"
    assert tree_bytes(root)["lib/a.py"] == b"a\n"
    # Staging again with identical content changes nothing.
    again = env.run("stage", "--pack", "alpha", "--json")
    assert again.json["result"]["changed"] is False


def test_stage_artifact_hashes(env: Env) -> None:
    env.make_pack("alpha", artifacts=[("lib.py", "")], files={"lib.py": "x\n"})
    warned = env.run("stage", "--pack", "alpha")
    assert warned.code == 0
    assert "lib.py has no sha256" in warned.err
    required = env.run("stage", "--pack", "alpha", "--require-hashes")
    assert required.code == ExitCode.REFUSED
    assert "--require-hashes" in required.err


def test_stage_hash_mismatch_exit_4_nothing_staged(env: Env) -> None:
    env.make_pack("alpha", artifacts=[("lib.py", "0" * 64)], files={"lib.py": "x\n"})
    result = env.run("stage", "--pack", "alpha")
    assert result.code == ExitCode.REFUSED
    assert "pack.artifacts[0]: lib.py sha256 is" in result.err
    # Nothing of the failed stage stays: no empty staging/alpha/, no stub record.
    assert not (env.home / "staging" / "alpha").exists()
    assert "alpha" not in env.state()["packs"]


def test_validate_hash_mismatch_exit_4_writes_nothing(env: Env) -> None:
    env.make_pack("alpha", artifacts=[("lib.py", "0" * 64)], files={"lib.py": "x\n"})
    result = env.run("validate", "--pack", "alpha", "--json")
    assert result.code == ExitCode.REFUSED
    actual = hashlib.sha256(b"x\n").hexdigest()
    assert result.json["error"]["problems"] == [
        f"pack.artifacts[0]: lib.py sha256 is {actual}, the manifest pins {'0' * 64}"
    ]
    assert not env.home.exists()


def test_seal_pins_hashes_keeps_yaml_readable(env: Env) -> None:
    root = env.make_pack(
        "alpha", artifacts=[("lib.py", ""), ("b.bin", "")], files={"lib.py": "x\n", "b.bin": "bb"}
    )
    manifest = root / "manifest.yaml"
    manifest.write_text("# pinned by seal\n" + manifest.read_text())
    result = env.run("seal", "--pack", "alpha", "--json")
    assert result.code == 0
    text = manifest.read_text()
    assert text.startswith("# pinned by seal\n")
    pinned_lib = hashlib.sha256(b"x\n").hexdigest()
    pinned_bin = hashlib.sha256(b"bb").hexdigest()
    assert f'sha256: "{pinned_lib}"' in text
    assert f'sha256: "{pinned_bin}"' in text
    assert env.run("stage", "--pack", "alpha", "--require-hashes").code == 0
    (root / "lib.py").write_text("tampered\n")
    assert env.run("stage", "--pack", "alpha").code == ExitCode.REFUSED


def test_dry_run_fresh_home_plans_deps_and_changes_nothing_installed(env: Env) -> None:
    _install_chain(env)
    result = env.run("dry-run", "--pack", "top", "--json")
    assert result.code == 0, result.err
    plan = result.json["result"]["plan"]
    assert [(s["pack"], s["action"]) for s in plan["steps"]] == [
        ("base", "install"),
        ("mid", "install"),
        ("top", "install"),
    ]
    assert result.json["result"]["staged_now"] is True
    assert "dry run of top 1.0.0: ok" in result.err  # streamed (stderr in --json mode)
    assert env.active("top") is None
    assert not (env.home / "packs").exists()
    assert "dry run of top" in (env.home / "logs" / "top" / "install.log").read_text()


def test_dry_run_leaves_state_files_byte_identical(env: Env) -> None:
    _install_chain(env)
    assert env.run("install", "--pack", "mid", "--with-deps", "--approve").code == 0
    assert env.run("stage", "--pack", "top").code == 0
    before = {name: (env.home / name).read_bytes() for name in ("state.json", "audit.log")}
    installed_before = tree_bytes(env.home / "packs")
    result = env.run("dry-run", "--pack", "top")
    assert result.code == 0, result.err
    assert "dry run of top 1.0.0: ok" in result.out
    after = {name: (env.home / name).read_bytes() for name in ("state.json", "audit.log")}
    assert after == before
    assert tree_bytes(env.home / "packs") == installed_before


def test_dry_run_failing_script_exit_1_after_showing_the_plan(env: Env) -> None:
    env.make_pack("base", "0.1.0")
    env.make_pack(
        "alpha",
        deps=[("base", ">=0.1")],
        install='#!/usr/bin/env bash\necho "missing libfoo"\nexit 3\n',
    )
    result = env.run("dry-run", "--pack", "alpha")
    assert result.code == ExitCode.FAILED
    assert "exited 3" in result.err
    # The plan is shown before the script runs, so a failing script does not hide it.
    plan = result.out.index("1. install base 0.1.0")
    assert plan < result.out.index("2. install alpha 1.0.0") < result.out.index("missing libfoo")


def test_dry_run_unsatisfiable_dependency_exit_4(env: Env) -> None:
    env.make_pack("base", "0.1.0")
    env.make_pack("top", deps=[("base", ">=1.0"), ("ghost", "")])
    result = env.run("dry-run", "--pack", "top", "--json")
    assert result.code == ExitCode.REFUSED
    problems = result.json["error"]["problems"]
    assert any("needs base >=1.0: the packs directory has 0.1.0" in p for p in problems)
    assert any("needs ghost (any version): not found" in p for p in problems)


def test_dependency_cycle_reported(env: Env) -> None:
    env.make_pack("a", deps=[("b", "")])
    env.make_pack("b", deps=[("c", "")])
    env.make_pack("c", deps=[("a", "")])
    result = env.run("install", "--pack", "a", "--with-deps", "--approve")
    assert result.code == ExitCode.REFUSED
    assert "dependency cycle: a -> b -> c -> a" in result.err


def test_install_without_deps_refused_listing_missing(env: Env) -> None:
    _install_chain(env)
    result = env.run("install", "--pack", "top", "--approve", "--json")
    assert result.code == ExitCode.REFUSED
    problems = result.json["error"]["problems"]
    assert any("top needs mid ~=0.2" in p for p in problems)
    assert any("install base 0.1.0" in p for p in problems)
    assert "--with-deps" in result.json["error"]["message"]
    assert env.active("top") is None


def test_install_with_deps_in_order(env: Env) -> None:
    _install_chain(env)
    result = env.run("install", "--pack", "top", "--with-deps", "--approve", "--json")
    assert result.code == 0, result.err
    assert [s["pack"] for s in result.json["result"]["installed"]] == ["base", "mid", "top"]
    state = env.state()
    for pack_id, version in (("base", "0.1.0"), ("mid", "0.2.0"), ("top", "1.0.0")):
        assert state["packs"][pack_id]["active_version"] == version
        installed = env.home / "packs" / pack_id / version
        assert (installed / "manifest.yaml").is_file()
        data = env.home / "data" / pack_id
        assert (data / "installed-version").read_text().strip() == version
    env_txt = (env.home / "data" / "top" / "env.txt").read_text()
    assert f"AURORA_HOME={env.home}\n" in env_txt
    assert f"AURORA_PACK_ROOT={env.home}/packs/top/1.0.0\n" in env_txt
    assert f"AURORA_PACK_DATA={env.home}/data/top\n" in env_txt
    assert f"AURORA_PACK_RUN={env.home}/run/top\n" in env_txt
    assert f"AURORA_PACK_LOGS={env.home}/logs/top\n" in env_txt
    assert "AURORA_PACK_VERSION=1.0.0\n" in env_txt
    assert "PYTHON=" in env_txt
    # The dependency now installed, a plain install of the top pack needs no --with-deps.
    assert env.run("install", "--pack", "top", "--approve").code == 0


def test_approval_refused_without_terminal_exit_6(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.make_pack("alpha")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    result = env.run("install", "--pack", "alpha")
    assert result.code == ExitCode.APPROVAL
    assert "--approve" in result.err
    assert env.active("alpha") is None
    assert env.audit()[-1]["event"] == "approval-refused"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("answer", "code"), [("y\n", 0), ("n\n", 6), ("\n", 6)])
def test_approval_prompt_on_terminal(
    env: Env, monkeypatch: pytest.MonkeyPatch, answer: str, code: int
) -> None:
    env.make_pack("alpha")
    monkeypatch.setattr("sys.stdin", _Tty(answer))
    result = env.run("install", "--pack", "alpha")
    assert result.code == code
    assert "Approve? [y/N]" in result.err
    digest = env.state()["packs"]["alpha"]["staged"]["1.0.0"]["digest"]
    assert digest in result.err
    last = env.audit()[-2 if code == 0 else -1]
    if code == 0:
        assert last == {**last, "event": "approve", "digest": digest, "how": "prompt"}
        assert env.state()["packs"]["alpha"]["installed"]["approval"]["how"] == "prompt"
    else:
        assert last["event"] == "approval-denied"
        assert env.active("alpha") is None


def test_approval_flag_recorded_bound_to_digest(env: Env) -> None:
    env.make_pack("alpha")
    result = env.run("install", "--pack", "alpha", "--approve", "--json")
    assert result.code == 0
    digest = result.json["result"]["installed"][0]["digest"]
    approvals = [e for e in env.audit() if e["event"] == "approve"]
    assert approvals[-1]["digest"] == digest and approvals[-1]["how"] == "flag"


def test_no_approval_needed_when_manifest_says_so(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.make_pack("alpha", approval=False)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert env.run("install", "--pack", "alpha").code == 0


def test_staged_tree_changed_after_staging_refused(env: Env) -> None:
    env.make_pack("alpha")
    assert env.run("stage", "--pack", "alpha").code == 0
    staged = env.home / "staging" / "alpha" / "1.0.0"
    (staged / "install.sh").write_text("#!/usr/bin/env bash\necho evil\n")
    result = env.run("install", "--pack", "alpha", "--approve")
    assert result.code == ExitCode.REFUSED
    assert "changed since it was staged" in result.err
    assert env.active("alpha") is None
    assert not (env.home / "packs" / "alpha" / "1.0.0").exists()
    assert env.run("dry-run", "--pack", "alpha").code == ExitCode.REFUSED
    # Staging again replaces the tampered copy, and the install goes through.
    assert env.run("stage", "--pack", "alpha").code == 0
    assert "echo evil" not in (staged / "install.sh").read_text()
    assert env.run("install", "--pack", "alpha", "--approve").code == 0


def test_install_failure_keeps_previous_version(env: Env) -> None:
    env.make_pack("alpha", "1.0.0")
    assert env.run("install", "--pack", "alpha", "--approve").code == 0
    env.make_pack("alpha", "2.0.0", install='#!/usr/bin/env bash\necho "disk full"\nexit 1\n')
    result = env.run("install", "--pack", "alpha", "--approve", "--json")
    assert result.code == ExitCode.FAILED
    assert "1.0.0 stays active" in result.json["error"]["message"]
    assert "output: disk full" in result.json["error"]["problems"]
    record = env.state()["packs"]["alpha"]
    assert record["active_version"] == "1.0.0"
    assert record["last_result"]["ok"] is False
    assert sorted(p.name for p in (env.home / "packs" / "alpha").iterdir()) == ["1.0.0"]
    assert env.audit()[-1]["event"] == "install-failed"
    assert env.run("verify", "--pack", "alpha").code == 0


def test_reinstall_same_version_failure_restores_previous_copy(env: Env) -> None:
    root = env.make_pack("alpha", "1.0.0", files={"note.txt": "v1"})
    assert env.run("install", "--pack", "alpha", "--approve").code == 0
    (root / "note.txt").write_text("v1 changed")
    (root / "install.sh").write_text("#!/usr/bin/env bash\nexit 1\n")
    assert env.run("stage", "--pack", "alpha").code == 0
    assert env.run("install", "--pack", "alpha", "--approve").code == ExitCode.FAILED
    assert (env.home / "packs/alpha/1.0.0/note.txt").read_text() == "v1"
    assert env.run("verify", "--pack", "alpha").code == 0


def test_upgrade_replaces_active_version(env: Env) -> None:
    env.make_pack("alpha", "1.0.0")
    assert env.run("install", "--pack", "alpha", "--approve").code == 0
    env.make_pack("alpha", "1.1.0")
    result = env.run("install", "--pack", "alpha", "--approve", "--json")
    assert result.code == 0
    step = result.json["result"]["installed"][0]
    assert (step["action"], step["previous"]) == ("upgrade", "1.0.0")
    assert sorted(p.name for p in (env.home / "packs" / "alpha").iterdir()) == ["1.1.0"]
    record = env.state()["packs"]["alpha"]  # the schema says the two always agree
    assert record["active_version"] == record["installed"]["version"] == "1.1.0"


def test_install_script_timeout_kills_group(env: Env) -> None:
    env.make_pack("alpha", install="#!/usr/bin/env bash\nsleep 300 &\nsleep 300\n")
    result = env.run("install", "--pack", "alpha", "--approve", "--script-timeout", "1")
    assert result.code == ExitCode.FAILED
    assert "timed out" in result.err
    assert env.active("alpha") is None


def test_uninstall_keeps_data_unless_purge(env: Env) -> None:
    env.make_pack("alpha")
    assert env.run("install", "--pack", "alpha", "--approve").code == 0
    result = env.run("uninstall", "--pack", "alpha")
    assert result.code == 0
    assert not (env.home / "packs" / "alpha").exists()
    assert (env.home / "data" / "alpha" / "installed-version").exists()
    assert env.active("alpha") is None
    assert env.run("install", "--pack", "alpha", "--approve").code == 0
    assert env.run("uninstall", "--pack", "alpha", "--purge").code == 0
    assert not (env.home / "data" / "alpha").exists()


def test_uninstall_refused_while_depended_upon(env: Env) -> None:
    _install_chain(env)
    assert env.run("install", "--pack", "top", "--with-deps", "--approve").code == 0
    result = env.run("uninstall", "--pack", "base", "--json")
    assert result.code == ExitCode.REFUSED
    problems = result.json["error"]["problems"]
    assert problems == ["mid depends on base", "top depends on base"]
    assert env.active("base") == "0.1.0"
    forced = env.run("uninstall", "--pack", "base", "--force", "--json")
    assert forced.code == 0
    assert forced.json["result"]["forced_past"] == ["mid", "top"]


def test_verify_lists_changed_missing_extra(env: Env) -> None:
    env.make_pack("alpha", files={"a.txt": "a", "b.txt": "b"})
    assert env.run("install", "--pack", "alpha", "--approve").code == 0
    installed = env.home / "packs" / "alpha" / "1.0.0"
    assert env.run("verify", "--pack", "alpha").code == 0
    (installed / "a.txt").write_text("changed")
    (installed / "b.txt").unlink()
    (installed / "c.txt").write_text("new")
    (installed / "__pycache__").mkdir()
    (installed / "__pycache__" / "x.pyc").write_text("cache")  # caches are not the pack
    result = env.run("verify", "--pack", "alpha", "--json")
    assert result.code == ExitCode.FAILED
    assert result.json["error"]["problems"] == ["changed: a.txt", "missing: b.txt", "extra: c.txt"]


def test_status_reports_state_version_digest_approval_last_result(env: Env) -> None:
    env.make_pack("alpha")
    env.make_pack("beta")
    assert env.run("install", "--pack", "alpha", "--approve").code == 0
    assert env.run("stage", "--pack", "beta").code == 0
    result = env.run("status", "--pack", "alpha", "--json")
    assert result.code == 0
    status = result.json["result"]
    assert status["state"] == "installed"
    assert status["active_version"] == "1.0.0"
    assert status["digest"].startswith("tree-v1:sha256:")
    assert status["approval"]["how"] == "flag"
    assert status["last_result"]["op"] == "install" and status["last_result"]["ok"]
    every = env.run("status", "--json").json["result"]["packs"]
    assert {s["pack"]: s["state"] for s in every} == {"alpha": "installed", "beta": "staged"}
    human = env.run("status", "--pack", "alpha")
    assert "alpha: installed" in human.out and "approval  flag" in human.out
    assert env.run("status", "--pack", "nope").code == ExitCode.NOT_FOUND


@pytest.mark.parametrize(
    ("content", "said"),
    [
        pytest.param(b"{not json", "not valid JSON (line 1, column 2)", id="broken-json"),
        pytest.param(b"\xff\xfe{}", "not UTF-8 text (byte 0)", id="not-utf8"),
        pytest.param(
            b'{"schema": "aurora-state-v1", "packs": {"x": {"active_version": 5}}}',
            "packs/x/active_version: 5 is not of type",
            id="wrong-schema",
        ),
    ],
)
def test_corrupt_state_is_an_error_not_repaired(env: Env, content: bytes, said: str) -> None:
    env.make_pack("alpha")
    env.home.mkdir()
    (env.home / "state.json").write_bytes(content)
    for argv in (["stage", "--pack", "alpha"], ["status"], ["list"]):
        result = env.run(*argv)
        assert result.code == ExitCode.FAILED, argv
        assert said in result.err and "state.json" in result.err
        assert "Traceback" not in result.err
    assert (env.home / "state.json").read_bytes() == content


def test_json_output_is_exactly_one_document(env: Env) -> None:
    env.make_pack("alpha")
    for argv, code in (
        (["list"], ExitCode.OK),
        (["validate", "--pack", "alpha"], ExitCode.OK),
        (["stage", "--pack", "alpha"], ExitCode.OK),
        (["dry-run", "--pack", "alpha"], ExitCode.OK),
        (["install", "--pack", "alpha", "--approve"], ExitCode.OK),
        (["status"], ExitCode.OK),
        (["verify", "--pack", "alpha"], ExitCode.OK),
        (["start", "--pack", "alpha"], ExitCode.OK),
        (["health", "--pack", "alpha"], ExitCode.OK),
        (["stop", "--pack", "alpha"], ExitCode.OK),
        (["uninstall", "--pack", "alpha"], ExitCode.OK),
        (["verify", "--pack", "alpha"], ExitCode.NOT_FOUND),
    ):
        result = env.run(*argv, "--json")
        doc = json.loads(result.out)  # raises if anything else is on stdout
        assert (result.code, doc["exit_code"], doc["command"]) == (code, code, argv[0]), result.err


def test_dry_run_runs_in_the_staged_copy_with_the_environment_contract(env: Env) -> None:
    script = (
        "#!/usr/bin/env bash\nset -euo pipefail\n"
        'echo "mode=$1 root=$AURORA_PACK_ROOT cwd=$PWD"\n'
        'echo "id=$AURORA_PACK_ID $AURORA_PACK_VERSION data=$AURORA_PACK_DATA"\n'
        'echo "run=$AURORA_PACK_RUN logs=$AURORA_PACK_LOGS python=$PYTHON"\n'
    )
    env.make_pack("alpha", install=script)
    result = env.run("dry-run", "--pack", "alpha")
    assert result.code == 0, result.err
    staged = env.home / "staging" / "alpha" / "1.0.0"
    home = env.home
    assert f"mode=--dry-run root={staged} cwd={staged}" in result.out
    assert f"id=alpha 1.0.0 data={home}/data/alpha" in result.out
    assert f"run={home}/run/alpha logs={home}/logs/alpha python={sys.executable}" in result.out
    assert f"root={staged}" in (home / "logs" / "alpha" / "install.log").read_text()
    assert not (home / "data").exists() and not (home / "packs").exists()


def test_dry_run_script_timeout_kills_its_group(env: Env, tmp_path: Path) -> None:
    child_pid = tmp_path / "child.pid"
    env.make_pack(
        "alpha",
        install=f"#!/usr/bin/env bash\nsleep 300 &\necho $! > {child_pid}\nsleep 300\n",
    )
    # 3 s: time enough, on a loaded machine, for the script to start its child.
    result = env.run("dry-run", "--pack", "alpha", "--script-timeout", "3", "--json")
    assert result.code == ExitCode.FAILED
    assert "timed out" in result.json["error"]["message"]
    assert child_pid.exists(), "the script never started its child (machine overloaded?)"
    child = int(child_pid.read_text())
    assert wait_for(lambda: not alive(child)), "the dry run's background child survived"
    assert env.active("alpha") is None


def test_staged_tree_changed_after_approval_is_refused(env: Env) -> None:
    env.make_pack("alpha")
    staged = env.home / "staging" / "alpha" / "1.0.0"

    def approve_then_tamper(request: ApprovalRequest) -> str:
        (staged / "install.sh").write_text("#!/usr/bin/env bash\necho evil\n")
        return "flag"

    inst = Installer(env.home, env.packs_dir, approver=approve_then_tamper)
    with pytest.raises(IntegrityError, match="changed since it was staged and approved"):
        inst.install("alpha")
    assert env.active("alpha") is None
    assert not (env.home / "packs" / "alpha" / "1.0.0").exists()
    events = [e["event"] for e in env.audit()]
    assert events[-2:] == ["approve", "install-refused"]
    assert env.state()["packs"]["alpha"]["last_result"]["ok"] is False


def test_failures_in_json_mode_are_exactly_one_document(env: Env) -> None:
    env.make_pack("alpha", install="#!/usr/bin/env bash\necho 'no libfoo'\nexit 3\n")
    env.make_pack("beta", artifacts=[("lib.py", "")], files={"lib.py": "x\n"})
    for argv, code in (
        (["dry-run", "--pack", "alpha"], ExitCode.FAILED),
        (["install", "--pack", "alpha", "--approve"], ExitCode.FAILED),
        (["stage", "--pack", "beta", "--require-hashes"], ExitCode.REFUSED),
        (["uninstall", "--pack", "alpha"], ExitCode.NOT_FOUND),
        (["start", "--pack", "ghost"], ExitCode.NOT_FOUND),
        (["stage", "--pack", "alpha", "--wait", "abc"], ExitCode.USAGE),
    ):
        result = env.run(*argv, "--json")
        doc = json.loads(result.out)  # raises if anything else is on stdout
        assert (result.code, doc["exit_code"], doc["ok"]) == (code, code, False), argv
        assert doc["command"] == argv[0]
        assert doc["error"]["message"] in result.err
    sealed = env.run("seal", "--pack", "beta", "--json")
    assert sealed.code == 0 and json.loads(sealed.out)["result"]["written"] is True
