"""What is installed: the plugin registry (``registry.json``), its versions, grants and state."""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aurora_common.cli import prog_name
from packaging.version import Version

from . import paths
from .api import validate_manifest
from .audit import audit_entry, utc_now
from .capabilities import CALL_GRANT_FORM, grant_problem, is_call_target, requested_grants, shown
from .errors import CapabilityError, PermissionDenied, RegistryError, UnknownPlugin
from .frozen import FrozenDict, freeze, loads_frozen, loads_strict, thaw
from .permissions import check_grants, load_policy
from .storage import InputRefused, locked, private_dir, read_bytes, refusal_reason
from .txn import (
    TxnError,
    audited_replace,
    left_behind,
    marker_path,
    recover,
    remove_leftover_temps,
)

__all__ = ["REGISTRY_SCHEMA", "REPLACED_MARK", "PluginRegistry"]

log = logging.getLogger(__name__)

REGISTRY_SCHEMA = "aurora-plugin-registry-v1"
# Far above any real registry (1,000 plugins take about 2 MiB); a bigger file is refused
# before it is read.
MAX_REGISTRY_BYTES = 64 * 2**20
_DIGEST = re.compile(r"(tree-v1:)?sha256:[0-9a-f]{64}")
# A version whose content was replaced lives in packages/<id>/<version>~<suffix> (no PEP 440
# version contains '~'), so the registry never names a directory being rewritten.
REPLACED_MARK = "~"
_REPLACED_SUFFIX = re.compile(r"[0-9a-f]{16}")

Record = dict[str, Any]
Data = dict[str, Any]
# A change: takes the current data, returns (new data or None when nothing changes,
# the caller's result, audit entries to append).
Change = Callable[[Data], tuple[Data | None, Any, list[dict[str, Any]]]]


def _requested(record: Mapping[str, Any], version: str | None) -> set[str]:
    """What ``version`` requests: its capabilities and its call grants (``call:<id>/<fn>``)."""
    if version is None or version not in record["versions"]:
        return set()
    return set(requested_grants(record["versions"][version]["manifest"]))


def _view(record: Mapping[str, Any]) -> Record:
    """The record as callers see it: adds ``manifest``, the active version's manifest."""
    active = record.get("active_version")
    versions = record["versions"]
    return {**record, "manifest": versions[active]["manifest"] if active in versions else None}


@dataclass
class _Snapshot:
    """The parsed registry for one on-disk version of the file (files are only replaced)."""

    key: tuple[int, ...]
    # Read-only when parsed for a reader, plain when parsed for a write (cheaper); never
    # mutated either way: a change copies the records it touches.
    data: Data
    # What list() hands out: read-only views, built on first use for this version of the file.
    frozen: FrozenDict | None = field(default=None)
    # The file's text until the first write slices each record's JSON out of it.
    text: str | None = field(default=None)


