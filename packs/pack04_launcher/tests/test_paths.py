"""Where the launcher looks: environment, installed layout, source tree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from launcher.errors import SandboxUnavailable
from launcher.paths import SOURCE_ROOT, Paths, sandbox_root


def test_by_hand_from_the_source_tree() -> None:
    p = Paths.from_env({})
    assert p.home is None
    assert p.root == SOURCE_ROOT
    assert p.run == SOURCE_ROOT / "run"
    assert p.registry == SOURCE_ROOT.parent / "pack05_plugin_api/data/plugins/registry.json"


def test_installed_layout(tmp_path: Path) -> None:
    p = Paths.from_env({"AURORA_HOME": str(tmp_path)})
    assert p.data == tmp_path / "data/pack04_launcher"
    assert p.logs == tmp_path / "logs/pack04_launcher"
    assert p.registry == tmp_path / "data/pack05_plugin_api/plugins/registry.json"
    assert p.plugin_data("acme.x") == tmp_path / "data/pack04_launcher/plugin-data/acme.x"
    assert p.plugin_log("acme.x") == tmp_path / "logs/pack04_launcher/plugins/acme.x.log"


def test_registry_override(tmp_path: Path) -> None:
    env = {"AURORA_HOME": str(tmp_path), "AURORA_PLUGIN_REGISTRY": str(tmp_path / "r.json")}
    assert Paths.from_env(env).registry == tmp_path / "r.json"
    assert Paths.from_env(env, registry=str(tmp_path / "o.json")).registry == tmp_path / "o.json"


def _pack03(home: Path, version: str) -> Path:
    root = home / "packs/pack03_os_base" / version
    (root / "sandbox").mkdir(parents=True)
    (root / "sandbox/launch.py").write_text("")
    return root


def test_sandbox_from_state_json(tmp_path: Path) -> None:
    root = _pack03(tmp_path, "0.2.0")
    (tmp_path / "state.json").write_text(
        json.dumps(
            {"schema": "aurora-state-v1", "packs": {"pack03_os_base": {"active_version": "0.2.0"}}}
        )
    )
    paths = Paths.from_env({"AURORA_HOME": str(tmp_path)})
    assert sandbox_root(paths, {}) == root


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        pytest.param(None, "pack03_os_base not installed", id="no-state"),
        pytest.param({"packs": {}}, "no packs.pack03_os_base.active_version", id="not-in-state"),
        pytest.param(
            {"packs": {"pack03_os_base": {"active_version": "../../x"}}},
            "no active version",
            id="version-escape",
        ),
        pytest.param(
            {"packs": {"pack03_os_base": {"active_version": "9.9"}}},
            "launch.py: not found",
            id="version-missing",
        ),
    ],
)
def test_sandbox_unavailable_says_where_it_looked(
    tmp_path: Path, state: dict[str, object] | None, expected: str
) -> None:
    if state is not None:
        (tmp_path / "state.json").write_text(json.dumps(state))
    paths = Paths.from_env({"AURORA_HOME": str(tmp_path)})
    with pytest.raises(SandboxUnavailable, match=expected):
        sandbox_root(paths, {})


def test_sandbox_override(tmp_path: Path) -> None:
    root = _pack03(tmp_path, "x")
    paths = Paths.from_env({"AURORA_HOME": str(tmp_path)})
    assert sandbox_root(paths, {"AURORA_SANDBOX_ROOT": str(root)}) == root
