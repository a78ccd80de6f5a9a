"""Plugin uids are claimed host-wide: two installations on one host never share one (F10).

Each "installation" here is a launcher data dir with its own identities.json; all of
them claim in the test's claims dir (conftest ``uid_claims``), as every installation
of a host claims in /var/lib/aurora/plugin-uids.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from launcher import cli, datadir, diskimage, identity, status
from launcher.errors import LauncherError
from launcher.identity import CLAIM_SCHEMA, FIRST_ID, SCHEMA, read_identities
from launcher.paths import Paths
from launcher.supervisor import Supervisor
from launcher_testing import (
    PASSTHROUGH_ROOT,
    FakeRegistry,
    LoopThread,
    fast_settings,
    read_pid,
    real_sandbox_root,
    run_until_started,
    run_until_state,
    wait_until,
)


def _nobody_uses(number: int) -> bool:
    return False


def _home(base: Path, name: str, claims: Path) -> Paths:
    """The files of one installation under ``base/name`` (pack04's data dir ``data``)."""
    root = base / name
    registry = FakeRegistry(root / "pack05" / "plugins")
    registry.write()
    return Paths(home=None, root=PASSTHROUGH_ROOT.parent.parent, data=root / "data",
                 run=root / "run", logs=root / "logs", registry=registry.path,
                 uid_claims=claims)  # fmt: skip


def _allocate(paths: Paths, plugin_id: str) -> int:
    return identity.allocate(paths.identities, paths.identities_lock, paths.audit_log,
                             plugin_id, paths.uid_claims, paths.data, _nobody_uses)  # fmt: skip


def _claim(claims: Path, number: int) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((claims / str(number)).read_text())
    return doc


def _audit(paths: Paths) -> list[dict[str, Any]]:
    return [json.loads(line) for line in paths.audit_log.read_text().splitlines()]


def _record(paths: Paths, plugin_id: str, uid: int) -> None:
    """What a home from before host-wide claims recorded by itself."""
    paths.data.mkdir(parents=True, exist_ok=True)
    paths.identities.write_text(json.dumps(
        {"schema": SCHEMA, "plugins": {plugin_id: {"uid": uid, "gid": uid}}}))  # fmt: skip


def test_two_installations_get_disjoint_uids_each_claim_naming_its_owner(
    tmp_path: Path, uid_claims: Path
) -> None:
    a, b = _home(tmp_path, "A", uid_claims), _home(tmp_path, "B", uid_claims)
    got: dict[str, list[int]] = {"A": [], "B": []}
    for i in range(3):  # interleaved, as two hosts' worth of first plugins would be
        got["A"].append(_allocate(a, f"acme.p{i}"))
        got["B"].append(_allocate(b, f"acme.p{i}"))
    assert not set(got["A"]) & set(got["B"]), got
    assert sorted(got["A"] + got["B"]) == list(range(FIRST_ID, FIRST_ID + 6))
    assert [_allocate(a, f"acme.p{i}") for i in range(3)] == got["A"]  # stable
    for home, paths in (("A", a), ("B", b)):
        for i, uid in enumerate(got[home]):
            assert _claim(uid_claims, uid) == {
                "schema": CLAIM_SCHEMA,
                "installation": str(paths.data.resolve()),
                "plugin": f"acme.p{i}",
            }
            assert stat.S_IMODE(os.lstat(uid_claims / str(uid)).st_mode) == 0o600
    st = os.stat(uid_claims)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o700)
    assert sorted(os.listdir(uid_claims)) == sorted(str(n) for n in got["A"] + got["B"])


def test_a_recorded_uid_another_installation_claims_is_replaced_recorded_and_audited(
    tmp_path: Path, uid_claims: Path
) -> None:
    a, b = _home(tmp_path, "A", uid_claims), _home(tmp_path, "B", uid_claims)
    assert _allocate(a, "acme.victim") == FIRST_ID
    _record(b, "acme.cross", FIRST_ID)  # B's own history gave the same number (F10)
    new = _allocate(b, "acme.cross")
    assert new != FIRST_ID
    assert read_identities(b.identities) == {"acme.cross": new}
    assert _claim(uid_claims, FIRST_ID)["installation"] == str(a.data.resolve())  # A keeps it
    assert _claim(uid_claims, new)["installation"] == str(b.data.resolve())
    (last,) = _audit(b)
    assert (last["action"], last["plugin"], last["previous_uid"], last["uid"]) == (
        "reallocate-identity", "acme.cross", FIRST_ID, new)  # fmt: skip
    assert str(a.data.resolve()) in last["why"]
    assert _allocate(b, "acme.cross") == new  # and it stays


