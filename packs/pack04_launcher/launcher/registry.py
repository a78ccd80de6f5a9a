"""Read pack05's registry.json through its file contract (docs/contracts.md).

The launcher only reads: the registry is replaced atomically by pack05, so a
reader takes no lock and always sees a whole version. A problem with one
plugin's entry makes that plugin invalid, not the whole registry.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from aurora_common import fnschema
from aurora_common.bounded import read_bytes
from aurora_common.errors import InputRefused
from aurora_common.structured import loads_json

from launcher.errors import PluginNotFound, RegistryError

SCHEMA = "aurora-plugin-registry-v1"
CAPABILITIES = ("fs-read", "fs-write", "gpu", "io", "network")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)+$")
_FUNCTION_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
#: A grant to call another plugin's function, beside the capabilities in ``granted``.
CALL_PREFIX = "call:"
ALWAYS, ON_CALL = "always", "on-call"
DEFAULT_IDLE_SECONDS = 60.0

#: Identity of one version of the registry file, to notice a change cheaply.
Signature = tuple[int, int, int, int]


def valid_plugin_id(plugin_id: str) -> bool:
    """``publisher.name``, lowercase; safe as a single path component."""
    return len(plugin_id) <= 128 and _ID_RE.match(plugin_id) is not None


@dataclass(frozen=True)
class ApiSpec:
    """What the manifest declares for aurora-plugin-protocol-v1 (docs/plugin-protocol-v1.md).

    Present when the manifest has any of ``functions``, ``health``, ``calls`` or
    ``activation: on-call``: such a plugin is started with a protocol connection.
    ``functions`` is canonical JSON (name -> {parameters, result}) so the entry stays
    hashable and comparable.
    """

    functions_json: str = "{}"
    activation: str = ALWAYS
    idle_seconds: float = DEFAULT_IDLE_SECONDS
    health: tuple[float, float, int] | None = None  # (interval_s, timeout_s, failures)

    def functions(self) -> dict[str, dict[str, Any]]:
        doc: dict[str, dict[str, Any]] = json.loads(self.functions_json)
        return doc


def call_grant(plugin_id: str, function: str) -> str:
    return f"{CALL_PREFIX}{plugin_id}/{function}"


def valid_call_grant(item: str) -> bool:
    """``call:<plugin id>/<function>`` with both parts well formed."""
    if not item.startswith(CALL_PREFIX):
        return False
    target, _, function = item[len(CALL_PREFIX) :].partition("/")
    return valid_plugin_id(target) and _FUNCTION_RE.match(function) is not None


@dataclass(frozen=True)
class PluginEntry:
    """What the launcher needs to run one plugin, taken from its registry entry."""

    id: str
    enabled: bool
    version: str | None
    granted: tuple[str, ...]  # effective: granted ∩ the active manifest's permissions
    package_dir: Path | None
    entrypoint: Path | None
    digest: str | None
    allow_degraded: bool
    problem: str | None  # why this entry cannot be run, with its place
    # ``call:<id>/<function>`` grants ∩ the active manifest's ``calls``
    calls: tuple[str, ...] = ()
    api: ApiSpec | None = None  # None: no protocol (process-level supervision only)

    @property
    def runnable(self) -> bool:
        return self.problem is None and self.entrypoint is not None


def signature(path: Path) -> Signature | None:
    """(device, inode, mtime ns, size) of ``path``; None when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


#: pack05's own cap on registry.json (core.registry.MAX_REGISTRY_BYTES).
MAX_REGISTRY_BYTES = 64 << 20


