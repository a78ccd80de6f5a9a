"""Process identity and pidfiles: a pid is only trusted together with what proves it.

A process is named by ``{"pid", "start_time", "boot_id", "exe"}``: ``start_time``
is field 22 of ``/proc/<pid>/stat`` (clock ticks since boot), ``boot_id`` is
``/proc/sys/kernel/random/boot_id``, ``exe`` the target of ``/proc/<pid>/exe``.
A pidfile holds that JSON object and is written atomically. A recorded identity
matches a live process only if the pid exists, is not a zombie, has the same
start time, the boot is the same, and (when both are readable) the same exe.
"""

from __future__ import annotations

import os

from aurora_common.bounded import read_bytes
from aurora_common.errors import InputRefused

# Cheap to import: pack05's health check (a process per check, 2x the bare interpreter
# at most) reads a pidfile through this module. So no typing, dataclasses or pathlib at
# run time (mypy still reads the block below), and json and aurora_common.atomic
# (tempfile, shutil, ...) are imported by the functions that need them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

PIDFILE_LIMIT = 4096


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after the parenthesised command name)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read(4096)
    except OSError:
        return None
    _, _, rest = data.rpartition(b")")
    return rest.decode("ascii", "replace").split()


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat, or None when there is no such process."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    try:
        return int(fields[19])
    except ValueError:
        return None


def is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and bool(fields) and fields[0] in ("Z", "X")


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read(64).strip()
    except OSError:
        return ""


def exe_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return None


class ProcessIdentity:
    """A process: pid, start time, boot id, exe. Immutable, compared and hashed by value.

    What ``@dataclass(frozen=True)`` made of it, written out (dataclasses costs more to
    import than the whole health check may take): the same constructor (positional or
    keyword), equality only with a ProcessIdentity, hash, repr, and assignment raising
    ``dataclasses.FrozenInstanceError``.
    """

    __slots__ = ("boot_id", "exe", "pid", "start_time")
    __match_args__ = ("pid", "start_time", "boot_id", "exe")

    pid: int
    start_time: int
    boot_id: str
    exe: str

    def __init__(self, pid: int, start_time: int, boot_id: str, exe: str) -> None:
        object.__setattr__(self, "pid", pid)
        object.__setattr__(self, "start_time", start_time)
        object.__setattr__(self, "boot_id", boot_id)
        object.__setattr__(self, "exe", exe)

    def _key(self) -> tuple[int, int, str, str]:
        return (self.pid, self.start_time, self.boot_id, self.exe)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ProcessIdentity) and other.__class__ is self.__class__:
            return self._key() == other._key()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__qualname__}(pid={self.pid!r}, start_time={self.start_time!r}, "
            f"boot_id={self.boot_id!r}, exe={self.exe!r})"
        )

    def __setattr__(self, name: str, value: object) -> None:
        from dataclasses import FrozenInstanceError

        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        from dataclasses import FrozenInstanceError

        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[type[ProcessIdentity], tuple[int, int, str, str]]:
        return (self.__class__, self._key())  # pickle and copy: through the constructor

    def as_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "start_time": self.start_time,
            "boot_id": self.boot_id,
            "exe": self.exe,
        }

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> ProcessIdentity:
        """Validate a pidfile document; raises InputRefused naming ``where``."""
        if not isinstance(doc, dict):
            raise InputRefused(f"{where}: expected a JSON object", where)
        pid, start, boot, exe = (doc.get(k) for k in ("pid", "start_time", "boot_id", "exe"))
        if not (isinstance(pid, int) and not isinstance(pid, bool) and pid > 0):
            raise InputRefused(f"{where}: pid: expected a positive integer, found {pid!r}", where)
        if not (isinstance(start, int) and not isinstance(start, bool) and start >= 0):
            raise InputRefused(f"{where}: start_time: expected an integer, found {start!r}", where)
        if not isinstance(boot, str) or not isinstance(exe, str):
            raise InputRefused(f"{where}: boot_id and exe must be strings", where)
        return cls(pid, start, boot, exe)


def of_pid(pid: int) -> ProcessIdentity | None:
    """The identity of live process ``pid`` (None when it does not exist)."""
    start = start_time(pid)
    if start is None:
        return None
    return ProcessIdentity(pid, start, boot_id(), exe_of(pid) or "")


def current() -> ProcessIdentity:
    """The identity of this process."""
    me = of_pid(os.getpid())
    assert me is not None  # /proc/self exists while we run
    return me


def live(pid: int) -> ProcessIdentity | None:
    """The identity of ``pid`` while it runs (None when it does not exist or is a zombie)."""
    ident = of_pid(pid)
    return None if ident is None or is_zombie(pid) else ident


def mismatch(recorded: ProcessIdentity) -> str | None:
    """Why ``recorded`` names no live process; None when it names that very process."""
    actual = live(recorded.pid)
    if actual is None:
        return f"pid {recorded.pid} is not running"
    if recorded.boot_id and actual.boot_id and recorded.boot_id != actual.boot_id:
        return f"pid {recorded.pid} is from an earlier boot"
    if actual.start_time != recorded.start_time:
        return f"pid {recorded.pid} is another process (started at a different time)"
    if recorded.exe and actual.exe and recorded.exe != actual.exe:
        return f"pid {recorded.pid} is another process (runs {actual.exe}, not {recorded.exe})"
    return None


def matches(recorded: ProcessIdentity) -> bool:
    """Whether ``recorded`` still names a live (non-zombie) process: the same one."""
    return mismatch(recorded) is None


def write_pidfile(path: Path, ident: ProcessIdentity) -> None:
    """Write ``ident`` to ``path`` atomically (mode 0644)."""
    import json

    from aurora_common.atomic import replace_bytes

    replace_bytes(path, (json.dumps(ident.as_dict(), sort_keys=True) + "\n").encode())


def read_pidfile(path: Path) -> ProcessIdentity:
    """Read and validate a pidfile. FileNotFoundError if missing, InputRefused if bad."""
    import json

    data = read_bytes(path, PIDFILE_LIMIT)
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputRefused(f"{path}: not a JSON pidfile ({exc})", str(path)) from None
    return ProcessIdentity.from_dict(doc, str(path))


def verify_pidfile(path: Path) -> ProcessIdentity | None:
    """The identity in ``path`` when it names a live process, else None (missing/bad/dead)."""
    try:
        ident = read_pidfile(path)
    except (OSError, InputRefused):
        return None
    return ident if matches(ident) else None
