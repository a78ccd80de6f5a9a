"""Fault injection for pack05: every write can fail, every step can be killed, every state
file can be damaged. A newcomer's guide:

* ``Scenario`` is one state-changing command (stage, grant, enable, remove, policy, the
  inbox) with the data directory it starts from (``baseline``) and what it must leave.
* ``check`` is the one judgement, applied after every fault and after the next command
  (which settles whatever the fault interrupted):

  1. the state (registry records, staged files, policy) is the old one or the new one,
     never neither, and every registered version's files match its digest;
  2. the audit log's effective records are the old ones, or the old ones plus exactly this
     command's: every change that took effect is audited, a reported failure changed
     nothing;
  3. no traceback (a CLI run in-process that raised would fail the test itself).

* ENOSPC / inode exhaustion: the data directory lives on a small tmpfs, filled so that
  exactly ``k`` bytes (or inodes) are free, for a sweep of ``k`` from 0 up to what the
  command needs, so each of its writes is in turn the one that fails.
* SIGKILL: the command runs in a forked child whose ``n``-th file-system call (write,
  fsync, rename, link, unlink, mkdir, ...) kills it with SIGKILL, for every ``n`` until the
  command completes (the ``test_crash.py`` way of killing, at chosen moments).
* Corruption: each state file replaced by each damaged form; every command must refuse
  with exit 1 and change nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plugins
import pytest
from core import health, service
from core.audit import read_audit, read_audit_raw
from core.errors import PluginError
from core.loader import PluginLoader
from core.registry import PluginRegistry

from pack05_testlib import SmallFs, make_manifest, write_package

PACK_ROOT = Path(__file__).resolve().parent.parent
PAGE = 4096


# -- the state and the judgement ---------------------------------------------------------------


def state_of(data: Path) -> dict[str, Any]:
    """What the operator would see: records (without times), staged trees, the policy."""
    records = PluginRegistry(data).list()
    summary = {
        pid: {
            "enabled": r["enabled"],
            "active": r["active_version"],
            "granted": list(r["granted"]),
            "versions": {v: e["digest"] for v, e in r["versions"].items()},
        }
        for pid, r in records.items()
    }
    policy = data / "permissions.json"
    return {
        "plugins": summary,
        "policy": json.loads(policy.read_text()) if policy.exists() else None,
    }


def effective_audit(data: Path) -> list[tuple[str, str | None]]:
    return [(e["action"], e["id"]) for e in read_audit(data / "audit.log")]


def assert_one_outcome_each(data: Path) -> None:
    """Every change whose records were written has exactly one outcome, commit or abort:
    none would leave a change in flight for ever, two would count it twice."""
    outcomes: dict[str, list[str]] = {}
    for record in read_audit_raw(data / "audit.log"):
        if "txn" in record:
            got = outcomes.setdefault(record["txn"], [])
            if record["action"] in ("commit", "abort"):
                got.append(record["action"])
    wrong = {txn: got for txn, got in outcomes.items() if len(got) != 1}
    assert wrong == {}, f"changes without exactly one outcome: {wrong}"


def settle(data: Path) -> None:
    """What the next command does first: outcomes recorded, removals and stagings settled."""
    PluginLoader(data).recover(always=True)


def check(scenario: Scenario, data: Path, old: dict[str, Any], old_audit: list[Any]) -> str:
    """The three assertions; returns which state was found ("old" or "new")."""
    settle(data)
    now = state_of(data)
    audit = effective_audit(data)
    loader = PluginLoader(data)
    for pid, record in now["plugins"].items():
        for version in record["versions"]:
            assert loader.verify(pid, version) == [], (pid, version)
    staging = data / "staging"
    assert not staging.exists() or os.listdir(staging) == []
    assert not list(data.glob("*.txn"))
    # nothing a killed writer left: temp files, a decided content not placed
    assert not list(data.glob(".*.tmp")) and not list(data.glob("*.txn.new"))
    assert_one_outcome_each(data)
    if now == old:
        assert audit == old_audit
        return "old"
    for state, records in scenario.partial:
        if now == state:  # a documented step of a two-step command: rerunning finishes it
            assert audit == old_audit + records
            return "partial"
    assert now == scenario.new_state, "neither the old state nor the new one"
    assert audit == old_audit + scenario.new_audit
    return "new"


# -- scenarios ---------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    argv: list[str]  # plugins.py arguments; ["inbox"] runs one service scan instead
    new_state: dict[str, Any]
    new_audit: list[tuple[str, str | None]]
    # `policy --block` withdraws the capability in registry.json first, then writes the
    # policy (README, Permissions): killed in between, less is granted, never more.
    partial: list[tuple[dict[str, Any], list[tuple[str, str | None]]]] = field(default_factory=list)


def build_baseline(root: Path, src: Path) -> Path:
    """plugins/: acme.a (requests network, granted, enabled) and acme.b (disabled)."""
    data = root / "plugins"
    loader = PluginLoader(data)
    a = write_package(src / "a", make_manifest(id="acme.a", permissions=["network"]))
    b = write_package(src / "b", make_manifest(id="acme.b", permissions=["network"]))
    loader.stage_package(a)
    loader.stage_package(b)
    loader.registry.grant("acme.a", ["network"])
    loader.registry.enable("acme.a")
    return data


def scenarios(template: Path, src: Path) -> list[Scenario]:
    base = state_of(template)

    def changed(edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        new = json.loads(json.dumps(base))
        edit(new)
        return new

    pkg = write_package(
        src / "c", make_manifest(id="acme.c", permissions=None), {"main.py": "x" * 9000}
    )
    archive = src / "acme.c.tar.gz"
    zipped = src / "acme.c.zip"
    if not archive.exists():
        import tarfile
        import zipfile

        with tarfile.open(archive, "w:gz") as tf:
            tf.add(pkg, arcname="acme.c")
        with zipfile.ZipFile(zipped, "w") as zf:
            for path in sorted(pkg.rglob("*")):
                zf.write(path, f"acme.c/{path.relative_to(pkg)}")
    from core.loader import PluginLoader as _L

    digest = _L(src / "scratch").stage_package(pkg)["digest"]
    shutil.rmtree(src / "scratch")
    c_record = {"enabled": False, "active": "1.0.0", "granted": [], "versions": {"1.0.0": digest}}

    def add_c(s: dict[str, Any]) -> None:
        s["plugins"]["acme.c"] = c_record

    def grant_b(s: dict[str, Any]) -> None:
        s["plugins"]["acme.b"]["granted"] = ["network"]

    def enable_b(s: dict[str, Any]) -> None:
        grant_b(s)
        s["plugins"]["acme.b"]["enabled"] = True

    def remove_a(s: dict[str, Any]) -> None:
        del s["plugins"]["acme.a"]

    def withdraw(s: dict[str, Any]) -> None:
        s["plugins"]["acme.a"]["granted"] = []
        s["plugins"]["acme.a"]["enabled"] = False

    def block(s: dict[str, Any]) -> None:
        withdraw(s)
        s["policy"] = {
            "schema": "aurora-plugin-permissions-v1",
            "allowed": [],
            "blocked": ["network"],
        }

    return [
        Scenario("stage", ["stage", str(pkg)], changed(add_c), [("register", "acme.c")]),
        Scenario("stage-tar", ["stage", str(archive)], changed(add_c), [("register", "acme.c")]),
        Scenario("stage-zip", ["stage", str(zipped)], changed(add_c), [("register", "acme.c")]),
        Scenario("grant", ["grant", "acme.b", "network"], changed(grant_b), [("grant", "acme.b")]),
        Scenario("remove", ["remove", "acme.a"], changed(remove_a), [("unregister", "acme.a")]),
        Scenario(
            "policy",
            ["policy", "--block", "network"],
            changed(block),
            # one change that rolls forward (core/txn.py): its intent, then the withdrawal;
            # never half of it (no ``partial`` state), whatever step fails or is killed
            [("policy", None), ("revoke", "acme.a"), ("disable", "acme.a")],
        ),
        Scenario("inbox", ["inbox", str(archive)], changed(add_c), [("register", "acme.c")]),
    ]


def enable_scenario(template: Path) -> Scenario:
    """enable needs acme.b granted first: its baseline is the grant scenario's result."""
    new = state_of(template)
    new["plugins"]["acme.b"]["enabled"] = True
    return Scenario("enable", ["enable", "acme.b"], new, [("enable", "acme.b")])