def _encode(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _serialize(
    new: Data, cache: dict[str, tuple[Record, str]]
) -> tuple[bytes, dict[str, tuple[Record, str]]]:
    """Compact JSON of ``new``, re-encoding only records that differ from ``cache``.

    ``cache`` maps id -> (record, its JSON text) as last written by this object; a record
    that is the same object, or equal (another process rewrote the file), reuses its text.
    """
    fragments: dict[str, tuple[Record, str]] = {}
    for pid, record in new["plugins"].items():
        hit = cache.get(pid)
        if hit is not None and (hit[0] is record or hit[0] == record):
            fragments[pid] = (record, hit[1])
        else:
            fragments[pid] = (record, _encode(record))
    head = {k: v for k, v in new.items() if k != "plugins"}
    lines = [_encode(head)[:-1] + ("," if head else "") + '"plugins":{']
    lines.append(",\n".join(f"{_key(pid)}:{text}" for pid, (_, text) in fragments.items()))
    text = "\n".join(lines) + "\n}}" if fragments else lines[0] + "\n}}"
    return text.encode("utf-8"), fragments


# The layout this module writes: a head line, then one line per plugin (compact JSON never
# holds a raw newline, so a line is exactly one record), then "}}". Readers need not know it.
_HEAD = '{"schema":"' + REGISTRY_SCHEMA + '",'
_PLUGINS_OPEN = '"plugins":{'


def _split_lines(text: str) -> tuple[str, list[str]] | None:
    """The head line and the record lines, or None when the file is not in our layout."""
    if not (text.startswith(_HEAD) and text.endswith("\n}}")):
        return None
    lines = text[:-3].split("\n")
    if not lines[0].endswith(_PLUGINS_OPEN):
        return None
    return lines[0], lines[1:]


_PLAIN_ID = re.compile(r"[a-z0-9._-]+")


def _key(pid: str) -> str:
    """The JSON spelling of a plugin id (valid ids need no escaping: skip the encoder)."""
    return f'"{pid}"' if _PLAIN_ID.fullmatch(pid) else _encode(pid)


def _parse_line(line: str) -> tuple[str, Record, str]:
    """``"<id>":{...},`` -> (id, record, the record's JSON text); ValueError if malformed."""
    body = line.rstrip(",")
    parsed = json.loads("{" + body + "}")
    if not isinstance(parsed, dict) or len(parsed) != 1:
        raise ValueError("not one record")
    ((pid, record),) = parsed.items()
    prefix = _key(pid) + ":"
    if not body.startswith(prefix):
        raise ValueError("unexpected key spelling")
    return pid, record, body[len(prefix) :]


def _stat_key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _normalize_files(files: Iterable[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(files):
        if isinstance(entry, str | os.PathLike):
            out.append({"path": os.fspath(entry)})
        elif isinstance(entry, Mapping) and isinstance(entry.get("path"), str):
            out.append(dict(entry))
        else:
            raise RegistryError(f"files[{i}]: expected a path or a {{'path': ...}} mapping")
    return out


def _version_path(plugin_id: str, version: str, path: str | None) -> str:
    """Where a version's files are, relative to plugins/ (the schema's ``path`` pattern)."""
    canonical = f"packages/{plugin_id}/{version}"
    if path is None or path == canonical:
        return canonical
    suffix = path[len(canonical) + len(REPLACED_MARK) :]
    if not (path.startswith(canonical + REPLACED_MARK) and _REPLACED_SUFFIX.fullmatch(suffix)):
        raise RegistryError(
            f"path: expected {canonical} or {canonical}{REPLACED_MARK}<16 hex digits>, "
            f"found {path!r}"
        )
    return path


def _sort_versions(versions: Iterable[str]) -> list[str]:
    return sorted(versions, key=Version)


def _settle_pending(record: Record) -> None:
    """A pending version must still exist and be newer than the active one."""
    pending, active = record.get("pending_version"), record.get("active_version")
    if pending is not None and (
        pending not in record["versions"] or active is None or Version(pending) <= Version(active)
    ):
        record["pending_version"] = None


_ID = re.compile(r"[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)+")
_RECORD_KEYS = {
    "enabled",
    "active_version",
    "pending_version",
    "granted",
    "registered_at",
    "updated_at",
    "versions",
}
_REQUIRED = ("enabled", "active_version", "granted", "versions")
_VERSION_KEYS = {"path", "manifest", "digest", "files", "staged_at"}
_TOP_KEYS = {"schema", "updated_at", "plugins"}


def _found(value: object) -> str:
    name = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    for cls, word in name.items():
        if isinstance(value, cls):
            return word
    return "number" if isinstance(value, int | float) else type(value).__name__


def _version_problems(pid: str, version: object, entry: object) -> list[str]:
    where = f"versions[{version!r}]"
    if not isinstance(version, str):
        return [f"{where}: version is not a string"]
    try:
        Version(version)
    except ValueError:
        return [f"{where}: not a PEP 440 version"]
    if not isinstance(entry, dict):
        return [f"{where}: expected an object, found {_found(entry)}"]
    problems = [f"{where}.{k}: missing" for k in ("path", "manifest", "digest") if k not in entry]
    problems += [f"{where}.{k}: unknown key" for k in sorted(set(entry) - _VERSION_KEYS)]
    path = entry.get("path")
    if "path" in entry:
        try:
            _version_path(pid, version, path if isinstance(path, str) else repr(path))
        except RegistryError as exc:
            problems.append(f"{where}.{exc}")
    digest = entry.get("digest")
    if digest is not None and not (isinstance(digest, str) and _DIGEST.fullmatch(digest)):
        problems.append(f"{where}.digest: expected 'tree-v1:sha256:<64 hex>' or null")
    files = entry.get("files", [])
    if not (isinstance(files, list) and all(isinstance(f, dict) for f in files)):
        problems.append(f"{where}.files: expected an array of objects")
    manifest = entry.get("manifest", {})
    if not isinstance(manifest, dict):
        problems.append(f"{where}.manifest: expected an object, found {_found(manifest)}")
    elif "manifest" in entry:
        if manifest.get("id") != pid or manifest.get("version") != version:
            problems.append(f"{where}.manifest: its id and version are not {pid} {version}")
        perms = manifest.get("permissions", [])
        if not (isinstance(perms, list) and all(isinstance(c, str) for c in perms)):
            problems.append(f"{where}.manifest.permissions: expected an array of strings")
        calls = manifest.get("calls", [])
        if not isinstance(calls, list):
            problems.append(f"{where}.manifest.calls: expected an array of <plugin id>/<function>")
        else:
            bad = next((c for c in calls if not is_call_target(c)), None)
            if bad is not None:
                problems.append(
                    f"{where}.manifest.calls: {shown(bad)} is not <plugin id>/<function>"
                )
    return problems


def _granted_problems(granted: object) -> list[str]:
    """``granted``: distinct capabilities and call grants (``call:<plugin id>/<function>``)."""
    if not isinstance(granted, list):
        return [f"granted: expected an array of capabilities and {CALL_GRANT_FORM}, found "
                f"{_found(granted)}"]  # fmt: skip
    problems: list[str] = []
    seen: set[str] = set()
    for i, item in enumerate(granted):
        problem = grant_problem(item)
        if problem is not None:
            problems.append(f"granted[{i}]: {problem}")
        elif item in seen:
            problems.append(f"granted[{i}]: {item} granted twice")
        else:
            seen.add(item)
        if len(problems) >= 5:
            break
    return problems


def record_problems(pid: str, record: object) -> list[str]:
    """What is wrong with one registry record (empty when it matches the schema)."""
    if not isinstance(record, dict):
        return [f"expected an object, found {_found(record)}"]
    problems = [f"{k}: missing (required)" for k in _REQUIRED if k not in record]
    problems += [f"{k}: unknown key" for k in sorted(set(record) - _RECORD_KEYS)]
    if "enabled" in record and not isinstance(record["enabled"], bool):
        problems.append(f"enabled: expected a boolean, found {_found(record['enabled'])}")
    problems += _granted_problems(record.get("granted", []))
    for key in ("registered_at", "updated_at"):
        if not isinstance(record.get(key, ""), str):
            problems.append(f"{key}: expected a time string")
    versions = record.get("versions", {})
    if not isinstance(versions, dict) or ("versions" in record and not versions):
        problems.append(f"versions: expected a non-empty object, found {_found(versions)}")
        versions = {}
    for version, entry in versions.items():
        problems += _version_problems(pid, version, entry)
    if "active_version" in record and record["active_version"] not in versions:
        problems.append(
            f"active_version: {record['active_version']!r} is not one of the staged versions"
        )
    pending = record.get("pending_version")
    if pending is not None and pending not in versions:
        problems.append(f"pending_version: {pending!r} is not one of the staged versions")
    return problems


class PluginRegistry:
    """The registry of staged plugins in ``<plugins_dir>/registry.json``.

    Every read-modify-write holds an exclusive flock on ``registry.lock`` and replaces the
    file atomically, keeping the previous version as ``registry.json.bak``; every change is
    appended to ``audit.log``. Reads take no lock: they open the file once and reuse the
    parsed copy while the file (device, inode, size, times) is unchanged.
    """

    def __init__(self, plugins_dir: Path | str | None = None, *, actor: str | None = None):
        self.plugins_dir = Path(plugins_dir) if plugins_dir is not None else paths.plugins_dir()
        self.path = self.plugins_dir / "registry.json"
        self.backup_path = self.plugins_dir / "registry.json.bak"
        self.lock_path = self.plugins_dir / "registry.lock"
        self.checked_path = self.plugins_dir / "registry.json.checked"
        self.audit_path = self.plugins_dir / "audit.log"
        self.actor = actor
        self._snapshot: _Snapshot | None = None
        self._fragments: dict[str, tuple[Record, str]] = {}
        self._frozen: dict[str, tuple[Record, Record]] = {}

    # -- reading ---------------------------------------------------------------------------

    def _corrupt(self, why: str) -> RegistryError:
        if self.backup_path.exists():
            hint = (
                f"the last good copy is {self.backup_path}: check it, then copy it over {self.path}"
            )
        else:
            hint = f"no backup exists ({self.backup_path})"
        return RegistryError(
            f"registry {self.path} is unreadable: {why}; it was not changed; {hint}"
        )

    @staticmethod
    def _fragments_of(text: str, plugins: Mapping[str, Record]) -> dict[str, tuple[Record, str]]:
        """Each record's JSON text, sliced from a file in our layout (empty if it is not)."""
        split = _split_lines(text)
        if split is None or len(split[1]) != len(plugins):
            return {}
        fragments: dict[str, tuple[Record, str]] = {}
        for (pid, record), line in zip(plugins.items(), split[1], strict=True):
            prefix = _key(pid) + ":"
            if not line.startswith(prefix):
                return {}
            fragments[pid] = (record, line[len(prefix) :].rstrip(","))
        return fragments

    def _parse(self, raw: bytes, *, frozen: bool, strict: bool = True) -> tuple[Data, str]:
        """Parse and check the whole file; ``strict`` (a file not known good): a key twice
        or NaN is refused too (slower: a file this module wrote has neither)."""
        try:
            text = raw.decode("utf-8")
            # For readers, read-only from the start: list() shares it without building a
            # second (frozen) copy. A writer needs no views: the plain parse is cheaper.
            if frozen:
                data = loads_frozen(text, strict=strict)
            else:
                data = loads_strict(text) if strict else json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise self._corrupt(f"not valid JSON ({exc})") from None
        return self._check(data), text

    def _check(self, data: Any) -> Data:
        """Validate the whole file: a wrong shape is an error naming the record, never used."""
        if not isinstance(data, dict) or data.get("schema") != REGISTRY_SCHEMA:
            found = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise self._corrupt(f"expected schema {REGISTRY_SCHEMA!r}, found {found!r}")
        extra = sorted(set(data) - _TOP_KEYS)
        if extra:
            raise self._corrupt(f"unknown top-level keys {extra}")
        plugins = data.get("plugins")
        if not isinstance(plugins, dict):
            raise self._corrupt("'plugins' is not a mapping of plugin records")
        problems: list[str] = []
        for pid, record in plugins.items():
            if not _ID.fullmatch(pid):
                problems.append(f"record {pid[:80]!r}: not a valid plugin id")
                continue
            problems += [f"record {pid!r}: {p}" for p in record_problems(pid, record)]
            if len(problems) > 20:
                break
        if problems:
            raise self._corrupt("wrong shape (" + "; ".join(problems[:20]) + ")")
        return data

    def _read(self) -> bytes:
        """The registry's bytes (bounded; never blocks on a FIFO, never follows a link)."""
        try:
            return read_bytes(self.path, MAX_REGISTRY_BYTES)
        except InputRefused as exc:
            raise self._corrupt(refusal_reason(exc, self.path)) from None
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self._corrupt(exc.strerror or str(exc)) from None

    def _snap(self, *, frozen: bool = True) -> _Snapshot:
        try:
            key = _stat_key(os.lstat(self.path))
        except FileNotFoundError:
            key = ()
        except OSError as exc:
            raise self._corrupt(exc.strerror or str(exc)) from None
        if key and self._snapshot is not None and self._snapshot.key == key:
            return self._snapshot
        try:
            raw = self._read()
        except FileNotFoundError:
            if os.path.lexists(self.backup_path):
                raise self._corrupt("the file is missing but a backup exists") from None
            return _Snapshot(key=(), data={"schema": REGISTRY_SCHEMA, "plugins": {}})
        # Known good before and after the read: the same file this module wrote.
        strict = not (self._known_good(key) and self._stat_key_now() == key)
        data, text = self._parse(raw, frozen=frozen, strict=strict)
        self._snapshot = _Snapshot(key=key, data=data, text=text)
        return self._snapshot

    def list(self) -> dict[str, Record]:
        """Every plugin record by id, each with its active ``manifest``.

        Read-only (mutating it raises TypeError; ``copy.deepcopy`` gives a mutable copy) and
        shared by calls until the registry changes, so listing a large registry is cheap.
        """
        snapshot = self._snap()
        if snapshot.frozen is None:
            # Records parsed for a reader are read-only already (a view only adds "manifest");
            # views of records seen before are reused; the others (written, or parsed for a
            # write) are frozen here.
            old = self._frozen
            views: dict[str, Record] = {}
            for pid, record in snapshot.data["plugins"].items():
                hit = old.get(pid)
                views[pid] = (
                    hit[1] if hit is not None and hit[0] is record else freeze(_view(record))
                )
            self._frozen = {pid: (snapshot.data["plugins"][pid], v) for pid, v in views.items()}
            snapshot.frozen = FrozenDict(views)
        return snapshot.frozen

    def get(self, plugin_id: str) -> Record | None:
        """The record of one plugin (a private copy) or None."""
        found = self._get_line(plugin_id)
        if found is not None:
            return found[0]
        record = self._snap().data["plugins"].get(plugin_id)
        return None if record is None else thaw(_view(record))

    def _get_line(self, plugin_id: str) -> tuple[Record | None] | None:
        """Without a current snapshot, read just the plugin's line (None: use a snapshot).

        Only from a file known to be good as a whole (``_known_good``): otherwise the one
        answer is the full read's, which refuses a damaged file naming the problem.
        """
        try:
            key = _stat_key(os.lstat(self.path))
            if self._snapshot is not None and self._snapshot.key == key:
                return None
            if not self._known_good(key):
                return None
            raw = read_bytes(self.path, MAX_REGISTRY_BYTES)
            if _stat_key(os.lstat(self.path)) != key:
                return None  # changed while read
        except (OSError, InputRefused):
            return None  # missing, unreadable or no regular file: _snap() says what it is
        text = raw.decode("utf-8", "replace")
        if _split_lines(text) is None:
            return None
        start = text.find("\n" + _key(plugin_id) + ":")
        if start < 0:
            return (None,)
        end = text.find("\n", start + 1)
        try:
            pid, record, _ = _parse_line(text[start + 1 : end])
            if pid != plugin_id or record_problems(pid, record):
                return None  # _snap() reports the wrong shape
            return (thaw(_view(record)),)
        except (ValueError, KeyError, TypeError, RecursionError):
            return None

    # A file is known good when this module wrote it (from a file it had checked) and it
    # has not changed since: ``registry.json.checked`` holds its (device, inode, size,
    # mtime, ctime), and any change of the file (a hand edit, a copy) changes its ctime.
    # Only a cache: missing, stale or damaged, the full read checks the file instead.

    def _stat_key_now(self) -> tuple[int, ...]:
        try:
            return _stat_key(os.lstat(self.path))
        except OSError:
            return ()

    def _known_good(self, key: tuple[int, ...]) -> bool:
        try:
            found = json.loads(read_bytes(self.checked_path, 512))
        except (OSError, InputRefused, ValueError):
            return False
        return isinstance(found, list) and tuple(found) == key

    def _mark_good(self, key: tuple[int, ...]) -> None:
        """Record that the file with ``key`` is good (no fsync: lost, it is only slower)."""
        path = self.checked_path
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError:
            return
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(builtins.list(key)))
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def ids(self) -> builtins.list[str]:
        """The registered plugin ids, sorted."""
        return sorted(self._snap().data["plugins"])

    # -- writing ---------------------------------------------------------------------------

    def _audit(
        self, action: str, plugin_id: str | None, version: str | None, **details: Any
    ) -> dict[str, Any]:
        return audit_entry(self.actor, action, plugin_id, version, **details)

    def _recover_locked(self) -> None:
        try:
            recover(self.path, self.audit_path, actor=self.actor, max_bytes=MAX_REGISTRY_BYTES)
        except TxnError as exc:
            raise RegistryError(str(exc)) from None
        # What killed writers left: temp files of the registry, its marker and its backup
        # link (we hold the lock: no writer is alive).
        for target in (self.path, marker_path(self.path)):
            remove_leftover_temps(target)
        for leftover in self.plugins_dir.glob(f".{self.backup_path.name}.tmp-*"):
            with contextlib.suppress(OSError):
                leftover.unlink()

    def left_behind(self, names: Iterable[str] | None = None) -> bool:
        """Whether a writer left a marker or temp files to settle (``names``: the plugins
        dir's entries, when the caller has them)."""
        if names is None:
            try:
                names = os.listdir(self.plugins_dir)
            except OSError:
                return False
        names = builtins.list(names)
        backup_temp = f".{self.backup_path.name}.tmp-"
        return left_behind(self.path, names) or any(n.startswith(backup_temp) for n in names)

    def recover(self) -> None:
        """Record the outcome of a change interrupted between its audit records and its end.

        Every change does this first; call it to settle the log without changing anything.
        """
        if not self.left_behind():
            return
        with locked(self.lock_path):
            self._recover_locked()

    def _change(self, change: Change) -> Any:
        """Run one read-modify-write under the lock; write and audit only if data changed.

        The audit records are written before the change and its outcome after it
        (``core/txn.py``): a change is never made without its records, and a failure is
        never reported for a change that was made.
        """
        private_dir(self.plugins_dir)  # 0700: no other uid opens (so holds) its locks
        with locked(self.lock_path):
            self._recover_locked()
            snapshot = self._snap(frozen=False)
            new, result, entries = change(snapshot.data)
            if new is not None:
                new["updated_at"] = utc_now()
                if snapshot.text is not None:  # read, not written, by this object
                    # The write re-encodes only the records it changes (readers never
                    # pay for slicing the file into records).
                    self._fragments = self._fragments_of(snapshot.text, snapshot.data["plugins"])
                    snapshot.text = None
                blob, fragments = _serialize(new, self._fragments)
                st = audited_replace(
                    self.path,
                    blob,
                    entries,
                    audit=self.audit_path,
                    actor=self.actor,
                    max_bytes=MAX_REGISTRY_BYTES,
                    backup=self.backup_path,
                )
                # Cache what we wrote: the next reader or writer need not parse it again.
                self._snapshot = _Snapshot(key=_stat_key(st), data=new)
                self._mark_good(self._snapshot.key)
                self._fragments = fragments
                for entry in entries:
                    log.info("%s %s %s", entry["action"], entry["id"], entry["version"] or "")
        return result

    @staticmethod
    def _with(data: Data, plugin_id: str, record: Record | None) -> Data:
        plugins = dict(data["plugins"])
        if record is None:
            del plugins[plugin_id]
        else:
            plugins[plugin_id] = record
        return {**data, "plugins": plugins}

    def _record(self, data: Data, plugin_id: str) -> Record:
        record = data["plugins"].get(plugin_id)
        if record is None:
            raise UnknownPlugin(plugin_id)
        copied: Record = thaw(record)
        return copied

    def _permission_gate(self, plugin_id: str, record: Record, version: str) -> None:
        """Raise PermissionDenied unless every capability ``version`` requests may be used."""
        requested = _requested(record, version)
        blocked = requested & load_policy(self.plugins_dir).blocked
        if blocked:
            raise PermissionDenied(
                plugin_id,
                blocked,
                f"version {version} requests {', '.join(sorted(blocked))}, blocked by policy",
            )
        missing = requested - set(record["granted"])
        if missing:
            names = " ".join(sorted(missing))
            raise PermissionDenied(
                plugin_id,
                missing,
                f"version {version} requests {', '.join(sorted(missing))}, not granted "
                f"(grant with: {prog_name('plugins.py')} grant {plugin_id} {names})",
            )

    def register(
        self,
        manifest: Mapping[str, Any],
        files: Iterable[Any],
        *,
        digest: str | None = None,
        replace: bool = False,
    ) -> bool:
        """Record a staged version of a plugin (see ``register_version``); returns True."""
        self.register_version(manifest, files, digest=digest, replace=replace)
        return True

    def register_version(
        self,
        manifest: Mapping[str, Any],
        files: Iterable[Any],
        *,
        digest: str | None = None,
        replace: bool = False,
        path: str | None = None,
    ) -> dict[str, Any]:
        """Record a version; return what happened (changed, active, pending, missing grants).

        A first version becomes active (disabled). A newer version becomes active unless the
        plugin is enabled and the version requests capabilities not granted: then it waits as
        ``pending_version`` until the operator grants the difference and enables it.
        Capabilities in the policy's ``allowed`` list are granted automatically. ``path`` is
        where the files are, relative to the plugins directory (default:
        ``packages/<id>/<version>``; the loader stages replaced content elsewhere).
        """
        validate_manifest(manifest)
        manifest = thaw(dict(manifest))
        file_list = _normalize_files(files)
        plugin_id: str = manifest["id"]
        version: str = manifest["version"]
        where = _version_path(plugin_id, version, path)
        if digest is not None and not (isinstance(digest, str) and _DIGEST.fullmatch(digest)):
            raise RegistryError(f"digest: expected 'tree-v1:sha256:<64 hex>', found {digest!r}")

        def change(data: Data) -> tuple[Data | None, Any, list[dict[str, Any]]]:
            now = utc_now()
            old = data["plugins"].get(plugin_id)
            record: Record = (
                thaw(old)
                if old is not None
                else {
                    "enabled": False,
                    "active_version": None,
                    "pending_version": None,
                    "granted": [],
                    "registered_at": now,
                    "updated_at": now,
                    "versions": {},
                }
            )
            entry = {
                "path": where,
                "manifest": manifest,
                "digest": digest,
                "files": file_list,
                "staged_at": now,
            }
            existing = record["versions"].get(version)
            if existing is not None:
                same = all(
                    existing.get(k) == entry[k] for k in ("manifest", "digest", "files", "path")
                )
                if same:
                    return None, self._status(record, version, changed=False), []
                if not replace:
                    raise RegistryError(
                        f"{plugin_id} {version} is already registered with different content "
                        "(`stage --replace` overwrites it)"
                    )
            for other in record["versions"]:
                if other != version and Version(other) == Version(version):
                    raise RegistryError(
                        f"{plugin_id}: version {version!r} equals the registered {other!r}"
                    )
            record["versions"][version] = entry
            entries = [self._audit("register", plugin_id, version, digest=digest)]
            requested = _requested(record, version)
            policy = load_policy(self.plugins_dir)
            auto = sorted((requested & policy.allowed) - policy.blocked - set(record["granted"]))
            if auto:
                record["granted"] = sorted(set(record["granted"]) | set(auto))
                entries.append(
                    self._audit("grant", plugin_id, version, capabilities=auto, by="policy")
                )
            covered = not (requested - set(record["granted"])) and not (requested & policy.blocked)
            entries += self._take_version(plugin_id, record, version, covered=covered)
            _settle_pending(record)
            record["updated_at"] = now
            return self._with(data, plugin_id, record), self._status(record, version, True), entries

        result: dict[str, Any] = self._change(change)
        return result

    def _take_version(
        self, plugin_id: str, record: Record, version: str, *, covered: bool
    ) -> builtins.list[dict[str, Any]]:
        """Make a newly registered version active, pending or neither; return audit entries.

        ``covered``: every capability it requests is granted and none is blocked. The first
        version becomes active. A newer one becomes active unless the plugin is enabled and
        the version is not covered: then it waits as pending. New content for the active
        version that is not covered disables the plugin.
        """
        active = record["active_version"]
        if active is None or active not in record["versions"]:
            record["active_version"] = version
        elif version == active:
            if record["enabled"] and not covered:
                record["enabled"] = False
                reason = "replaced by content that requests ungranted capabilities or calls"
                return [self._audit("disable", plugin_id, version, reason=reason)]
        elif Version(version) > Version(active):
            if record["enabled"] and not covered:
                record["pending_version"] = version
            else:
                record["active_version"] = version
        return []

    def _status(self, record: Record, version: str, changed: bool) -> dict[str, Any]:
        requested = _requested(record, version)
        return {
            "changed": changed,
            "active": record["active_version"] == version,
            "active_version": record["active_version"],
            "pending_version": record.get("pending_version"),
            "enabled": record["enabled"],
            "granted": sorted(record["granted"]),
            "missing": sorted(requested - set(record["granted"])),
        }

    def enable(self, plugin_id: str, version: str | None = None) -> bool:
        """Enable a plugin (its pending version if any, or ``version``); False if unknown.

        Raises PermissionDenied while a requested capability is not granted or is blocked.
        """

        def change(data: Data) -> tuple[Data | None, Any, list[dict[str, Any]]]:
            if plugin_id not in data["plugins"]:
                return None, False, []
            record = self._record(data, plugin_id)
            target = version or record.get("pending_version") or record["active_version"]
            if target not in record["versions"]:
                raise UnknownPlugin(plugin_id, target, staged=record["versions"])
            self._permission_gate(plugin_id, record, target)
            if record["enabled"] and record["active_version"] == target:
                return None, True, []
            previous = record["active_version"]
            record["enabled"] = True
            record["active_version"] = target
            _settle_pending(record)
            record["updated_at"] = utc_now()
            entry = self._audit("enable", plugin_id, target, previous_version=previous)
            return self._with(data, plugin_id, record), True, [entry]

        result: bool = self._change(change)
        return result

    def disable(self, plugin_id: str) -> bool:
        """Disable a plugin; False if unknown."""

        def change(data: Data) -> tuple[Data | None, Any, list[dict[str, Any]]]:
            if plugin_id not in data["plugins"]:
                return None, False, []
            record = self._record(data, plugin_id)
            if not record["enabled"]:
                return None, True, []
            record["enabled"] = False
            record["updated_at"] = utc_now()
            entry = self._audit("disable", plugin_id, record["active_version"])
            return self._with(data, plugin_id, record), True, [entry]

        result: bool = self._change(change)
        return result

    def unregister(self, plugin_id: str, version: str | None = None) -> bool:
        """Forget a plugin, or one of its versions; False if unknown.

        Removing the active version disables the plugin and makes the newest remaining
        version active: a different version never starts without the operator.
        """

        def change(data: Data) -> tuple[Data | None, Any, list[dict[str, Any]]]:
            old = data["plugins"].get(plugin_id)
            if old is None or (version is not None and version not in old["versions"]):
                return None, False, []
            record = self._record(data, plugin_id)
            if version is None or len(record["versions"]) == 1:
                entry = self._audit("unregister", plugin_id, version)
                return self._with(data, plugin_id, None), True, [entry]
            del record["versions"][version]
            entries = [self._audit("unregister", plugin_id, version)]
            if record["active_version"] == version:
                if record["enabled"]:
                    entries.append(self._audit("disable", plugin_id, version, reason="removed"))
                record["enabled"] = False
                record["active_version"] = _sort_versions(record["versions"])[-1]
            _settle_pending(record)
            record["updated_at"] = utc_now()
            return self._with(data, plugin_id, record), True, entries

        result: bool = self._change(change)
        return result

    def grant(self, plugin_id: str, capabilities: Iterable[str]) -> builtins.list[str]:
        """Grant capabilities or call grants (``call:<id>/<fn>``) the plugin requests; return
        those newly granted.

        Raises CapabilityError for unknown names or names no version requests,
        PermissionDenied for names the policy blocks, UnknownPlugin for an unknown id.
        """
        caps = check_grants(capabilities)

        def change(data: Data) -> tuple[Data | None, Any, list[dict[str, Any]]]:
            record = self._record(data, plugin_id)
            requested: set[str] = set()
            for v in record["versions"]:
                requested |= _requested(record, v)
            unrequested = sorted(set(caps) - requested)
            if unrequested:
                raise CapabilityError(
                    f"{plugin_id} does not request {', '.join(unrequested)} "
                    f"(requests: {', '.join(sorted(requested)) or 'nothing'})"
                )
            blocked = set(caps) & load_policy(self.plugins_dir).blocked
            if blocked:
                raise PermissionDenied(
                    plugin_id, blocked, f"{', '.join(sorted(blocked))} blocked by policy"
                )
            new = sorted(set(caps) - set(record["granted"]))
            if not new:
                return None, [], []
            record["granted"] = sorted(set(record["granted"]) | set(new))
            record["updated_at"] = utc_now()
            entry = self._audit("grant", plugin_id, record["active_version"], capabilities=new)
            return self._with(data, plugin_id, record), new, [entry]

        result: builtins.list[str] = self._change(change)
        return result

    def revoke(self, plugin_id: str, capabilities: Iterable[str]) -> dict[str, Any]:
        """Revoke capabilities or call grants; an enabled plugin whose active version needs one
        is disabled.

        Returns ``{"revoked": [...], "disabled": bool}``.
        """
        caps = check_grants(capabilities)

        def change(data: Data) -> tuple[Data | None, Any, list[dict[str, Any]]]:
            record = self._record(data, plugin_id)
            gone = sorted(set(caps) & set(record["granted"]))
            if not gone:
                return None, {"revoked": [], "disabled": False}, []
            record["granted"] = sorted(set(record["granted"]) - set(gone))
            active = record["active_version"]
            entries = [self._audit("revoke", plugin_id, active, capabilities=gone)]
            disabled = bool(record["enabled"] and _requested(record, active) & set(gone))
            if disabled:
                record["enabled"] = False
                entries.append(self._audit("disable", plugin_id, active, reason="revoked"))
            record["updated_at"] = utc_now()
            result = {"revoked": gone, "disabled": disabled}
            return self._with(data, plugin_id, record), result, entries

        result: dict[str, Any] = self._change(change)
        return result

    def enforce_blocked(self, blocked: Iterable[str]) -> dict[str, builtins.list[str]]:
        """Withdraw newly blocked capabilities from every plugin; disable those that need them.

        Returns the capabilities withdrawn, by plugin id.
        """
        blocked_set = set(blocked)

        def change(data: Data) -> tuple[Data | None, Any, list[dict[str, Any]]]:
            new = data
            withdrawn: dict[str, builtins.list[str]] = {}
            entries: list[dict[str, Any]] = []
            for pid, old in data["plugins"].items():
                gone = sorted(blocked_set & set(old["granted"]))
                if not gone:
                    continue
                record: Record = thaw(old)
                active = record["active_version"]
                record["granted"] = sorted(set(record["granted"]) - blocked_set)
                entries.append(self._audit("revoke", pid, active, capabilities=gone, by="policy"))
                if record["enabled"] and _requested(record, active) & blocked_set:
                    record["enabled"] = False
                    entries.append(self._audit("disable", pid, active, reason="blocked by policy"))
                record["updated_at"] = utc_now()
                new = self._with(new, pid, record)
                withdrawn[pid] = gone
            return (new if withdrawn else None), withdrawn, entries

        result: dict[str, builtins.list[str]] = self._change(change)
        return result

    def rollback(self, plugin_id: str, version: str | None = None) -> str:
        """Make an earlier staged version active (default: the newest below the active one).

        Returns the version now active. An enabled plugin stays enabled only if that version's
        capabilities are all granted; otherwise PermissionDenied and nothing changes.
        """

        def change(data: Data) -> tuple[Data | None, Any, list[dict[str, Any]]]:
            record = self._record(data, plugin_id)
            active = record["active_version"]
            if version is None:
                older = [v for v in record["versions"] if Version(v) < Version(active)]
                if not older:
                    raise UnknownPlugin(
                        plugin_id, f"older than {active}", staged=record["versions"]
                    )
                target = _sort_versions(older)[-1]
            else:
                target = version
            if target not in record["versions"]:
                raise UnknownPlugin(plugin_id, target, staged=record["versions"])
            if target == active:
                return None, target, []
            if record["enabled"]:
                self._permission_gate(plugin_id, record, target)
            record["active_version"] = target
            _settle_pending(record)
            record["updated_at"] = utc_now()
            entry = self._audit("rollback", plugin_id, target, previous_version=active)
            return self._with(data, plugin_id, record), target, [entry]

        result: str = self._change(change)
        return result
