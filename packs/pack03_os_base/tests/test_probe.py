"""The probe: every layer answered with a reason; the text says what is not enforceable."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sandbox.probe import ALWAYS, format_text

if TYPE_CHECKING:
    from conftest import Probe


def test_probe_covers_every_layer(probe: Probe) -> None:
    expected = {*ALWAYS, "capabilities", "network-namespace", "ipc-namespace", "landlock",
                "landlock-network", "landlock-scope", "seccomp", "cgroup", "bwrap"}  # fmt: skip
    assert set(probe["layers"]) == expected
    assert probe["always_ok"] == all(probe["layers"][n]["available"] for n in ALWAYS)


def test_text_names_what_cannot_be_enforced(probe: Probe) -> None:
    doc = dict(probe)
    doc["enforceable"] = {"native": {"network": [], "fs-read": ["landlock"]}}
    text = format_text(doc)
    assert "native: NOT enforceable here: network" in text
    for name in probe["layers"]:
        assert name in text