def prepare(scenario: Scenario, data: Path) -> None:
    """The inbox scenario's item, dropped in before the disk is filled."""
    if scenario.argv[0] == "inbox":
        for sub in ("inbox", "quarantine"):
            (data / sub).mkdir(exist_ok=True)
        item = data / "inbox" / Path(scenario.argv[1]).name
        if not item.exists():
            shutil.copy(scenario.argv[1], item)


def run(scenario: Scenario, data: Path, tmp: Path) -> int:
    """Run the command in this process; the exit code (0 or 1: never a traceback)."""
    if scenario.argv[0] != "inbox":
        return plugins.main([*scenario.argv, "--data", str(data)])
    prepare(scenario, data)
    item = data / "inbox" / Path(scenario.argv[1]).name
    run_dir = tmp / "run"
    run_dir.mkdir(exist_ok=True)
    paths = health.Paths(str(PACK_ROOT), str(tmp / "d"), str(run_dir), str(tmp / "logs"))
    svc = service.InboxService(
        data,
        paths,
        PluginLoader(data),
        interval=0.01,
        settle=0.0,
        is_refusal=lambda exc: isinstance(exc, PluginError),
    )
    svc.scan_once()
    assert os.listdir(data / "quarantine") == []  # a valid archive is never quarantined
    return 0 if not item.exists() else 1


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Templates built once: the baseline, the baseline after `grant acme.b network`."""
    root = tmp_path_factory.mktemp("faults")
    src = root / "src"
    template = build_baseline(root / "t1", src)
    after_grant = root / "t2" / "plugins"
    shutil.copytree(template, after_grant, symlinks=True)
    PluginRegistry(after_grant).grant("acme.b", ["network"])
    found = {s.name: (template, s) for s in scenarios(template, src)}
    found["enable"] = (after_grant, enable_scenario(after_grant))
    return found


NAMES = ["stage", "stage-tar", "stage-zip", "grant", "enable", "remove", "policy", "inbox"]


def fresh(template: Path, where: Path) -> Path:
    if where.exists():
        shutil.rmtree(where)
    shutil.copytree(template, where, symlinks=True)
    return where


# -- ENOSPC and inode exhaustion ---------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_disk_full_at_every_write_leaves_the_old_state_or_the_new(
    world: dict[str, Any],
    small_fs: Callable[..., SmallFs],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
) -> None:
    template, scenario = world[name]
    fs = small_fs(size=4 << 20, inodes=2048)
    old = state_of(template)
    old_audit = effective_audit(template)
    seen: dict[str, int] = {}
    for free in [*range(0, 24 * PAGE, PAGE), 40 * PAGE, 200 * PAGE]:
        data = fresh(template, fs.root / "plugins")
        prepare(scenario, data)
        fs.fill(free=free)
        capsys.readouterr()
        code = run(scenario, data, tmp_path)
        err = capsys.readouterr().err
        fs.unfill()
        found = check(scenario, data, old, old_audit)
        assert (code == 0) == (found == "new"), (free, code, found)
        if code and name != "inbox":  # disk full: the message names the file (issue 9)
            assert f"{data}/" in err and "No space left on device" in err, (free, err)
        if found == "partial":
            assert run(scenario, data, tmp_path) == 0
            assert check(scenario, data, old, old_audit) == "new"
        seen[found] = seen.get(found, 0) + 1
    if name == "remove":
        assert set(seen) == {"new"}, seen  # remove works on a full disk (the space reserve)
    else:
        assert seen.get("old") and seen.get("new"), seen  # the sweep crossed the boundary


@pytest.mark.parametrize("name", NAMES)
def test_no_free_inode_at_every_creation_leaves_the_old_state_or_the_new(
    world: dict[str, Any], small_fs: Callable[..., SmallFs], tmp_path: Path, name: str
) -> None:
    template, scenario = world[name]
    fs = small_fs(size=8 << 20, inodes=400)
    old = state_of(template)
    old_audit = effective_audit(template)
    seen: dict[str, int] = {}
    for inodes in [*range(0, 14), 40]:
        data = fresh(template, fs.root / "plugins")
        prepare(scenario, data)
        fs.fill(inodes=inodes)
        code = run(scenario, data, tmp_path)
        fs.unfill()
        found = check(scenario, data, old, old_audit)
        assert (code == 0) == (found == "new"), (inodes, code, found)
        seen[found] = seen.get(found, 0) + 1
    assert seen.get("new"), seen


# -- SIGKILL at every step ---------------------------------------------------------------------

_STEPS = (
    "write",
    "fsync",
    "fdatasync",
    "replace",
    "rename",
    "link",
    "unlink",
    "rmdir",
    "mkdir",
    "symlink",
    "ftruncate",
    "posix_fallocate",
)


def _run_killed_at(scenario: Scenario, data: Path, tmp: Path, step: int) -> bool:
    """Run the command in a child that SIGKILLs itself at its ``step``-th file-system call;
    True when it was killed (False: it finished before reaching that step)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        count = [0]
        for name in _STEPS:
            real = getattr(os, name)

            def wrapped(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
                count[0] += 1
                if count[0] == step:
                    os.kill(os.getpid(), signal.SIGKILL)
                return _real(*args, **kwargs)

            setattr(os, name, wrapped)
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
        try:
            code = run(scenario, data, tmp)
        except BaseException:
            code = 99  # an exception escaped: the parent fails the test
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status):
        assert os.WEXITSTATUS(status) in (0, 1), f"step {step}: exit {os.WEXITSTATUS(status)}"
        return False
    assert os.WTERMSIG(status) == signal.SIGKILL
    return True


