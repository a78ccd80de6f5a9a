"""The bubblewrap command line built from a policy: what is shared, what never is."""

from __future__ import annotations

from pathlib import Path

import pytest
from sandbox.bwrap import arguments
from sandbox.confine import DEVICES, SYSTEM_READ, Run
from sandbox.policy import Policy


def _args(tmp_path: Path, granted: set[str]) -> list[str]:
    pol = Policy("acme.x", frozenset(granted), str(tmp_path / "data"), (str(tmp_path / "pkg"),))
    run = Run(pol, ["/usr/bin/python3", "-I", "main.py"], "bwrap")
    run.executable = "/usr/bin/python3"
    return arguments(run, ["/opt/py"], DEVICES, SYSTEM_READ)


def _pairs(args: list[str], flag: str) -> list[tuple[str, str]]:
    return [(args[i + 1], args[i + 2]) for i, a in enumerate(args) if a == flag]


@pytest.mark.parametrize(
    "granted", [set(), {"network"}, {"fs-read"}, {"fs-write", "gpu", "io", "network"}]
)
def test_capabilities_are_always_dropped(tmp_path: Path, granted: set[str]) -> None:
    args = _args(tmp_path, granted)
    i = args.index("--cap-drop")
    assert args[i + 1] == "ALL"
    assert args[-1] == "--"
    assert "--unshare-pid" in args and "--die-with-parent" in args


def test_network_namespace_unless_granted(tmp_path: Path) -> None:
    assert "--unshare-net" in _args(tmp_path, set())
    assert "--unshare-net" not in _args(tmp_path, {"network"})


def test_only_data_dir_is_writable_by_default(tmp_path: Path) -> None:
    args = _args(tmp_path, set())
    assert _pairs(args, "--bind") == [(str(tmp_path / "data"), str(tmp_path / "data"))]
    assert (str(tmp_path / "pkg"), str(tmp_path / "pkg")) in _pairs(args, "--ro-bind-try")
    assert ("/", "/") not in _pairs(args, "--ro-bind")


def test_fs_write_keeps_sys_read_only(tmp_path: Path) -> None:
    args = _args(tmp_path, {"fs-write"})
    assert ("/", "/") in _pairs(args, "--bind")
    assert args.index("--ro-bind") > args.index("--bind")  # /sys re-bound read-only on top
    assert ("/sys", "/sys") in _pairs(args, "--ro-bind")


def test_devices_are_minimal_unless_granted(tmp_path: Path) -> None:
    args = _args(tmp_path, {"fs-read"})
    assert "--dev" not in args  # bwrap's /dev has ptmx: pseudo-terminals are a host budget
    assert [dst for _, dst in _pairs(args, "--dev-bind")] == [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
    ]
    assert not _pairs(args, "--dev-bind-try")
