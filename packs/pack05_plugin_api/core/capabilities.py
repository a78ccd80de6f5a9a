"""The closed capability vocabulary a plugin may request (data only, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capability:
    """One capability: what it lets a plugin do and how risky granting it is."""

    name: str
    description: str
    risk: str  # "low" | "medium" | "high"


CAPABILITIES: dict[str, Capability] = {
    c.name: c
    for c in (
        Capability("fs-read", "read files outside its own package and data directory", "medium"),
        Capability("fs-write", "write files outside its own data directory", "high"),
        Capability("gpu", "use GPU devices", "medium"),
        Capability("io", "use local devices and inter-process channels (/dev, sockets)", "medium"),
        Capability("network", "open network connections", "high"),
    )
}

CAPABILITY_NAMES: tuple[str, ...] = tuple(sorted(CAPABILITIES))


def known_capabilities() -> str:
    """The vocabulary as a comma-separated list, for error messages."""
    return ", ".join(CAPABILITY_NAMES)