def read_registry(path: Path) -> dict[str, PluginEntry]:
    """Every plugin in the registry at ``path``.

    A missing file is an empty registry (pack05 has staged nothing yet). A file
    that is unreadable or not a registry raises RegistryError listing every
    problem; a bad plugin entry comes back with ``problem`` set.
    """
    try:  # bounded: a FIFO or a huge file in its place cannot hang or bloat the loop
        raw = read_bytes(path, MAX_REGISTRY_BYTES)
    except FileNotFoundError:
        return {}
    except InputRefused as exc:
        raise RegistryError(str(path), [str(exc).removeprefix(f"{path}: ")]) from exc
    except OSError as exc:
        raise RegistryError(str(path), [f"unreadable ({exc.strerror})"]) from exc
    try:  # as pack05 reads it: a key twice, NaN or Infinity is a corrupt registry
        doc = loads_json(raw, str(path))
    except InputRefused as exc:
        why = str(exc).removeprefix(f"{path}: ")
        raise RegistryError(str(path), [f"not JSON ({why})"]) from exc
    problems: list[str] = []
    if not isinstance(doc, dict):
        raise RegistryError(str(path), [f"expected an object, found {type(doc).__name__}"])
    if doc.get("schema") != SCHEMA:
        problems.append(f"schema: expected {SCHEMA!r}, found {doc.get('schema')!r}")
    plugins = doc.get("plugins")
    if not isinstance(plugins, dict):
        problems.append(f"plugins: expected an object, found {type(plugins).__name__}")
    if problems:
        raise RegistryError(str(path), problems)
    assert isinstance(plugins, dict)
    plugins_dir = path.parent
    return {pid: _entry(pid, raw_entry, plugins_dir) for pid, raw_entry in plugins.items()}


def get_plugin(path: Path, plugin_id: str) -> PluginEntry:
    """One plugin's entry; PluginNotFound if it is absent."""
    entry = read_registry(path).get(plugin_id)
    if entry is None:
        raise PluginNotFound(plugin_id, f"not in the registry {path}")
    return entry


def _entry(pid: str, raw: Any, plugins_dir: Path) -> PluginEntry:
    where = f"plugins.{pid}"
    problems: list[str] = []
    if not valid_plugin_id(pid):
        problems.append(f"{where}: id must be 'publisher.name' in lowercase")
    if not isinstance(raw, dict):
        return PluginEntry(pid, False, None, (), None, None, None, False, f"{where}: not an object")
    enabled = raw.get("enabled")
    if not isinstance(enabled, bool):
        problems.append(f"{where}.enabled: expected true or false, found {enabled!r}")
        enabled = False
    granted_raw = raw.get("granted", [])
    granted: list[str] = []
    if not isinstance(granted_raw, list):
        problems.append(f"{where}.granted: expected a list, found {granted_raw!r}")
    else:
        for i, cap in enumerate(granted_raw):
            if isinstance(cap, str) and valid_call_grant(cap):
                if cap not in granted:
                    granted.append(cap)
            elif cap not in CAPABILITIES:
                problems.append(
                    f"{where}.granted[{i}]: unknown capability {cap!r} "
                    f"(known: {', '.join(CAPABILITIES)})"
                )
            elif cap not in granted:
                granted.append(cap)
    version = raw.get("active_version")
    package_dir = entrypoint = None
    digest = None
    api: ApiSpec | None = None
    if version is None:
        if enabled:
            problems.append(f"{where}.active_version: enabled but no active version")
    elif not isinstance(version, str):
        problems.append(f"{where}.active_version: expected a string, found {version!r}")
        version = None
    else:
        vwhere = f"{where}.versions.{version}"
        versions = raw.get("versions")
        ventry = versions.get(version) if isinstance(versions, dict) else None
        if not isinstance(ventry, dict):
            problems.append(f"{vwhere}: missing (the active version has no entry)")
        else:
            package_dir = _inside(plugins_dir, ventry.get("path"), f"{vwhere}.path", problems)
            manifest = ventry.get("manifest")
            entry_rel = manifest.get("entrypoint") if isinstance(manifest, dict) else None
            if package_dir is not None:
                entrypoint = _inside(
                    package_dir, entry_rel, f"{vwhere}.manifest.entrypoint", problems
                )
                if entrypoint is not None and not entrypoint.is_file():
                    problems.append(f"{vwhere}.manifest.entrypoint: {entrypoint} is not a file")
                    entrypoint = None
            d = ventry.get("digest")
            digest = d if isinstance(d, str) else None
            # The plugin runs with what was granted AND what this version asks for.
            requested = manifest.get("permissions", []) if isinstance(manifest, dict) else []
            if not isinstance(requested, list):
                problems.append(f"{vwhere}.manifest.permissions: expected a list")
                requested = []
            wanted_calls = manifest.get("calls", []) if isinstance(manifest, dict) else []
            if not isinstance(wanted_calls, list):
                problems.append(f"{vwhere}.manifest.calls: expected a list")
                wanted_calls = []
            requested = requested + [CALL_PREFIX + c for c in wanted_calls if isinstance(c, str)]
            granted = [c for c in granted if c in requested]
            if isinstance(manifest, dict):
                api = _api(manifest, f"{vwhere}.manifest", problems)
    return PluginEntry(
        id=pid,
        enabled=enabled,
        version=version,
        granted=tuple(sorted(c for c in granted if not c.startswith(CALL_PREFIX))),
        calls=tuple(sorted(c for c in granted if c.startswith(CALL_PREFIX))),
        api=api,
        package_dir=package_dir,
        entrypoint=entrypoint,
        digest=digest,
        # Not in the registry format: the operator allows it through pack04 (degraded.py).
        allow_degraded=False,
        problem="; ".join(problems) or None,
    )


