"""Read-only registry views (core/frozen.py)."""

from __future__ import annotations

import copy
import gc
import json
import pickle

import pytest
from core.frozen import FrozenDict, FrozenList, freeze, loads_frozen, thaw


def _sample() -> dict:
    return {"a": [1, {"b": ["x"]}], "c": {"d": None}, "e": "s"}


def test_freeze_makes_every_level_read_only() -> None:
    frozen = freeze(_sample())
    assert isinstance(frozen, FrozenDict) and isinstance(frozen["a"], FrozenList)
    mutations = [
        lambda: frozen.__setitem__("x", 1),
        lambda: frozen.pop("a"),
        lambda: frozen.update(x=1),
        lambda: frozen["a"].append(2),
        lambda: frozen["a"][1]["b"].extend(["y"]),
        lambda: frozen["c"].clear(),
        lambda: frozen["a"].sort(),
    ]
    for mutate in mutations:
        with pytest.raises(TypeError, match="read-only"):
            mutate()
    assert frozen == _sample()


def test_frozen_data_is_still_json_data() -> None:
    frozen = freeze(_sample())
    assert json.loads(json.dumps(frozen)) == _sample()
    assert isinstance(frozen, dict) and isinstance(frozen["a"], list)


def test_copies_are_plain_and_mutable() -> None:
    frozen = freeze(_sample())
    thawed = thaw(frozen)
    assert type(thawed) is dict and type(thawed["a"]) is list and type(thawed["a"][1]) is dict
    thawed["a"].append(3)
    deep = copy.deepcopy(frozen)
    deep["c"]["d"] = 1
    shallow = frozen.copy()
    shallow["new"] = 1
    assert frozen == _sample()
    assert pickle.loads(pickle.dumps(frozen)) == frozen


def test_freeze_reuses_frozen_parts() -> None:
    inner = freeze({"k": [1]})
    outer = freeze({"inner": inner, "other": [2]})
    assert outer["inner"] is inner


def test_loads_frozen_parses_straight_into_read_only_data() -> None:
    text = json.dumps({**_sample(), "nested": [[1, {"x": [2]}]], "files": [{"path": "a"}]})
    frozen = loads_frozen(text)
    assert frozen == json.loads(text)
    assert isinstance(frozen["nested"][0], FrozenList)
    assert isinstance(frozen["nested"][0][1]["x"], FrozenList)
    assert isinstance(frozen["files"][0], FrozenDict)
    with pytest.raises(TypeError, match="read-only"):
        frozen["files"][0]["path"] = "b"
    assert isinstance(loads_frozen("[[1]]")[0], FrozenList)


@pytest.mark.parametrize("enabled", [True, False], ids=["gc-enabled", "gc-disabled"])
def test_loads_frozen_leaves_the_garbage_collector_as_it_found_it(enabled: bool) -> None:
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        loads_frozen('{"a": [1]}')
        assert gc.isenabled() is enabled
        with pytest.raises(ValueError):
            loads_frozen("{oops")
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()