@pytest.mark.parametrize("name", NAMES)
def test_sigkill_at_every_step_leaves_the_old_state_or_the_new(
    world: dict[str, Any], tmp_path: Path, name: str
) -> None:
    template, scenario = world[name]
    old = state_of(template)
    old_audit = effective_audit(template)
    found: dict[str, int] = {}
    for step in range(1, 500):
        data = fresh(template, tmp_path / "plugins")
        killed = _run_killed_at(scenario, data, tmp_path, step)
        result = check(scenario, data, old, old_audit)
        found[result] = found.get(result, 0) + 1
        if result == "partial":
            assert run(scenario, data, tmp_path) == 0  # "if interrupted, run it again"
            assert check(scenario, data, old, old_audit) == "new"
        if not killed:
            assert result == "new"
            break
    else:
        pytest.fail("the command never finished within 500 steps")
    assert found.get("old") and found.get("new"), found


# -- every state file corrupted every way ------------------------------------------------------


def _corrupt(path: Path, how: str, tmp: Path) -> None:
    good = path.read_bytes() if path.is_file() else b'{"txn": "x"}'
    if path.exists() or path.is_symlink():
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
    if how == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"\xff\xfe not json \x00")
    elif how == "wrong-shape":
        doc = json.loads(good)
        if "plugins" in doc:
            for record in doc["plugins"].values():
                record["granted"] = "network"
        else:
            doc["allowed"] = "network"
            doc["txn"] = 7
        path.write_text(json.dumps(doc))
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "directory":
        path.mkdir()
    elif how == "symlink":
        (tmp / "target.json").write_bytes(good)
        path.symlink_to(tmp / "target.json")
    elif how == "huge":
        with open(path, "wb") as f:
            f.truncate(65 * 2**20)


