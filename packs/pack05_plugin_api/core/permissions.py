"""What a plugin may do: the capability vocabulary, the operator's policy, permission checks."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import paths
from .audit import audit_entry
from .capabilities import (
    CAPABILITIES,
    CAPABILITY_NAMES,
    Capability,
    grant_problem,
    is_grantable,
    known_capabilities,
)
from .errors import CapabilityError, RegistryError
from .storage import InputRefused, locked, private_dir, read_bytes, refusal_reason
from .txn import (
    TxnError,
    audited_replace,
    audited_replace_after,
    left_behind,
    marker_path,
    recover,
    remove_leftover_temps,
)

__all__ = [
    "CAPABILITIES",
    "CAPABILITY_NAMES",
    "POLICY_SCHEMA",
    "Capability",
    "Policy",
    "check_capabilities",
    "check_grants",
    "load_policy",
    "recover_policy",
    "request_permissions",
    "update_policy",
]

log = logging.getLogger(__name__)

POLICY_SCHEMA = "aurora-plugin-permissions-v1"
POLICY_FILE = "permissions.json"
MAX_POLICY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Policy:
    """The operator's policy: ``allowed`` may be auto-granted, ``blocked`` may never be granted.

    Anything in neither list is denied until the operator grants it to a plugin. Both lists
    may name call grants (``call:<plugin id>/<function>``) as well as capabilities.
    """

    allowed: frozenset[str] = field(default_factory=frozenset)
    blocked: frozenset[str] = field(default_factory=frozenset)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": POLICY_SCHEMA,
            "allowed": sorted(self.allowed),
            "blocked": sorted(self.blocked),
        }


def check_capabilities(names: Iterable[object], *, place: str = "capabilities") -> list[str]:
    """Return the names as strings; raise CapabilityError naming every unknown one."""
    names = list(names)
    problems = [
        f"{place}[{i}]: unknown capability {name!r} (known: {known_capabilities()})"
        for i, name in enumerate(names)
        if not (isinstance(name, str) and name in CAPABILITIES)
    ]
    if problems:
        raise CapabilityError("; ".join(problems))
    return [str(n) for n in names]


def check_grants(names: Iterable[object], *, place: str = "capabilities") -> list[str]:
    """Like ``check_capabilities``, also accepting call grants (``call:<plugin id>/<function>``);
    raise CapabilityError naming every bad one with its place (a huge name is cut short)."""
    names = list(names)
    problems = [
        f"{place}[{i}]: {problem}"
        for i, name in enumerate(names)
        if (problem := grant_problem(name)) is not None
    ]
    if problems:
        shown = problems[:10] + ([f"... {len(problems) - 10} more"] if len(problems) > 10 else [])
        raise CapabilityError("; ".join(shown))
    return [str(n) for n in names]


def _policy_path(plugins_dir: Path | None) -> Path:
    return (plugins_dir if plugins_dir is not None else paths.plugins_dir()) / POLICY_FILE


def load_policy(plugins_dir: Path | None = None) -> Policy:
    """Read ``permissions.json``; a missing file is the default policy (deny everything)."""
    path = _policy_path(plugins_dir)
    try:
        raw = read_bytes(path, MAX_POLICY_BYTES)
    except FileNotFoundError:
        return Policy()
    except InputRefused as exc:
        reason = refusal_reason(exc, path)
        raise RegistryError(f"permission policy {path} is unreadable: {reason}") from None
    except OSError as exc:
        raise RegistryError(f"permission policy {path} is unreadable: {exc}") from None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RegistryError(f"permission policy {path} is not valid JSON: {exc}") from None
    problems: list[str] = []
    if not isinstance(data, dict):
        raise RegistryError(f"permission policy {path}: expected an object")
    if data.get("schema", POLICY_SCHEMA) != POLICY_SCHEMA:
        problems.append(f"schema: expected {POLICY_SCHEMA!r}, found {data.get('schema')!r}")
    lists: dict[str, frozenset[str]] = {}
    for key in ("allowed", "blocked"):
        value = data.get(key, [])
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list of capabilities and call grants")
            continue
        if len({repr(v) for v in value}) != len(value):
            problems.append(f"{key}: contains duplicates")
        try:
            lists[key] = frozenset(check_grants(value, place=key))
        except CapabilityError as exc:
            problems.append(str(exc))
    extra = sorted(set(data) - {"schema", "allowed", "blocked"})
    problems.extend(f"{k}: unknown key" for k in extra)
    if problems:
        raise RegistryError(f"permission policy {path} is invalid: " + "; ".join(problems))
    # blocked wins over allowed: a capability in both is never granted.
    return Policy(allowed=lists["allowed"] - lists["blocked"], blocked=lists["blocked"])


def update_policy(
    plugins_dir: Path | None = None,
    *,
    allow: Iterable[str] = (),
    block: Iterable[str] = (),
    clear: Iterable[str] = (),
    actor: str | None = None,
) -> Policy:
    """Change the policy under its lock: ``allow``/``block`` move names, ``clear`` removes them."""
    allow_set = set(check_grants(allow, place="allow"))
    block_set = set(check_grants(block, place="block"))
    clear_set = set(check_grants(clear, place="clear"))
    both = (allow_set & block_set) | (clear_set & (allow_set | block_set))
    if both:
        raise CapabilityError(f"asked to set and unset at once: {', '.join(sorted(both))}")
    from .registry import PluginRegistry  # the registry reads the policy: import late

    path = _policy_path(plugins_dir)
    private_dir(path.parent)  # 0700: no other uid opens (so holds) its locks
    registry = PluginRegistry(path.parent, actor=actor)
    audit = path.with_name("audit.log")
    with _policy_lock(path):
        _recover_locked(path, registry, actor)
        old = load_policy(path.parent)
        allowed = (old.allowed - block_set - clear_set) | allow_set
        blocked = (old.blocked - allow_set - clear_set) | block_set
        new = Policy(allowed=frozenset(allowed), blocked=frozenset(blocked))
        data = (json.dumps(new.to_json(), indent=2) + "\n").encode("utf-8")
        entry = audit_entry(
            actor, "policy", None, None, allowed=sorted(new.allowed), blocked=sorted(new.blocked)
        )
        changes = new != old or not path.exists()
        if block_set and changes:
            # A registry that cannot be read (or an interrupted change of it that cannot be
            # settled) refuses here, before anything is written, audit.log included.
            registry.recover()
            registry.list()
            # Blocked means never granted: withdraw from the registry (what pack04 reads)
            # before the policy says so, as one change that rolls forward once decided
            # (core/txn.py): killed at any point, the next command finishes it.
            audited_replace_after(
                path,
                data,
                [entry],
                first=_withdraw(registry),
                redo={"blocked": sorted(new.blocked)},
                audit=audit,
                actor=actor,
                max_bytes=MAX_POLICY_BYTES,
            )
        elif block_set:  # already blocked in the file (edited by hand): withdraw now
            registry.enforce_blocked(new.blocked)
        elif changes:
            limit = MAX_POLICY_BYTES
            audited_replace(path, data, [entry], audit=audit, actor=actor, max_bytes=limit)
        if block_set:
            registry.enforce_blocked(new.blocked)  # granted from `allowed` meanwhile
    return new


def _withdraw(registry: Any) -> Callable[[Any], None]:
    """The other change of a ``policy --block``: withdraw the blocked capabilities from
    every plugin (idempotent), as recorded in the change's marker (``{"blocked": [...]}``)."""

    def withdraw(redo: Any) -> None:
        blocked = redo.get("blocked") if isinstance(redo, dict) else None
        if not isinstance(blocked, list):
            raise TxnError(f"expected {{'blocked': [...]}} to finish, found {redo!r}")
        registry.enforce_blocked(check_grants(blocked, place="blocked"))

    return withdraw


