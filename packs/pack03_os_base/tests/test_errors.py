"""Errors map to the launcher's exit statuses (like env(1)), for the CLI and the server alike."""

from __future__ import annotations

import pytest
from sandbox import errors


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        pytest.param(errors.CommandNotFound("x: not found"), 127, id="not-found"),
        pytest.param(errors.CommandNotExecutable("x: not executable"), 126, id="not-executable"),
        pytest.param(errors.Refused(["network: no layer"]), 125, id="refused"),
        pytest.param(errors.PolicyError("p.json", ["granted[0]: bad"]), 125, id="policy"),
        pytest.param(errors.RequestError(["argv: bad"]), 125, id="request"),
        pytest.param(OSError(5, "I/O error"), 125, id="unforeseen-oserror"),
    ],
)
def test_errors_map_to_exit_statuses(exc: Exception, status: int) -> None:
    mapped = errors.exit_status(exc)
    assert mapped is not None and mapped[0] == status
    assert str(exc) in mapped[1]


def test_a_programming_error_is_not_turned_into_a_status() -> None:
    assert errors.exit_status(KeyError("bug")) is None


def test_every_problem_is_in_the_message() -> None:
    err = errors.RequestError(["argv: expected a list", "backend: unknown"])
    assert "argv: expected a list" in str(err) and "backend: unknown" in str(err)