CORRUPTIONS = [
    "truncated",
    "empty",
    "garbage",
    "wrong-shape",
    "fifo",
    "directory",
    "symlink",
    "huge",
]
FILES = ["registry.json", "permissions.json", "registry.json.txn", "permissions.json.txn"]


def _fingerprint(data: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in sorted(data.rglob("*")):
        rel = str(p.relative_to(data))
        if rel.startswith(("staging", "space.reserve")) or p.name.endswith(".lock"):
            continue
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_file():
            out[rel] = ("file", p.stat().st_size, p.read_bytes()[:4096])
        else:
            out[rel] = ("other", p.stat().st_mode & 0o170000)
    return out


# Which commands read each file (and so must refuse when it is damaged); the others do
# not depend on it (README: "When permissions.json is edited by hand").
READERS = {
    "registry.json": ["stage", "grant", "enable", "remove", "policy", "list"],
    "permissions.json": ["stage", "grant", "enable", "policy"],
    "registry.json.txn": ["stage", "grant", "enable", "remove", "policy"],
    "permissions.json.txn": ["policy"],
}


@pytest.mark.parametrize("how", CORRUPTIONS)
@pytest.mark.parametrize("name", FILES)
def test_every_state_file_corrupted_every_way_is_refused_and_changes_nothing(
    world: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    how: str,
) -> None:
    template, _ = world["grant"]
    data = fresh(template, tmp_path / "plugins")
    policy = {"schema": "aurora-plugin-permissions-v1", "allowed": [], "blocked": []}
    (data / "permissions.json").write_text(json.dumps(policy))
    _corrupt(data / name, how, tmp_path)
    before = _fingerprint(data)
    pkg = write_package(tmp_path / "pkg", make_manifest(id="acme.new", permissions=None))
    commands = {
        "stage": ["stage", str(pkg)],
        "grant": ["grant", "acme.b", "network"],
        "enable": ["enable", "acme.a"],
        "remove": ["remove", "acme.b"],
        "policy": ["policy", "--block", "io"],
        "list": ["list"],
    }
    signal.alarm(60)  # a hang fails the test instead of blocking the suite
    try:
        for verb in READERS[name]:
            code = plugins.main([*commands[verb], "--data", str(data)])
            _, err = capsys.readouterr()
            assert "Traceback" not in err
            assert code == 1, (verb, code, err)
            assert str(data / name) in err, (verb, err)
            assert _fingerprint(data) == before, verb
    finally:
        signal.alarm(0)


def test_a_damaged_audit_line_is_skipped_and_appends_go_on(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template, _ = world["grant"]
    data = fresh(template, tmp_path / "plugins")
    with open(data / "audit.log", "ab") as f:
        f.write(b'{"action": "cut mid-rec')  # a power loss mid-append
    assert plugins.main(["grant", "acme.b", "network", "--data", str(data)]) == 0
    assert effective_audit(data)[-1] == ("grant", "acme.b")
    lines = (data / "audit.log").read_bytes().split(b"\n")
    assert b'{"action": "cut mid-rec' in lines  # kept on its own line, not glued