def test_a_recorded_uid_nobody_claims_is_claimed_again_unless_the_host_uses_it(
    tmp_path: Path, uid_claims: Path
) -> None:
    old = _home(tmp_path, "old", uid_claims)
    _record(old, "acme.kept", FIRST_ID + 5)  # a home from before claims: the number is kept
    assert _allocate(old, "acme.kept") == FIRST_ID + 5
    assert _claim(uid_claims, FIRST_ID + 5)["plugin"] == "acme.kept"
    assert [r["action"] for r in _audit(old)] == ["claim-identity"]
    # An unclaimed number a live process runs as (an old installation's plugin) is not
    # taken over: the plugin gets another one.
    other = _home(tmp_path, "other", uid_claims)
    _record(other, "acme.moved", FIRST_ID + 7)
    got = identity.allocate(other.identities, other.identities_lock, other.audit_log,
                            "acme.moved", uid_claims, other.data,
                            host_uses=lambda n: n == FIRST_ID + 7)  # fmt: skip
    assert got not in (FIRST_ID + 5, FIRST_ID + 7)
    assert not (uid_claims / str(FIRST_ID + 7)).exists()
    assert _audit(other)[-1]["why"].startswith("in use on the host")


@pytest.mark.parametrize("planted", ["garbage", "symlink"])
def test_an_unreadable_claim_of_our_number_is_never_taken_as_ours(
    tmp_path: Path, uid_claims: Path, planted: str
) -> None:
    home = _home(tmp_path, "A", uid_claims)
    number = _allocate(home, "acme.a")
    claim = uid_claims / str(number)
    claim.unlink()
    if planted == "garbage":
        claim.write_text("{not json")
    else:
        claim.symlink_to(tmp_path / "elsewhere")
    new = _allocate(home, "acme.a")
    assert new != number
    assert _audit(home)[-1]["why"] == "claimed by an unreadable claim file"


RACE_PLUGINS = 20


def _race(claims: str, data: str, barrier: Any, out: Any) -> None:
    barrier.wait()
    for i in range(RACE_PLUGINS):
        got = identity.allocate(Path(data, "identities.json"), Path(data, "identities.lock"),
                                Path(data, "audit.log"), f"acme.p{i}", Path(claims), Path(data),
                                _nobody_uses)  # fmt: skip
        out.put((data, f"acme.p{i}", got))


def test_concurrent_allocation_from_several_processes_never_gives_one_number_twice(
    tmp_path: Path, uid_claims: Path
) -> None:
    # Six processes at once: three installations of two processes each (the same home
    # serialises on its lock; different homes meet only at link(2)).
    homes = [tmp_path / name / "data" for name in "AABBCC"]
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(len(homes)), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(uid_claims), str(h), barrier, out))
             for h in homes]  # fmt: skip
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in range(RACE_PLUGINS * len(homes))]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    per_home: dict[tuple[str, str], set[int]] = {}
    for data, plugin_id, got in results:
        per_home.setdefault((data, plugin_id), set()).add(got)
    # One number per (home, plugin), whichever of its processes asked first...
    assert all(len(v) == 1 for v in per_home.values()), per_home
    numbers = [next(iter(v)) for v in per_home.values()]
    # ...and never one number for two (home, plugin) pairs.
    assert len(numbers) == len(set(numbers)) == RACE_PLUGINS * 3
    assert sorted(os.listdir(uid_claims)) == sorted(str(n) for n in numbers)  # no temp left
    for (data, plugin_id), (number,) in per_home.items():
        assert _claim(uid_claims, number)["installation"] == str(Path(data).resolve())
        assert _claim(uid_claims, number)["plugin"] == plugin_id


def _symlink(claims: Path) -> None:
    real = claims.parent / "real-claims"
    real.mkdir(mode=0o700)
    claims.symlink_to(real)


def _file(claims: Path) -> None:
    claims.write_text("")


def _open_to_all(claims: Path) -> None:
    claims.mkdir(mode=0o700)
    claims.chmod(0o777)


def _not_ours(claims: Path) -> None:
    claims.mkdir(mode=0o700)
    os.chown(claims, 12345, 12345)


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (_symlink, "a symbolic link"),
        (_file, "Not a directory"),
        (_open_to_all, "mode 0777"),
        (_not_ours, "owner uid 12345"),
    ],
)
def test_an_unusable_claims_dir_refuses_and_the_plugin_is_blocked_naming_it(
    tmp_path: Path, uid_claims: Path, spoil: Any, says: str
) -> None:
    home = _home(tmp_path, "A", uid_claims)
    spoil(uid_claims)
    with pytest.raises(LauncherError, match=f"{uid_claims}: unusable uid claims directory") as exc:
        _allocate(home, "acme.a")
    assert says in str(exc.value)
    assert not home.identities.exists()  # nothing allocated, nothing recorded
    # Through the supervisor: blocked with that reason, never started on a guess.
    registry = FakeRegistry(home.registry.parent)
    registry.add("acme.a")
    sup = Supervisor(home, fast_settings(), {"AURORA_SANDBOX_ROOT": str(PASSTHROUGH_ROOT)})
    sup.open()
    try:
        run_until_state(sup, "acme.a", status.BLOCKED)
        reason = sup.slots["acme.a"].reason or ""
        assert f"no host identity: {uid_claims}: unusable uid claims directory" in reason
        assert sup.slots["acme.a"].proc is None
    finally:
        sup.close()


