"""JSON and YAML reading: every limit applies before parsing, refusals name the place."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from aurora_common.errors import InputRefused
from aurora_common.structured import loads_json, loads_yaml, read_json, read_yaml
from hypothesis import given, settings
from hypothesis import strategies as st

BOMB = b"""a: &a ["x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
"""


def test_alias_bomb_is_refused_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(InputRefused, match=r"m\.yaml: line 2, column 8: YAML aliases"):
        loads_yaml(BOMB, "m.yaml")
    assert time.monotonic() - started < 1


def test_aliases_can_be_capped_instead() -> None:
    assert loads_yaml(b"a: &x 1\nb: *x\n", "m", max_aliases=1) == {"a": 1, "b": 1}
    with pytest.raises(InputRefused, match="more than 1"):
        loads_yaml(b"a: &x 1\nb: *x\nc: *x\n", "m", max_aliases=1)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3000), st.sampled_from(["yaml-flow", "yaml-block", "json"]))
def test_depth_is_capped_without_recursion_error(depth: int, kind: str) -> None:
    if kind == "yaml-flow":
        doc = b"[" * depth + b"]" * depth
    elif kind == "yaml-block":
        doc = "".join(f"{' ' * i}k:\n" for i in range(depth)).encode() + b" " * depth + b"v\n"
    else:
        doc = b"[" * depth + b"]" * depth
    load = loads_json if kind == "json" else loads_yaml
    if depth <= 32:  # containers nested; scalars do not count
        load(doc, "doc", max_depth=32)
    else:
        with pytest.raises(InputRefused, match="nested deeper than 32"):
            load(doc, "doc", max_depth=32)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_a_value_or_a_refusal(data: bytes) -> None:
    for load in (loads_json, loads_yaml):
        try:
            load(data, "doc")
        except InputRefused as exc:
            assert str(exc).startswith("doc:")


def test_non_utf8_and_surrogates_are_refused() -> None:
    with pytest.raises(InputRefused, match=r"not UTF-8 text \(byte 3"):
        loads_yaml(b"a: \xff\n", "m")
    with pytest.raises(InputRefused, match="not UTF-8"):
        loads_json(b'"\xed\xa0\x80"', "m")  # an encoded surrogate
    with pytest.raises(InputRefused, match="lone surrogate"):
        loads_json(b'{"k": "\\udc80"}', "m")
    with pytest.raises(InputRefused, match="lone surrogate"):
        loads_yaml(b'k: "\\udc80"\n', "m")


def test_syntax_errors_name_line_and_column() -> None:
    with pytest.raises(InputRefused, match=r"m: not valid JSON \(line 2, column 1\)"):
        loads_json(b'{"a": 1,\n}', "m")
    with pytest.raises(InputRefused, match=r"m: not valid YAML \(line 1, column 5"):
        loads_yaml(b"a: b: c\n", "m")
    with pytest.raises(InputRefused, match="NaN is not JSON"):
        loads_json(b"[NaN]", "m")


def test_size_cap_applies_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"a: 1\n" + b"#" * 70000)
    with pytest.raises(InputRefused, match=r"big\.yaml: 70005 bytes exceeds the limit of 65536"):
        read_yaml(big)
    small = tmp_path / "s.json"
    small.write_text('{"a": [1]}')
    assert read_json(small) == {"a": [1]}


def test_duplicate_keys_are_all_listed() -> None:
    with pytest.raises(InputRefused) as info:
        loads_yaml(b"a: 1\nb: 2\na: 3\nb: 4\n", "m")
    assert info.value.problems == [
        "line 3, column 1: duplicate key 'a'",
        "line 4, column 1: duplicate key 'b'",
    ]
