"""The manifest keys of the plugin protocol: functions, activation, idle time, health, calls."""

from __future__ import annotations

from typing import Any

import pytest
from core.api import manifest_problems

BASE = {"id": "acme.echo", "name": "Echo", "version": "1.0.0", "entrypoint": "main.py"}


def with_(**extra: Any) -> dict[str, Any]:
    return {**BASE, **extra}


def test_a_v1_manifest_without_protocol_keys_stays_valid() -> None:
    assert manifest_problems(BASE) == []


def test_every_protocol_key_is_accepted_when_well_formed() -> None:
    manifest = with_(
        functions={
            "echo": {
                "description": "echoes",
                "parameters": {"type": "object"},
                "result": {"type": "object", "properties": {"text": {"type": "string"}}},
            },
            "ping": {},
        },
        activation="on-call",
        idle_seconds=30,
        health={"interval_s": 5, "timeout_s": 1.5, "failures": 2},
        calls=["acme.other/echo", "acme.x-y/do_it"],
    )
    assert manifest_problems(manifest) == []


@pytest.mark.parametrize(
    ("extra", "place"),
    [
        pytest.param({"functions": {"Echo": {}}}, "functions", id="upper-case-name"),
        pytest.param({"functions": {"echo\n": {}}}, "functions", id="newline-name"),
        pytest.param(
            {"functions": {"echo": {"parameters": {"type": "nonsense"}}}},
            "functions.echo.parameters: not a valid JSON Schema",
            id="bad-schema",
        ),
        pytest.param({"functions": {"echo": {"extra": 1}}}, "functions", id="unknown-key"),
        pytest.param({"activation": "sometimes"}, "activation", id="activation"),
        pytest.param({"idle_seconds": 0}, "idle_seconds", id="idle-zero"),
        pytest.param({"health": {"interval_s": -1}}, "health", id="negative-interval"),
        pytest.param({"health": {"failures": 0}}, "health", id="zero-failures"),
        pytest.param({"calls": ["acme.other"]}, "calls", id="no-function"),
        pytest.param({"calls": ["acme.other/echo\n"]}, "calls[0]", id="newline-call"),
        pytest.param({"calls": ["../x/echo"]}, "calls", id="path-call"),
        # What the launcher (root) evaluates must not reach out or run for ever (adv11).
        pytest.param(
            {"functions": {"echo": {"parameters": {"$ref": "file:///etc/shadow"}}}},
            "functions.echo.parameters.$ref: only a reference within the schema",
            id="remote-ref",
        ),
        pytest.param(
            {"functions": {"echo": {"result": {"type": "string", "pattern": "^(a+)+$"}}}},
            "functions.echo.result.pattern: not allowed",
            id="regex",
        ),
        pytest.param(
            {"functions": {"echo": {"result": {"patternProperties": {"a+": {}}}}}},
            "functions.echo.result.patternProperties: not allowed",
            id="regex-properties",
        ),
        pytest.param(
            {"functions": {"echo": {"parameters": {"type": "array", "uniqueItems": True}}}},
            "functions.echo.parameters.uniqueItems: not allowed",
            id="quadratic",
        ),
    ],
)
def test_malformed_protocol_keys_are_named_with_their_place(
    extra: dict[str, Any], place: str
) -> None:
    problems = manifest_problems(with_(**extra))
    assert problems, extra
    assert any(p.startswith(place) for p in problems), problems
