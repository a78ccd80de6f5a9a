"""The closed capability vocabulary a plugin may request, and the spelling of call grants
(data only, no I/O)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


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


# -- call grants ---------------------------------------------------------------------------
# A grant to call another plugin's function sits in a record's ``granted`` list beside the
# capabilities, spelled ``call:<plugin id>/<function>`` (pack04's supervisor reads exactly
# this spelling). A manifest's ``calls: ["acme.greeter/greet"]`` requests
# ``call:acme.greeter/greet``.

CALL_GRANT_PREFIX = "call:"
# <plugin id>/<function>: the manifest schema's ``calls`` item pattern and maxLength.
CALL_TARGET = re.compile(r"[a-z0-9][a-z0-9_-]*(?:\.[a-z0-9][a-z0-9_-]*)+/[a-z][a-z0-9_-]{0,63}")
MAX_CALL_TARGET = 193
CALL_GRANT_FORM = "call:<plugin id>/<function>"
_SHOWN = 60  # characters of a bad name quoted back in a message


def call_grant(target: str) -> str:
    """The grant a manifest's ``calls`` entry ``<plugin id>/<function>`` requests."""
    return CALL_GRANT_PREFIX + target


def is_call_target(target: object) -> bool:
    """True for ``<plugin id>/<function>`` (the whole string, newline included)."""
    return (
        isinstance(target, str)
        and len(target) <= MAX_CALL_TARGET
        and CALL_TARGET.fullmatch(target) is not None
    )


def is_call_grant(name: object) -> bool:
    """True for ``call:<plugin id>/<function>``."""
    return (
        isinstance(name, str)
        and name.startswith(CALL_GRANT_PREFIX)
        and is_call_target(name[len(CALL_GRANT_PREFIX) :])
    )


def is_grantable(name: object) -> bool:
    """A capability of the vocabulary or a call grant: what ``granted`` may hold."""
    return (isinstance(name, str) and name in CAPABILITIES) or is_call_grant(name)


def shown(value: object) -> str:
    """``repr(value)``, cut to a length fit for a message (a hostile name may be huge)."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def grant_problem(name: object) -> str | None:
    """Why ``name`` cannot be granted (None when it can), worded for a message."""
    if is_grantable(name):
        return None
    if isinstance(name, str) and name.startswith(CALL_GRANT_PREFIX):
        return f"{shown(name)} is not {CALL_GRANT_FORM}"
    return f"unknown capability {shown(name)} (known: {known_capabilities()}, {CALL_GRANT_FORM})"


def requested_grants(manifest: Mapping[str, Any] | None) -> list[str]:
    """What a version's manifest requests: its ``permissions`` and a grant per ``calls``
    entry, sorted (a malformed entry is left out: the registry refuses it when read)."""
    if not isinstance(manifest, Mapping):
        return []
    perms = manifest.get("permissions", [])
    calls = manifest.get("calls", [])
    out = {p for p in perms if isinstance(p, str)} if isinstance(perms, list) else set()
    if isinstance(calls, list):
        out |= {call_grant(t) for t in calls if is_call_target(t)}
    return sorted(out)
