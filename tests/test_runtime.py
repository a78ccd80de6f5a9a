"""What runs and how healthy it is: pidfiles, the health record, Docker-style polling."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from aurora import runtime
from aurora.errors import StateError
from aurora.runner import ScriptResult
from aurora.runtime import HealthPolicy, HealthRecord, poll_until_healthy, read_pidfiles


def _start_time(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rfind(")") + 2 :].split()[19])


# -- pidfiles ----------------------------------------------------------------------------


def test_pidfile_of_this_process_is_alive_and_a_changed_start_time_is_not(tmp_path: Path) -> None:
    me, start = os.getpid(), _start_time(os.getpid())
    exe = os.readlink(f"/proc/{me}/exe")
    (tmp_path / "json.pid").write_text(json.dumps({"pid": me, "start_time": start, "exe": exe}))
    (tmp_path / "text.pid").write_text(f"{me} {start}\n")
    (tmp_path / "reused.pid").write_text(f"{me} {start + 1}\n")
    (tmp_path / "other-exe.pid").write_text(
        json.dumps({"pid": me, "start_time": start, "exe": "/bin/not-this"})
    )
    alive = {p.path.name: p.alive for p in read_pidfiles(tmp_path)}
    assert alive == {
        "json.pid": True,
        "text.pid": True,
        "reused.pid": False,
        "other-exe.pid": False,
    }


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
        pytest.param(b"{not json", id="broken-json"),
        pytest.param(b"", id="empty"),
        pytest.param(b"twelve\n", id="not-a-number"),
        pytest.param(b'{"pid": "12"}', id="pid-not-int"),
    ],
)
def test_unreadable_pidfile_is_skipped_not_an_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "service.pid").write_bytes(content)
    assert read_pidfiles(tmp_path) == []


def test_fifo_as_pidfile_is_skipped_instead_of_hanging(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "service.pid")
    found: list[object] = []
    reader = threading.Thread(target=lambda: found.append(read_pidfiles(tmp_path)), daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert not reader.is_alive(), "reading a FIFO pidfile blocked"
    assert found == [[]]


def test_no_run_directory_means_no_pidfiles(tmp_path: Path) -> None:
    assert read_pidfiles(tmp_path / "missing") == []


# -- the health record -------------------------------------------------------------------


def test_health_record_follows_docker_semantics(tmp_path: Path) -> None:
    record = HealthRecord(tmp_path / "health" / "p.json")
    record.reset("starting")

    def check(ok: bool) -> str:
        return str(record.update(ok, "out", 0 if ok else 1, counted=True, retries=3)["status"])

    # Failures below `retries` keep the state; a pass makes it healthy and clears the streak.
    assert [check(False), check(False), check(True)] == ["starting", "starting", "healthy"]
    assert [check(False), check(False), check(False)] == ["healthy", "healthy", "unhealthy"]
    assert check(True) == "healthy"  # an unhealthy pack recovers on a passing check
    doc = record.read()
    assert doc is not None and doc["failing_streak"] == 0
    assert doc["last_check"]["output"] == "out"


def test_failing_check_of_a_stopped_pack_is_unhealthy_at_once(tmp_path: Path) -> None:
    record = HealthRecord(tmp_path / "p.json")
    record.reset("stopped")
    assert record.update(False, "not running", 1, counted=True, retries=3)["status"] == "unhealthy"


def test_garbage_health_file_reads_as_none_and_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_bytes(b"\xff{")
    record = HealthRecord(path)
    assert record.read() is None
    assert record.problem() is not None and "not UTF-8" in record.problem()  # type: ignore[operator]
    with pytest.raises(StateError, match="not a health record; not overwritten"):
        record.update(True, "ok", 0, counted=True, retries=3)
    assert path.read_bytes() == b"\xff{"  # the evidence stays
    path.unlink()
    assert record.update(True, "ok", 0, counted=True, retries=3)["status"] == "healthy"


# -- polling until healthy (a fake clock: no waiting, no timing in the assertions) ---------


class _Clock:
    """Stands in for the time module inside aurora.runtime."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(runtime, "time", fake)
    return fake


def _checks(
    clock: _Clock, outcomes: list[bool], seen: list[float], cost: float = 0.0
) -> Callable[[float], ScriptResult]:
    def check(timeout: float) -> ScriptResult:
        seen.append(timeout)
        clock.now += cost
        ok = outcomes.pop(0) if outcomes else False
        return ScriptResult(
            argv=["health_check.sh"],
            returncode=0 if ok else 1,
            timed_out=False,
            duration=cost,
            output_tail=["health OK" if ok else "health FAIL: not yet"],
            log_path=Path("/dev/null"),
        )

    return check


def _poll(
    tmp_path: Path,
    clock: _Clock,
    outcomes: list[bool],
    policy: HealthPolicy,
    bound: float,
    cost: float = 0.0,
) -> tuple[dict[str, object], list[str], list[float]]:
    record = HealthRecord(tmp_path / "p.json")
    record.reset("starting")
    changes: list[str] = []
    timeouts: list[float] = []
    final = poll_until_healthy(
        _checks(clock, outcomes, timeouts, cost),
        record,
        policy,
        bound,
        lambda doc: changes.append(doc["status"]),
    )
    return final, changes, timeouts


def test_first_passing_check_is_healthy(tmp_path: Path, clock: _Clock) -> None:
    final, changes, _ = _poll(tmp_path, clock, [True], HealthPolicy(), bound=30)
    assert (final["status"], final["checks"], changes) == ("healthy", 1, ["healthy"])


def test_failures_in_the_start_period_do_not_count(tmp_path: Path, clock: _Clock) -> None:
    policy = HealthPolicy(interval=1, timeout=10, start_period=5, retries=1)
    final, changes, _ = _poll(tmp_path, clock, [False, False, False, True], policy, bound=30)
    assert final["status"] == "healthy" and final["checks"] == 4
    assert changes == ["healthy"]  # never unhealthy on the way


def test_retries_consecutive_failures_after_the_start_period_are_unhealthy(
    tmp_path: Path, clock: _Clock
) -> None:
    policy = HealthPolicy(interval=1, timeout=10, start_period=2.5, retries=2)
    final, changes, _ = _poll(tmp_path, clock, [], policy, bound=100)
    # Checks at t=0, 1, 2 fall in the start period; t=3 and t=4 count.
    assert final["status"] == "unhealthy" and final["checks"] == 5
    assert final["reason"] == "2 consecutive failing checks"
    assert changes == ["unhealthy"]
    assert final["last_check"]["output"] == "health FAIL: not yet"  # type: ignore[index]


def test_the_manifest_bound_ends_the_start_period(tmp_path: Path, clock: _Clock) -> None:
    policy = HealthPolicy(interval=1, timeout=10, start_period=60, retries=3)
    final, _, timeouts = _poll(tmp_path, clock, [], policy, bound=3)
    assert final["status"] == "unhealthy"
    assert final["reason"] == "not healthy within 3 s (health_check_timeout_seconds)"
    assert clock.now <= 3
    # No single check may run past the bound either.
    assert timeouts[0] == 3 and all(t <= 3 for t in timeouts)


def test_slow_checks_count_against_the_bound(tmp_path: Path, clock: _Clock) -> None:
    policy = HealthPolicy(interval=1, timeout=10, start_period=0, retries=100)
    final, _, _ = _poll(tmp_path, clock, [], policy, bound=10, cost=4)
    assert final["status"] == "unhealthy"
    assert final["checks"] == 2  # t=4, t=9: the next would start past the bound
