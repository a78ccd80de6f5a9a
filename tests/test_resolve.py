"""Dependency resolution: order, satisfied deps, cycles, unsatisfiable and breaking upgrades."""

from __future__ import annotations

from pathlib import Path

from aurora.manifest import Dependency, Manifest, load_manifest
from aurora.resolve import resolve
from aurora_testing import PackFactory
from hypothesis import given, settings
from hypothesis import strategies as st

Specs = dict[str, tuple[str, list[tuple[str, str]]]]


def _load(make_pack: PackFactory, specs: Specs) -> dict[str, Manifest]:
    return {
        pid: load_manifest(make_pack(pid, version, deps=deps))
        for pid, (version, deps) in specs.items()
    }


def test_diamond_is_ordered_dependencies_first(make_pack: PackFactory) -> None:
    packs = _load(
        make_pack,
        {
            "base": ("1.0", []),
            "left": ("1.0", [("base", ">=1")]),
            "right": ("1.0", [("base", ">=1")]),
            "top": ("1.0", [("left", ""), ("right", "")]),
        },
    )
    plan = resolve(packs["top"], packs, {}, {})
    assert plan.problems == []
    assert [s.pack_id for s in plan.steps] == ["base", "left", "right", "top"]


def test_satisfied_dependency_is_left_alone(make_pack: PackFactory) -> None:
    packs = _load(make_pack, {"base": ("2.0", []), "top": ("1.0", [("base", ">=1")])})
    plan = resolve(packs["top"], packs, {"base": "1.5"}, {"base": ()})
    assert [s.pack_id for s in plan.steps] == ["top"]
    assert plan.satisfied == ["base"]


def test_unsatisfied_installed_version_is_upgraded_from_source(make_pack: PackFactory) -> None:
    packs = _load(make_pack, {"base": ("2.0", []), "top": ("1.0", [("base", ">=2")])})
    plan = resolve(packs["top"], packs, {"base": "1.5"}, {"base": ()})
    assert [(s.pack_id, s.action) for s in plan.steps] == [("base", "upgrade"), ("top", "install")]


def test_upgrade_that_breaks_an_installed_pack_is_a_problem(make_pack: PackFactory) -> None:
    packs = _load(make_pack, {"base": ("2.0", []), "top": ("1.0", [("base", ">=2")])})
    installed_deps = {"base": (), "other": (Dependency("base", "<2"),)}
    plan = resolve(packs["top"], packs, {"base": "1.5", "other": "1.0"}, installed_deps)
    assert plan.problems == ["installed other needs base <2: the plan installs 2.0"]


def test_missing_unsatisfiable_and_invalid(make_pack: PackFactory) -> None:
    packs = _load(
        make_pack,
        {"base": ("0.1", []), "top": ("1.0", [("base", ">=1"), ("ghost", ""), ("broken", "")])},
    )
    plan = resolve(packs["top"], packs, {}, {}, invalid=["broken"])
    assert plan.problems == [
        "top needs base >=1: the packs directory has 0.1, which does not satisfy it",
        "top needs ghost (any version): not found in the packs directory",
        "top needs broken (any version): its pack in the packs directory is invalid "
        "(validate --pack broken)",
    ]


def test_cycle_is_reported_once_with_its_path(make_pack: PackFactory) -> None:
    packs = _load(
        make_pack, {"a": ("1", [("b", "")]), "b": ("1", [("c", "")]), "c": ("1", [("b", "")])}
    )
    plan = resolve(packs["a"], packs, {}, {})
    assert plan.problems == ["dependency cycle: b -> c -> b"]


def _manifest(pack_id: str, deps: list[str]) -> Manifest:
    return Manifest(
        root=Path("/nonexistent") / pack_id,
        id=pack_id,
        name=pack_id,
        version="1.0",
        description="",
        entrypoints={},
        dependencies=tuple(Dependency(d, ">=1") for d in deps),
        artifacts=(),
        dry_run_supported=True,
        approval_required=False,
        health_check_timeout=5,
    )


@settings(database=None, max_examples=200)
@given(
    st.lists(st.lists(st.integers(min_value=0, max_value=9), max_size=4), min_size=1, max_size=10)
)
def test_plan_of_a_random_dag_puts_every_dependency_first(edges: list[list[int]]) -> None:
    # Node i may only depend on nodes with a larger index: a DAG by construction.
    n = len(edges)
    packs = {
        f"p{i}": _manifest(f"p{i}", sorted({f"p{j}" for j in targets if i < j < n}))
        for i, targets in enumerate(edges)
    }
    plan = resolve(packs["p0"], packs, {}, {})
    assert plan.problems == []
    order = [s.pack_id for s in plan.steps]
    assert order[-1] == "p0" and len(order) == len(set(order))
    for position, pack_id in enumerate(order):
        for dep in packs[pack_id].dependencies:
            assert order.index(dep.pack_id) < position
