"""Function schemas: what a plugin may declare, and checking values that never reaches out."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
from aurora_common import fnschema


def test_a_plain_schema_has_no_problem_and_checks_values() -> None:
    schema = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string", "maxLength": 10}, "n": {"$ref": "#/$defs/n"}},
        "$defs": {"n": {"type": "integer", "minimum": 0}},
        "additionalProperties": False,
    }
    assert fnschema.problems(schema, "functions.f.parameters") == []
    v = fnschema.Validator(schema)
    assert v.first_problem({"name": "ada", "n": 1}) is None
    assert v.first_problem({"name": "ada", "n": -1}) == "n: -1 is less than the minimum of 0"
    assert v.first_problem({}) == "(top): 'name' is a required property"


@pytest.mark.parametrize(
    ("schema", "place"),
    [
        ({"$ref": "file:///etc/shadow"}, "p.$ref: only a reference within the schema"),
        ({"$ref": "http://127.0.0.1/x"}, "p.$ref: only a reference within the schema"),
        ({"items": {"pattern": "^(a+)+$"}}, "p.items.pattern: not allowed"),
        ({"patternProperties": {"a": {}}}, "p.patternProperties: not allowed"),
        ({"uniqueItems": True}, "p.uniqueItems: not allowed"),
        ({"$id": "http://x/"}, "p.$id: not allowed"),
        ({"$schema": "http://x/"}, "p.$schema: not allowed"),
        ({"anyOf": [{"$dynamicRef": "#x"}]}, "p.anyOf[0].$dynamicRef: not allowed"),
        ({"frobnicate": 1}, "p.frobnicate: not allowed"),
        ({"properties": {"a": 5}}, "p.properties.a: a schema is an object or a boolean"),
    ],
)
def test_what_reaches_out_or_runs_away_is_refused_with_its_place(
    schema: dict[str, object], place: str
) -> None:
    found = fnschema.problems(schema, "p")
    assert any(problem.startswith(place) for problem in found), found


def test_size_and_depth_are_bounded() -> None:
    wide = {"properties": {f"k{i}": {} for i in range(fnschema.MAX_NODES + 5)}}
    assert any("more than" in p for p in fnschema.problems(wide, "p"))
    deep: dict[str, object] = {}
    node = deep
    for _ in range(fnschema.MAX_DEPTH + 3):
        node["items"] = {}
        node = node["items"]  # type: ignore[assignment]
    assert any("deeper than" in p for p in fnschema.problems(deep, "p"))


def test_checking_a_value_never_retrieves_a_remote_or_file_reference(tmp_path: Path) -> None:
    # Even a schema that slipped past `problems` is never resolved outside itself.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    port = listener.getsockname()[1]
    outcomes: list[str | None] = []

    def check() -> None:
        for ref in (f"http://127.0.0.1:{port}/s.json", f"file://{fifo}", "file:///etc/shadow"):
            outcomes.append(fnschema.Validator({"$ref": ref}).first_problem(1))

    worker = threading.Thread(target=check, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "checking blocked (it opened the FIFO)"
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected
    listener.close()
    assert len(outcomes) == 3 and all(o and "cannot be checked" in o for o in outcomes), outcomes


def test_a_value_too_costly_to_check_is_refused_in_bounded_time() -> None:
    # A chain of local references doubling at each step: 2**30 evaluations unbounded.
    defs: dict[str, object] = {
        f"d{i}": {"anyOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]}
        for i in range(30)
    }
    defs["d30"] = {"type": "string"}
    schema = {"$defs": defs, "$ref": "#/$defs/d0"}
    assert fnschema.problems(schema, "p") == []
    started = time.monotonic()
    problem = fnschema.Validator(schema).first_problem(5)
    assert problem is not None and "too costly" in problem
    assert time.monotonic() - started < 1.0


def test_one_keyword_over_a_huge_value_cannot_run_past_the_bound() -> None:
    # adv12: `contains` with a boolean subschema walks every item in one (unmetered)
    # keyword evaluation; 70 of them over 500,000 items took 13 s.
    schema = {"allOf": [{"contains": True}] * 70}
    assert fnschema.problems(schema, "p") == []
    started = time.monotonic()
    problem = fnschema.Validator(schema).first_problem([0] * 500_000)
    assert problem is not None and "too large" in problem
    assert time.monotonic() - started < 0.5
    # Within the node bound, the clock is looked at on every keyword evaluation.
    started = time.monotonic()
    problem = fnschema.Validator(schema).first_problem([0] * fnschema.MAX_VALUE_NODES)
    assert time.monotonic() - started < 1.0


def test_keywords_that_rewalk_subschemas_unmetered_are_refused() -> None:
    for key in ("unevaluatedProperties", "unevaluatedItems"):
        found = fnschema.problems({key: False}, "p")
        assert found and found[0].startswith(f"p.{key}: not allowed"), found
