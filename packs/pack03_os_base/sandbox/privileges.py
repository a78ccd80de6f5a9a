"""Privileges: no_new_privs, and the bounding set emptied before the uid switch.

The plugin never keeps uid 0 (sandbox.identity switches it to its own uid); the
bounding set is emptied first, so no exec can ever give a capability back.
"""

from __future__ import annotations

import functools

from sandbox import _libc

# SECBIT_NOROOT|NOROOT_LOCKED|NO_SETUID_FIXUP|NO_SETUID_FIXUP_LOCKED|KEEP_CAPS_LOCKED|
# NO_CAP_AMBIENT_RAISE|NO_CAP_AMBIENT_RAISE_LOCKED
SECUREBITS_LOCKDOWN = 0b1110_1111


def set_no_new_privs() -> None:
    """Exec can never gain privileges (setuid bits, file capabilities) from here on."""
    _libc.prctl(_libc.PR_SET_NO_NEW_PRIVS, 1)


@functools.cache  # read once (a server reads it before it forks: every start needs it)
def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 40


#: What a server spare's plugin process may still need once its request is known, by
#: number: the native path (CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID, KILL,
#: SETGID, SETUID, SETPCAP, SYS_ADMIN, SYS_RESOURCE, MKNOD: cgroups, data dir, mounts,
#: device nodes, identity, rlimits) and bwrap, which a bwrap request execs as root (its
#: required NET_ADMIN, SYS_CHROOT, SYS_PTRACE too). The rest goes ahead of the request.
NEEDED_AFTER_CLAIM = frozenset({0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 18, 19, 21, 24, 27})
_dropped: set[int] = set()  # by this process (a fork inherits both these and the set)


def drop_bounding_set(keep: frozenset[int] = frozenset()) -> None:
    """Empty the bounding set but `keep` (needs CAP_SETPCAP; raises OSError on failure).
    Each drop commits new credentials: one dropped earlier is not dropped again."""
    for cap in range(last_cap() + 1):
        if cap not in keep and cap not in _dropped:
            _libc.prctl(_libc.PR_CAPBSET_DROP, cap)
            _dropped.add(cap)


def drop_all_capabilities() -> None:
    """Empty every capability set of this process, for good (raises OSError on failure)."""
    drop_bounding_set()
    _libc.prctl(_libc.PR_SET_SECUREBITS, SECUREBITS_LOCKDOWN)
    _libc.prctl(_libc.PR_CAP_AMBIENT, _libc.PR_CAP_AMBIENT_CLEAR_ALL)
    _libc.capset_zero()


def capability_sets(pid: str = "self") -> dict[str, int]:
    """CapEff/CapPrm/CapBnd/... of a process, from /proc (for reports and tests)."""
    sets: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("Cap"):
                key, value = line.split(":", 1)
                sets[key] = int(value.strip(), 16)
    return sets
