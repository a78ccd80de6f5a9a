"""The adversary's pack05 findings of round 9 (reports/adv9.md F2, F3, F4, F6), as tests.

F2 (exactly one outcome per change after any kill) is swept in ``test_faults.py``
(``assert_one_outcome_each`` after every SIGKILL step and every ENOSPC); here are its two
moments by name, and the decided content's own damage.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import plugins
import pytest
from core.audit import read_audit_raw
from core.loader import PluginLoader
from core.registry import PluginRegistry

from pack05_testlib import make_manifest, make_tar, make_zip, tar_file, write_package


def _cli(capsys: pytest.CaptureFixture[str], data: Path, *argv: str) -> tuple[int, str, str]:
    code = plugins.main(["--data", str(data), *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture
def two(tmp_path: Path) -> Path:
    """plugins/ with acme.a (requests network, granted, enabled) and acme.b (disabled)."""
    data = tmp_path / "plugins"
    loader = PluginLoader(data)
    for pid in ("acme.a", "acme.b"):
        loader.stage_package(
            write_package(tmp_path / "src" / pid, make_manifest(id=pid, permissions=["network"]))
        )
    loader.registry.grant("acme.a", ["network"])
    loader.registry.enable("acme.a")
    return data


def _outcomes(data: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for r in read_audit_raw(data / "audit.log"):
        if "txn" in r:
            found.setdefault(r["txn"], [])
            if r["action"] in ("commit", "abort"):
                found[r["txn"]].append(r["action"])
    return found


# -- F2: the two moments the adversary's kills hit ---------------------------------------------


def test_a_block_killed_right_after_its_intent_gets_its_abort_and_leaves_no_temp_file(
    two: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Case 189: killed after the intent was appended, before the change was decided."""
    before = json.loads((two / "registry.json").read_text())["plugins"]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child: killed as it decides (temp file written)
        real = os.rename

        def rename(src: Any, dst: Any) -> None:
            if str(dst).endswith("/permissions.json.txn.new"):
                os.kill(os.getpid(), signal.SIGKILL)
            real(src, dst)

        os.rename = rename  # type: ignore[assignment]
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
        os._exit(plugins.main(["--data", str(two), "policy", "--block", "network"]))
    os.waitpid(pid, 0)
    assert list(two.glob(".permissions.json.*.tmp"))  # what the adversary found
    assert _cli(capsys, two, "list")[0] == 0
    assert json.loads((two / "registry.json").read_text())["plugins"] == before
    assert not (two / "permissions.json").exists()
    policy = [r["txn"] for r in read_audit_raw(two / "audit.log") if r["action"] == "policy"]
    assert len(policy) == 1 and _outcomes(two)[policy[0]] == ["abort"]
    assert all(len(o) == 1 for o in _outcomes(two).values()), _outcomes(two)
    assert [p.name for p in two.glob(".permissions.json.*")] == []
    assert [p.name for p in two.glob("*.txn*")] == []


@pytest.mark.parametrize("argv", [["policy", "--block", "network"], ["disable", "acme.a"]])
def test_a_change_killed_after_its_commit_line_is_not_committed_twice(
    two: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """Case 140: killed between appending ``commit`` and removing the marker (every
    audited_replace* user: the policy's and the registry's)."""
    target = "permissions.json" if argv[0] == "policy" else "registry.json"
    _killed_when_after_commit(two, argv, target)
    assert (two / f"{target}.txn").exists()  # the kill left the marker
    assert _cli(capsys, two, "list")[0] == 0
    assert not (two / f"{target}.txn").exists()
    wrong = {t: o for t, o in _outcomes(two).items() if len(o) != 1}
    assert wrong == {}


def _killed_when_after_commit(data: Path, argv: list[str], target: str) -> None:
    """Kill the CLI when it removes ``target``'s marker (its commit line is written)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        real = Path.unlink

        def unlink(self: Path, missing_ok: bool = False) -> None:
            if self.name == f"{target}.txn":
                os.kill(os.getpid(), signal.SIGKILL)
            real(self, missing_ok=missing_ok)

        Path.unlink = unlink  # type: ignore[method-assign]
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
        os._exit(plugins.main(["--data", str(data), *argv]))
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)


def test_a_failed_withdrawal_whose_abort_cannot_be_written_is_aborted_by_the_next_command(
    two: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full for the registry and for the abort line: the marker stays (undecided),
    the next command records the abort; the change never happens later."""
    import core.txn as txn

    real = txn.append_audit

    def no_abort(path: Path, record: Any) -> None:
        if record.get("action") == "abort":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, record)

    def full(self: Any, blocked: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(two / "registry.json"))

    monkeypatch.setattr(txn, "append_audit", no_abort)
    monkeypatch.setattr(PluginRegistry, "enforce_blocked", full)
    assert _cli(capsys, two, "policy", "--block", "network")[0] == 1
    monkeypatch.undo()
    assert (two / "permissions.json.txn").exists()
    assert not (two / "permissions.json.txn.new").exists()  # undecided
    assert _cli(capsys, two, "list")[0] == 0
    assert not (two / "permissions.json").exists()
    record = PluginRegistry(two).get("acme.a")
    assert record is not None and record["granted"] == ["network"]
    policy = [r["txn"] for r in read_audit_raw(two / "audit.log") if r["action"] == "policy"]
    assert _outcomes(two)[policy[0]] == ["abort"]