def _policy_lock(path: Path) -> Any:
    """``permissions.lock``, created beside the policy when it is first needed."""
    return locked(path.with_name("permissions.lock"))


def _recover_locked(path: Path, registry: Any, actor: str | None) -> None:
    """Settle an interrupted policy change (finish a decided block); remove dead temp files."""
    try:
        recover(
            path,
            path.with_name("audit.log"),
            actor=actor,
            max_bytes=MAX_POLICY_BYTES,
            redo=_withdraw(registry),
        )
    except (TxnError, CapabilityError) as exc:
        raise RegistryError(str(exc)) from None
    for target in (path, marker_path(path)):
        remove_leftover_temps(target)


def recover_policy(plugins_dir: Path | None = None, *, actor: str | None = None) -> None:
    """Record the outcome of a policy change that was interrupted (``core/txn.py``)."""
    from .registry import PluginRegistry  # the registry reads the policy: import late

    path = _policy_path(plugins_dir)
    if not left_behind(path):
        return
    with _policy_lock(path):
        _recover_locked(path, PluginRegistry(path.parent, actor=actor), actor)


def request_permissions(
    plugin_id: str, perms: Iterable[str], *, plugins_dir: Path | None = None
) -> dict[str, list[str]]:
    """Which of ``perms`` the plugin may use now: granted and not blocked are ``allowed``.

    Everything else (not granted, blocked by policy, unknown names, unknown plugin) is
    ``blocked``: deny by default.
    """
    from .registry import PluginRegistry  # the registry also reads the policy: import late

    registry = PluginRegistry(plugins_dir)
    record = registry.get(plugin_id)
    granted = set(record["granted"]) if record else set()
    policy = load_policy(registry.plugins_dir)
    allowed: list[str] = []
    blocked: list[str] = []
    for perm in perms:
        ok = is_grantable(perm) and perm in granted and perm not in policy.blocked
        (allowed if ok else blocked).append(perm)
    return {"allowed": allowed, "blocked": blocked}
