"""Exit codes of the installer CLI, in one place (the README lists the same table)."""

from __future__ import annotations

from enum import IntEnum

from aurora.errors import (
    ApprovalError,
    AuroraError,
    LockBusyError,
    ManifestError,
    NotFoundError,
    RefusedError,
    UsageError,
)


class ExitCode(IntEnum):
    """What the installer's exit status means."""

    OK = 0
    FAILED = 1  # the operation ran and failed: a script failed, verify found changes
    USAGE = 2  # bad arguments or invalid input (invalid manifest, malformed YAML)
    NOT_FOUND = 3  # unknown pack, or nothing installed where the command needs it
    REFUSED = 4  # refused by state or policy: deps, running, dependents, digest/hash mismatch
    LOCKED = 5  # another installer holds installer.lock (its pid is named)
    APPROVAL = 6  # operator approval required (no terminal, no --approve) or denied
    INTERRUPTED = 130  # Ctrl-C (SIGINT), as shells report it


def exit_code_for(error: AuroraError) -> ExitCode:
    """Map an installer error to the exit code the CLI returns."""
    if isinstance(error, UsageError | ManifestError):
        return ExitCode.USAGE
    if isinstance(error, NotFoundError):
        return ExitCode.NOT_FOUND
    if isinstance(error, RefusedError):
        return ExitCode.REFUSED
    if isinstance(error, LockBusyError):
        return ExitCode.LOCKED
    if isinstance(error, ApprovalError):
        return ExitCode.APPROVAL
    return ExitCode.FAILED  # OperationFailed, and any other AuroraError