def test_the_supervisor_reowns_the_data_dir_when_a_plugin_gets_a_new_uid(
    tmp_path: Path, uid_claims: Path
) -> None:
    a, b = _home(tmp_path, "A", uid_claims), _home(tmp_path, "B", uid_claims)
    assert _allocate(a, "acme.victim") == FIRST_ID
    # B recorded the same number before claims existed; its data dir is that uid's.
    _record(b, "acme.idle", FIRST_ID)
    datadir.plugin_dir(b.plugin_data("acme.idle"), FIRST_ID, FIRST_ID)
    kept = b.plugin_data("acme.idle") / "kept.txt"
    kept.write_text("B's own data")
    os.chown(kept, FIRST_ID, FIRST_ID)
    FakeRegistry(b.registry.parent).add("acme.idle")
    sup = Supervisor(b, fast_settings(), {"AURORA_SANDBOX_ROOT": str(PASSTHROUGH_ROOT)})
    sup.open()
    try:
        run_until_started(sup, "acme.idle")
    finally:
        sup.close()
    new = read_identities(b.identities)["acme.idle"]
    assert new != FIRST_ID
    for path in (b.plugin_data("acme.idle"), kept):
        assert (os.stat(path).st_uid, os.stat(path).st_gid) == (new, new), path
    assert kept.read_text() == "B's own data"
    assert any(r["action"] == "reallocate-identity" and r["uid"] == new for r in _audit(b))


def _uids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"/proc/{pid}/status: no Uid line")


@pytest.fixture
def two_homes(tmp_path: Path, uid_claims: Path) -> Iterator[list[tuple[Paths, LoopThread]]]:
    """Two installations' supervisors (pack03's real sandbox), each looping in a thread."""
    if os.geteuid() != 0:
        pytest.skip("pack03 runs plugins under their own uid: needs root")
    root = real_sandbox_root()
    made: list[tuple[Paths, LoopThread]] = []
    try:
        for name, plugin_id in (("A", "acme.alpha"), ("B", "acme.beta")):
            paths = _home(tmp_path, name, uid_claims)
            FakeRegistry(paths.registry.parent).add(plugin_id)
            sup = Supervisor(paths, fast_settings(), {"AURORA_SANDBOX_ROOT": str(root)})
            sup.open()
            made.append((paths, LoopThread(sup)))
        yield made
    finally:
        for paths, thread in made:
            thread.stop()
            thread.sup.close()
            diskimage.unmount_all(paths.plugin_data_root)


def test_plugins_of_two_installations_run_as_different_host_uids(
    two_homes: list[tuple[Paths, LoopThread]], uid_claims: Path
) -> None:
    seen = {}
    for (paths, thread), plugin_id in zip(two_homes, ("acme.alpha", "acme.beta"), strict=True):
        wait_until(
            lambda sup=thread.sup, pid=plugin_id: (
                getattr(sup.slots.get(pid), "state", None) == status.RUNNING
            ),
            timeout=30,
            what=f"{plugin_id} running",
        )
        pid = read_pid(paths.plugin_data(plugin_id) / "pid").pid
        uids = _uids(pid)  # the host's view, not the plugin's word
        recorded = read_identities(paths.identities)[plugin_id]
        assert uids == [recorded] * 4, (plugin_id, uids)
        assert _claim(uid_claims, recorded)["installation"] == str(paths.data.resolve())
        seen[plugin_id] = recorded
    # Each is the first plugin of its installation: before claims both were FIRST_ID.
    assert seen["acme.alpha"] != seen["acme.beta"], seen


def test_run_refuses_with_exit_1_naming_the_claims_dir(
    cli_env: dict[str, str],
    fake_registry: FakeRegistry,
    uid_claims: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_registry.add("acme.a")
    _open_to_all(uid_claims)
    assert cli.main(["run", "acme.a", "--timeout", "5"]) == cli.EXIT_ERROR == 1
    out, err = capsys.readouterr()
    assert (
        f"{uid_claims}: unusable uid claims directory (owner uid {os.geteuid()}, mode 0777)" in err
    )
    assert "Traceback" not in out + err
    assert not Path(cli_env["AURORA_PACK_DATA"], "identities.json").exists()
