"""Per-plugin host identities: one uid (and the gid of the same number) per plugin id.

Allocated from ``FIRST_ID``..``LAST_ID`` (README "Plugin identity"), skipping numbers
the host's user or group database already uses, recorded in
``$AURORA_PACK_DATA/identities.json`` (atomic write under ``identities.lock``, mode
0600) and audited. A number is never given to another plugin id, even after the plugin
is removed: entries are never deleted.
"""

from __future__ import annotations

import grp
import json
import pwd
from collections.abc import Callable
from pathlib import Path

from launcher import audit
from launcher.errors import LauncherError
from launcher.fsutil import atomic_write_json, locked

SCHEMA = "aurora-launcher-identities-v1"
#: Below 2^31 (no tool reads it as negative), above systemd-nspawn's container range
#: (524288-1879048191) and subuid blocks, below systemd's foreign range (2147352576+).
FIRST_ID = 2_000_000_000
LAST_ID = 2_000_099_999


def _host_uses(number: int) -> bool:
    """True when the user or group database (NSS) already has ``number``."""
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(number)
        except KeyError:
            continue
        return True
    return False


def read_identities(path: Path) -> dict[str, int]:
    """``{plugin id: uid}`` as recorded; an absent file means none.

    Raises LauncherError naming the file when it exists but cannot be used: no
    plugin is started under a guessed identity.
    """
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise LauncherError(f"{path}: unreadable identities file ({exc})") from exc
    plugins = doc.get("plugins") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(plugins, dict):
        raise LauncherError(f"{path}: not a {SCHEMA} file")
    out: dict[str, int] = {}
    problems = []
    for plugin_id, rec in plugins.items():
        uid = rec.get("uid") if isinstance(rec, dict) else None
        if not isinstance(uid, int) or isinstance(uid, bool) or not FIRST_ID <= uid <= LAST_ID:
            problems.append(
                f"plugins.{plugin_id}.uid: expected {FIRST_ID}..{LAST_ID}, found {uid!r}"
            )
            continue
        out[plugin_id] = uid
    if len(set(out.values())) != len(out):
        problems.append("two plugin ids share a uid")
    if problems:
        raise LauncherError(f"{path}: " + "; ".join(problems))
    return out


def allocate(
    path: Path,
    lock: Path,
    audit_log: Path,
    plugin_id: str,
    host_uses: Callable[[int], bool] = _host_uses,
) -> int:
    """The uid (= gid) of ``plugin_id``: the recorded one, or a new one recorded now.

    A new number is the lowest above every number ever recorded that the host does
    not use. Raises LauncherError when the file is unusable or the range is spent.
    """
    known = read_identities(path)
    if plugin_id in known:
        return known[plugin_id]
    with locked(lock):
        known = read_identities(path)  # another process may have allocated meanwhile
        if plugin_id in known:
            return known[plugin_id]
        number = max(known.values(), default=FIRST_ID - 1) + 1
        while number <= LAST_ID and host_uses(number):
            number += 1
        if number > LAST_ID:
            raise LauncherError(
                f"{path}: no plugin uid left in {FIRST_ID}..{LAST_ID} for {plugin_id}"
            )
        audit.append(audit_log, {"action": "allocate-identity", "plugin": plugin_id,
                                 "uid": number, "gid": number, "changed": True})  # fmt: skip
        known[plugin_id] = number
        atomic_write_json(
            path,
            {
                "schema": SCHEMA,
                "plugins": {k: {"uid": v, "gid": v} for k, v in sorted(known.items())},
            },
        )
        return number
