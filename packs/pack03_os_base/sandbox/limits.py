"""Resource limits (setrlimit): soft and hard both lowered, so the plugin cannot raise them."""

from __future__ import annotations

import resource

#: Policy limit -> rlimit. processes also maps to RLIMIT_NPROC: it binds non-root only, and
#: a plugin is never root (its own uid: the count is its own processes').
RLIMITS = {
    "cpu_seconds": resource.RLIMIT_CPU,
    "memory_bytes": resource.RLIMIT_AS,
    "open_files": resource.RLIMIT_NOFILE,
    "file_size_bytes": resource.RLIMIT_FSIZE,
}


def _nproc_binds() -> bool:
    return True  # the plugin runs as its own non-root uid (sandbox.identity, setpriv)


def describe(limits: dict[str, int | float]) -> dict[str, int | str]:
    """What apply() will set, for the report."""
    out: dict[str, int | str] = {
        key: int(limits[key]) if key in limits else "unlimited (not in policy)" for key in RLIMITS
    }
    out["core"] = 0
    out["rtprio"] = out["nice"] = 0
    if "processes" in limits:
        out["processes"] = int(limits["processes"]) if _nproc_binds() else "not by rlimit"
    return out


def _lower(which: int, value: int, hard_value: int | None = None) -> None:
    _, hard = resource.getrlimit(which)
    want_hard = value if hard_value is None else hard_value
    if hard != resource.RLIM_INFINITY:
        want_hard = min(want_hard, hard)
    resource.setrlimit(which, (min(value, want_hard), want_hard))


def apply(limits: dict[str, int | float]) -> None:
    """Set the rlimits of this process (the last step before exec: the launcher needs fds).

    CPU gets a hard limit one second above the soft one: the plugin first receives
    SIGXCPU (it may clean up), then SIGKILL. Core dumps are always off, and so are
    real-time priority and raising the nice value: a real-time thread would run outside
    the cgroup's CPU bandwidth, whatever rtprio hard limit the host gave root.
    """
    for key, which in RLIMITS.items():
        if key in limits:
            value = int(limits[key])
            _lower(which, value, value + 1 if key == "cpu_seconds" else None)
    _lower(resource.RLIMIT_CORE, 0)
    _lower(resource.RLIMIT_RTPRIO, 0)
    _lower(resource.RLIMIT_NICE, 0)
    if "processes" in limits and _nproc_binds():
        _lower(resource.RLIMIT_NPROC, int(limits["processes"]))
