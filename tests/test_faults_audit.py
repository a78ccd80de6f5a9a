"""An outcome that cannot be appended to audit.log: the change stands, the command succeeds
with a warning, and the next command records the outcome it observes (``<op>-completed``,
``recorded_late``), so every change that took effect is audited after any fault.

The append of the command's own outcome record fails with ENOSPC (as on a disk that
filled up between the intent and the outcome); nothing else is disturbed.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest
from aurora import audit
from aurora_testing import Env
from test_faults_kill import SCENARIOS, audit_records, check_audit, observe


def _failing_outcome(op: str, real: Any) -> Any:
    def append(path: Any, record: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if record.get("event") == op:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, record, *args, **kwargs)

    return append


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_an_outcome_that_cannot_be_appended_is_recorded_late_by_the_next_command(
    env: Env, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    scenario = SCENARIOS[name]
    scenario.build(env)  # stop's: the service started
    old = observe(env, scenario.pack)
    skip = len(audit_records(env))
    with monkeypatch.context() as patch:
        patch.setattr(audit, "append_record", _failing_outcome(scenario.op, audit.append_record))
        result = env.run(*scenario.argv)
    assert "Traceback" not in result.err
    assert result.code == 0, result.err  # the change took effect: never reported failed
    assert "could not be recorded" in result.err, result.err
    if not scenario.service:
        assert observe(env, scenario.pack) != old
    ours = [r for r in audit_records(env)[skip:] if r["event"] == "intent"]
    assert not [r for r in audit_records(env)[skip:] if r["event"] == scenario.op]
    settled = env.run("status")  # the next command
    assert settled.code == 0, settled.err
    late = [r for r in audit_records(env)[skip:] if r.get("recorded_late")]
    assert [r["event"] for r in late] == [f"{scenario.op}-completed"], late
    assert late[0]["intent"] == ours[-1]["intent"]
    check_audit(env, skip, scenario.op, took_effect=True)
    assert env.run("status").code == 0  # and only once
    assert len([r for r in audit_records(env) if r.get("recorded_late")]) == 1