def test_a_damaged_decided_content_is_refused_naming_it(
    two: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed once decided (the rename over permissions.json never came), then the decided
    content damaged: the next policy change refuses, naming the file, and changes nothing."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        real = os.replace

        def replace(src: Any, dst: Any) -> None:
            if str(dst).endswith("/permissions.json"):
                os.kill(os.getpid(), signal.SIGKILL)
            real(src, dst)

        os.replace = replace  # type: ignore[assignment]
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
        os._exit(plugins.main(["--data", str(two), "policy", "--block", "network"]))
    os.waitpid(pid, 0)
    decided = two / "permissions.json.txn.new"
    assert decided.exists()
    decided.write_text('{"schema": "aurora-plugin-permissions-v1", "allowed": ["network"]}')
    code, _, err = _cli(capsys, two, "policy", "--allow", "io")
    assert code == 1 and str(decided) in err
    assert not (two / "permissions.json").exists()


# -- F4: one reader of registry.json -------------------------------------------------------------


def _duplicate(data: Path, pid: str) -> None:
    """A second line for ``pid``, identical but enabled (the adversary's edit)."""
    lines = (data / "registry.json").read_text().split("\n")
    i = next(k for k, line in enumerate(lines) if line.startswith(f'"{pid}"'))
    copy = lines[i].rstrip(",").replace('"enabled":false', '"enabled":true')
    lines.insert(i, copy + ",")  # before it: the file stays valid JSON
    (data / "registry.json").write_text("\n".join(lines))


def test_a_duplicate_plugin_key_is_refused_by_show_and_list_alike(
    two: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _duplicate(two, "acme.b")
    for argv in (["show", "acme.b"], ["list"], ["show", "acme.a"], ["enable", "acme.b"]):
        code, out, err = _cli(capsys, two, *argv)
        assert code == 1, (argv, out)
        assert str(two / "registry.json") in err and "duplicate key 'acme.b'" in err, err


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda t: t.replace('"enabled":false', '"enabled":NaN', 1), id="nan"),
        pytest.param(lambda t: t.replace('"Echo"', '"Ec\udcffho"', 1), id="bad-utf8"),
        pytest.param(
            lambda t: t.replace('"enabled":false', '"enabled":false,"enabled":true', 1),
            id="duplicate-inner-key",
        ),
        pytest.param(lambda t: t.replace('"granted":[]', '"granted":"network"', 1), id="shape"),
    ],
)
def test_show_refuses_a_registry_that_list_refuses(
    two: Path, capsys: pytest.CaptureFixture[str], damage: Any
) -> None:
    """Damage in acme.b's record: ``show acme.a`` (whose own line is fine) refuses too."""
    path = two / "registry.json"
    text = path.read_text()
    b = next(line for line in text.split("\n") if line.startswith('"acme.b"'))
    damaged = damage(b)
    assert damaged != b
    path.write_bytes(
        text.replace(b, damaged).encode("utf-8", "surrogateescape")
    )  # bad-utf8: a raw 0xff byte
    assert _cli(capsys, two, "list")[0] == 1
    code, out, err = _cli(capsys, two, "show", "acme.a")
    assert code == 1 and str(path) in err, out


