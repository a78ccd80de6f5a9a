"""The plugin's identity: an unprivileged host uid/gid of its own, no supplementary group.

Switched last among the root-only steps (cgroups, namespaces, mounts are done), in
this order: bounding set emptied and securebits locked (needs CAP_SETPCAP, so while
still root), ``setgroups([])``, ``setresgid``, ``setresuid`` (the kernel clears the
permitted and effective sets on the switch from uid 0: the lock keeps the
"setuid fixup" on), the remaining sets zeroed, and the result read back: if
getresuid/getresgid/getgroups are not exactly what was asked, the run is refused.
"""

from __future__ import annotations

import os

from sandbox import _libc
from sandbox.errors import LayerError

# SECBIT_NOROOT|NOROOT_LOCKED|NO_SETUID_FIXUP_LOCKED (fixup stays on)|KEEP_CAPS_LOCKED
# (keep-caps stays off)|NO_CAP_AMBIENT_RAISE|NO_CAP_AMBIENT_RAISE_LOCKED
SECUREBITS_UNPRIVILEGED = 0b1110_1011


def become(uid: int, gid: int) -> None:
    """Switch this process to uid:gid for good; raise LayerError when it did not happen."""
    if uid <= 0 or gid <= 0:
        raise LayerError(f"identity: uid {uid} / gid {gid}: a plugin never runs as root")
    try:
        if os.geteuid() == 0:
            from sandbox.privileges import drop_bounding_set

            drop_bounding_set()
            _libc.prctl(_libc.PR_SET_SECUREBITS, SECUREBITS_UNPRIVILEGED)
            os.setgroups([])
        elif (os.getuid(), os.getgid()) != (uid, gid):
            raise LayerError(
                f"identity: a launcher of uid {os.getuid()} can only run a plugin as itself, "
                f"not as {uid}:{gid} (no CAP_SETUID)"
            )
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        _libc.prctl(_libc.PR_CAP_AMBIENT, _libc.PR_CAP_AMBIENT_CLEAR_ALL)
        _libc.capset_zero()
    except OSError as exc:
        raise LayerError(f"identity: cannot switch to {uid}:{gid}: {exc.strerror}") from None
    verify(uid, gid)


def verify(uid: int, gid: int) -> None:
    """Refuse unless real, effective and saved ids are uid/gid and no group is left."""
    got = (os.getresuid(), os.getresgid(), os.getgroups())
    if got[0] != (uid, uid, uid) or got[1] != (gid, gid, gid) or got[2] not in ([], [gid]):
        raise LayerError(
            f"identity: asked {uid}:{gid}, got uids {got[0]}, gids {got[1]}, groups {got[2]}"
        )


def may_become(uid: int, gid: int) -> str | None:
    """Why this launcher cannot run a plugin as uid:gid (None: it can)."""
    if os.geteuid() == 0:
        return None
    if (os.getuid(), os.getgid()) == (uid, gid):
        return None
    return (f"a launcher of uid {os.getuid()}:{os.getgid()} can only run a plugin as its own "
            f"uid/gid, not {uid}:{gid} (it lacks CAP_SETUID)")  # fmt: skip


__all__ = ["SECUREBITS_UNPRIVILEGED", "become", "may_become", "verify"]
