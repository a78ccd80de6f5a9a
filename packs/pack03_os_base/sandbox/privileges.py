"""Privileges: no_new_privs, and the bounding set emptied before the uid switch.

The plugin never keeps uid 0 (sandbox.identity switches it to its own uid); the
bounding set is emptied first, so no exec can ever give a capability back.
"""

from __future__ import annotations

from sandbox import _libc

# SECBIT_NOROOT|NOROOT_LOCKED|NO_SETUID_FIXUP|NO_SETUID_FIXUP_LOCKED|KEEP_CAPS_LOCKED|
# NO_CAP_AMBIENT_RAISE|NO_CAP_AMBIENT_RAISE_LOCKED
SECUREBITS_LOCKDOWN = 0b1110_1111


def set_no_new_privs() -> None:
    """Exec can never gain privileges (setuid bits, file capabilities) from here on."""
    _libc.prctl(_libc.PR_SET_NO_NEW_PRIVS, 1)


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 40


def drop_bounding_set() -> None:
    """Empty the bounding set (needs CAP_SETPCAP; raises OSError on failure)."""
    for cap in range(_last_cap() + 1):
        _libc.prctl(_libc.PR_CAPBSET_DROP, cap)


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