def test_a_file_this_module_wrote_is_read_fast_and_any_other_is_checked_whole(
    two: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast paths stay: a cold ``get`` of a registry we wrote parses no other record,
    a cold ``list`` of it skips the strict (duplicate-refusing) parse; after a hand edit
    (even to identical bytes) ``get`` checks the whole file, strictly."""
    calls: list[bool] = []
    real = PluginRegistry._parse

    def counting(self: PluginRegistry, raw: bytes, *, frozen: bool, strict: bool = True) -> Any:
        calls.append(strict)
        return real(self, raw, frozen=frozen, strict=strict)

    monkeypatch.setattr(PluginRegistry, "_parse", counting)
    record = PluginRegistry(two).get("acme.a")
    assert record is not None and record["enabled"] is True and calls == []
    assert "acme.b" in PluginRegistry(two).list() and calls == [False]
    text = (two / "registry.json").read_bytes()
    (two / "registry.json").unlink()
    (two / "registry.json").write_bytes(text)  # same bytes, not known good any more
    assert PluginRegistry(two).get("acme.a") == record and calls == [False, True]


def test_a_damaged_or_stale_known_good_record_only_costs_a_full_read(
    two: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checked = two / "registry.json.checked"
    assert checked.is_file()
    _duplicate(two, "acme.b")
    st = os.lstat(two / "registry.json")  # even claiming the edited file is good ...
    fake = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns - 1]
    checked.write_text(json.dumps(fake))
    assert _cli(capsys, two, "show", "acme.a")[0] == 1  # ... with a stale ctime: refused
    for junk in (b"", b"garbage", b"[1, 2]"):
        checked.write_bytes(junk)
        assert _cli(capsys, two, "show", "acme.a")[0] == 1


# -- F3: disk full while an archive is extracted names the file ----------------------------------


@pytest.mark.parametrize("kind", ["tar.gz", "zip", "dir"])
def test_disk_full_while_extracting_names_the_file_being_written(
    tmp_path: Path, small_fs: Any, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    src = write_package(
        tmp_path / "src" / "acme.big",
        make_manifest(id="acme.big", permissions=None),
        {"main.py": "print(1)\n", "blob.bin": os.urandom(400_000)},
    )
    if kind == "tar.gz":
        members = [tar_file(p.name, p.read_bytes()) for p in sorted(src.iterdir())]
        pkg = make_tar(tmp_path / "acme.big.tar.gz", members)
    elif kind == "zip":
        members_z = [(p.name, p.read_bytes(), 0o100644) for p in sorted(src.iterdir())]
        pkg = make_zip(tmp_path / "acme.big.zip", members_z)
    else:
        pkg = src
    fs = small_fs(size=2 << 20)
    data = fs.root / "plugins"
    PluginLoader(data).recover(always=True)
    fs.fill(free=200_000)
    code, _, err = _cli(capsys, data, "--json", "stage", str(pkg))
    assert code == 1, err
    envelope = json.loads(err or "{}") if err.startswith("{") else None
    text = err if envelope is None else json.dumps(envelope)
    assert "No space left on device" in text
    assert str(data / "staging") in text and "blob.bin" in text, text
    fs.unfill()


# -- F6: a removal whose files cannot be deleted never blocks the next ---------------------------


def _chattr(flag: str, path: Path) -> bool:
    done = subprocess.run(["chattr", flag, str(path)], capture_output=True, check=False)
    return done.returncode == 0


def test_an_undeletable_leftover_never_blocks_a_later_remove_and_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "plugins"
    pkg = write_package(tmp_path / "src", make_manifest(id="acme.hb", permissions=None))
    assert _cli(capsys, data, "stage", str(pkg))[0] == 0
    stuck = data / "packages" / "acme.hb" / "1.0.0" / "main.py"
    if not _chattr("+i", stuck):
        pytest.skip("chattr +i is not supported here")
    try:
        code, out, err = _cli(capsys, data, "remove", "acme.hb")
        assert code == 0 and "removed: acme.hb" in out
        left = [p for p in (data / "staging").rglob("main.py")]
        # named with its full path (stderr in a real run; pytest captures the log)
        assert len(left) == 1 and str(left[0]) in err + caplog.text, err
        for _ in range(2):  # stage and remove again, twice: the leftover blocks nothing
            assert _cli(capsys, data, "stage", str(pkg))[0] == 0
            code, out, err = _cli(capsys, data, "remove", "acme.hb")
            assert code == 0, err
        assert PluginRegistry(data).get("acme.hb") is None
        assert _cli(capsys, data, "stage", str(pkg))[0] == 0  # the id is usable
    finally:
        for p in (data / "staging").rglob("main.py"):
            _chattr("-i", p)
        _chattr("-i", stuck) if stuck.exists() else None
    # once deletable, the next command that settles staging deletes the leftover
    assert _cli(capsys, data, "remove", "acme.hb")[0] == 0
    assert list((data / "staging").iterdir()) == []


def test_a_file_system_mounted_inside_a_plugin_is_not_emptied_by_its_removal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Its files are not the plugin's: the removal is done, the mount is named, nothing in
    it is deleted, and later removals of the id work."""
    data = tmp_path / "plugins"
    pkg = write_package(tmp_path / "src", make_manifest(id="acme.hb", permissions=None))
    assert _cli(capsys, data, "stage", str(pkg))[0] == 0
    point = data / "packages" / "acme.hb" / "1.0.0" / "mnt"
    point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    (point / "precious").write_text("not the plugin's")
    try:
        code, out, err = _cli(capsys, data, "remove", "acme.hb")
        assert code == 0 and "removed: acme.hb" in out
        [kept] = list((data / "staging").rglob("precious"))
        assert kept.read_text() == "not the plugin's"
        assert f"{kept.parent}: a file system is mounted here" in err + caplog.text
        assert not (kept.parent.parent / "main.py").exists()  # the plugin's own files went
        assert _cli(capsys, data, "stage", str(pkg))[0] == 0
        assert _cli(capsys, data, "remove", "acme.hb")[0] == 0
    finally:  # wherever the mount went (renamed with its directory), it goes
        for line in Path("/proc/self/mounts").read_text().splitlines():
            where = line.split(" ")[1]
            if where.startswith(f"{data}/"):
                subprocess.run(["umount", where], capture_output=True)
    assert _cli(capsys, data, "stage", str(pkg))[0] == 0  # settles the leftover: gone now
    assert list((data / "staging").iterdir()) == []
