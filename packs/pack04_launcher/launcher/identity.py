"""Per-plugin host identities: one uid (and the gid of the same number) per plugin id.

Allocated from ``FIRST_ID``..``LAST_ID`` (README "Plugin identity"), recorded per home
in ``$AURORA_PACK_DATA/identities.json`` (atomic write under ``identities.lock``, mode
0600) and audited. A uid is a host-wide resource, so each number is also *claimed*
host-wide: one file per number in the claims directory (``Paths.uid_claims``, default
``/var/lib/aurora/plugin-uids``, root's, 0700), created exclusively (``link(2)`` of a
complete temp file: EEXIST means someone else has it) and naming the installation
(the real path of pack04's data dir) and the plugin id. Every start checks the claim of
the recorded number; a number another installation holds is never used: the plugin
gets a new one. Claims and entries are never deleted, so a removed plugin's number is
never given to anyone else.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from launcher import audit
from launcher.errors import LauncherError
from launcher.fsutil import atomic_write_json, locked
from launcher.paths import Paths

SCHEMA = "aurora-launcher-identities-v1"
CLAIM_SCHEMA = "aurora-uid-claim-v1"
#: Below 2^31 (no tool reads it as negative), above systemd-nspawn's container range
#: (524288-1879048191) and subuid blocks, below systemd's foreign range (2147352576+).
FIRST_ID = 2_000_000_000
LAST_ID = 2_000_099_999
#: A claim file is a few hundred bytes; more is not a claim of ours.
_CLAIM_MAX = 4096


def _nss_uses(number: int) -> bool:
    """True when the user or group database (NSS) already has ``number``."""
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(number)
        except KeyError:
            continue
        return True
    return False


def _live_uids() -> set[int]:
    """Every real, effective, saved and fs uid of a live process on the host.

    An installation from before host-wide claims (or a wiped claims directory) may run
    plugins on unclaimed numbers: those are skipped too. ``/proc/<pid>`` ownership is
    not enough (a process that changed uid is not dumpable and shows as root's).
    """
    uids: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        uids.update(int(x) for x in line.split()[1:])
                        break
        except (OSError, ValueError):
            continue  # exited meanwhile
    return uids


def host_checker() -> Callable[[int], bool]:
    """``number -> bool``: the host uses it (NSS, or a live process runs as it)."""
    live = _live_uids()
    return lambda number: number in live or _nss_uses(number)


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


class Claims:
    """The host-wide claims directory, opened once and checked: every operation goes
    through its fd, so a path swapped after the check is never followed."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    def holder(self, number: int) -> dict[str, Any] | None:
        """Who claims ``number``: the claim's document, ``{}`` when it names nobody we
        can read (still taken), None when nobody claims it."""
        try:
            fd = os.open(str(number), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._fd)
        except FileNotFoundError:
            return None
        except OSError:
            return {}  # a symlink or worse where a claim should be: not ours, not free
        try:
            with os.fdopen(fd, "rb") as f:
                doc = json.loads(f.read(_CLAIM_MAX + 1))
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) and doc.get("schema") == CLAIM_SCHEMA else {}

    def taken(self) -> set[int]:
        """Every number claimed by anyone."""
        return {int(n) for n in os.listdir(self._fd) if n.isascii() and n.isdigit()}

    def claim(self, number: int, doc: dict[str, Any]) -> bool:
        """Claim ``number`` for ``doc``'s owner; False when someone already has it."""
        final = str(number)
        temp = f".{number}.{os.getpid()}.{secrets.token_hex(4)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(temp, flags, 0o600, dir_fd=self._fd)
            try:
                os.write(fd, (json.dumps(doc, sort_keys=True) + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                # link(2) never replaces: the claim appears complete, or not at all.
                os.link(temp, final, src_dir_fd=self._fd, dst_dir_fd=self._fd,
                        follow_symlinks=False)  # fmt: skip
            except FileExistsError:
                return False
            finally:
                os.unlink(temp, dir_fd=self._fd)
            os.fsync(self._fd)
        except OSError as exc:
            raise LauncherError(
                f"{self.path / final}: cannot claim uid {number}: {exc.strerror}"
            ) from exc
        return True


@contextlib.contextmanager
def open_claims(path: Path) -> Iterator[Claims]:
    """The claims directory, made if absent (0700), refused unless it is a real
    directory of this uid that no one else may write or read."""
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        what = "a symbolic link" if path.is_symlink() else exc.strerror
        raise LauncherError(
            f"{path}: unusable uid claims directory ({what}); "
            "it must be a real directory, root's, mode 0700"
        ) from exc
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
            raise LauncherError(
                f"{path}: unusable uid claims directory (owner uid {st.st_uid}, mode "
                f"{stat.S_IMODE(st.st_mode):04o}); it must be uid {os.geteuid()}'s, mode 0700"
            )
        if not os.access(f"/proc/self/fd/{fd}", os.W_OK):
            raise LauncherError(f"{path}: unusable uid claims directory (not writable)")
        yield Claims(path, fd)
    finally:
        os.close(fd)


def _new_number(
    claims: Claims, known: dict[str, int], uses: Callable[[int], bool], doc: dict[str, Any]
) -> int:
    """The lowest number nobody claims, this home never recorded and the host does not
    use, claimed for ``doc`` now."""
    skip = claims.taken() | set(known.values())
    for number in range(FIRST_ID, LAST_ID + 1):
        if number in skip or uses(number):
            continue
        if claims.claim(number, doc):
            return number
        # another installation claimed it between the listing and the link: next one
    raise LauncherError(
        f"{claims.path}: no plugin uid left in {FIRST_ID}..{LAST_ID} for {doc['plugin']}"
    )


def allocate(
    path: Path,
    lock: Path,
    audit_log: Path,
    plugin_id: str,
    claims_dir: Path,
    installation: Path,
    host_uses: Callable[[int], bool] | None = None,
) -> int:
    """The uid (= gid) of ``plugin_id`` of the installation whose data dir is
    ``installation``: the recorded one while its claim is ours, else a new one.

    A recorded number with no claim (a home from before claims, a wiped claims dir) is
    claimed again if the host does not use it; one claimed by anyone else is replaced
    (``reallocate-identity``). Raises LauncherError naming the file when the identities
    file or the claims directory is unusable, or the range is spent.
    """
    doc = {"schema": CLAIM_SCHEMA, "installation": os.path.realpath(installation),
           "plugin": plugin_id}  # fmt: skip
    number = read_identities(path).get(plugin_id)
    with open_claims(claims_dir) as claims:
        if number is not None and claims.holder(number) == doc:
            return number  # the usual start: recorded and ours
        with locked(lock):
            known = read_identities(path)  # another process may have allocated meanwhile
            number = known.get(plugin_id)
            uses = host_uses or host_checker()
            record: dict[str, object]
            if number is None:
                new = _new_number(claims, known, uses, doc)
                record = {"action": "allocate-identity", "uid": new, "gid": new}
            else:
                holder = claims.holder(number)
                if holder == doc:
                    return number
                if holder is None and not uses(number) and claims.claim(number, doc):
                    audit.append(audit_log, {"action": "claim-identity", "plugin": plugin_id,
                                             "uid": number, "claim": str(claims.path / str(number)),
                                             "changed": True})  # fmt: skip
                    return number
                new = _new_number(claims, known, uses, doc)
                if holder is None:
                    why = "in use on the host, or claimed meanwhile"
                elif holder:
                    why = f"claimed by {holder.get('installation')} ({holder.get('plugin')})"
                else:
                    why = "claimed by an unreadable claim file"
                record = {"action": "reallocate-identity", "uid": new, "gid": new,
                          "previous_uid": number, "why": why}  # fmt: skip
            audit.append(audit_log, {**record, "plugin": plugin_id, "changed": True,
                                     "claim": str(claims.path / str(new))})  # fmt: skip
            known[plugin_id] = new
            atomic_write_json(
                path,
                {
                    "schema": SCHEMA,
                    "plugins": {k: {"uid": v, "gid": v} for k, v in sorted(known.items())},
                },
            )
            return new


def for_plugin(paths: Paths, plugin_id: str) -> int:
    """``allocate`` with an installation's own files (service and ``run`` alike)."""
    return allocate(paths.identities, paths.identities_lock, paths.audit_log, plugin_id,
                    paths.uid_claims, paths.data)  # fmt: skip