def _api(manifest: dict[str, Any], where: str, problems: list[str]) -> ApiSpec | None:
    """The protocol part of a manifest pack05 validated; re-checked for shape only."""
    keys = ("functions", "activation", "idle_seconds", "health", "calls")
    if not any(k in manifest for k in keys) or (
        set(manifest) & set(keys) == {"activation"} and manifest["activation"] == ALWAYS
    ):
        return None
    functions = manifest.get("functions", {})
    specs: dict[str, dict[str, Any]] = {}
    if not isinstance(functions, dict):
        problems.append(f"{where}.functions: expected an object")
    else:
        for name, spec in functions.items():
            if not isinstance(name, str) or not _FUNCTION_RE.match(name):
                problems.append(f"{where}.functions: {name!r} is not a function name")
            elif not isinstance(spec, dict) or not all(
                isinstance(spec.get(part, {}), dict) for part in ("parameters", "result")
            ):
                problems.append(f"{where}.functions.{name}: expected {{parameters, result}}")
            else:
                specs[name] = {k: spec[k] for k in ("parameters", "result") if k in spec}
                for part, schema in specs[name].items():  # pack05 checked; so do we
                    problems += fnschema.problems(schema, f"{where}.functions.{name}.{part}")
    activation = manifest.get("activation", ALWAYS)
    if activation not in (ALWAYS, ON_CALL):
        problems.append(f"{where}.activation: expected {ALWAYS!r} or {ON_CALL!r}")
        activation = ALWAYS
    idle = manifest.get("idle_seconds", DEFAULT_IDLE_SECONDS)
    if isinstance(idle, bool) or not isinstance(idle, int | float) or not 0 < idle <= 86400:
        problems.append(f"{where}.idle_seconds: expected seconds in (0, 86400]")
        idle = DEFAULT_IDLE_SECONDS
    health = manifest.get("health")
    policy: tuple[float, float, int] | None = None
    if health is not None:
        if not isinstance(health, dict):
            problems.append(f"{where}.health: expected an object")
        else:
            interval, timeout = health.get("interval_s", 10), health.get("timeout_s", 2)
            failures = health.get("failures", 3)
            if not all(
                isinstance(v, int | float) and not isinstance(v, bool) and v > 0
                for v in (interval, timeout, failures)
            ) or not isinstance(failures, int):
                problems.append(
                    f"{where}.health: expected positive interval_s, timeout_s, failures"
                )
            else:
                policy = (float(interval), float(timeout), failures)
    try:
        functions_json = json.dumps(specs, sort_keys=True)
    except (TypeError, ValueError):
        problems.append(f"{where}.functions: not JSON")
        functions_json = "{}"
    return ApiSpec(functions_json, activation, float(idle), policy)


def _inside(base: Path, rel: Any, where: str, problems: list[str]) -> Path | None:
    """``base/rel`` when ``rel`` is a relative path that stays inside ``base``.

    Symlinks are resolved, so a link pointing out of the package is refused.
    """
    if not isinstance(rel, str) or not rel or "\0" in rel:
        problems.append(f"{where}: expected a relative path, found {rel!r}")
        return None
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts:
        problems.append(f"{where}: {rel!r} must be relative and stay inside {base}")
        return None
    try:
        target = (base / pure).resolve()
        real_base = base.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (3.11)
        problems.append(f"{where}: {rel!r} cannot be resolved ({exc})")
        return None
    if target != real_base and real_base not in target.parents:
        problems.append(f"{where}: {rel!r} resolves to {target}, outside {real_base}")
        return None
    return target
