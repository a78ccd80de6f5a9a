"""The installer's error hierarchy: every failure the CLI turns into a message."""

from __future__ import annotations

from collections.abc import Sequence


class AuroraError(Exception):
    """Base of every error the installer raises on purpose.

    ``problems`` lists every individual issue (each naming its place), so the
    operator sees all of them at once instead of fixing them one by one.
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.problems = list(problems)

    def __str__(self) -> str:
        if not self.problems:
            return self.message
        return self.message + "\n" + "\n".join(f"  - {p}" for p in self.problems)


class UsageError(AuroraError, ValueError):
    """An argument that cannot be acted on (bad value, conflicting options)."""


class ManifestError(AuroraError, ValueError):
    """A manifest or pack structure that fails validation."""


class NotFoundError(AuroraError, LookupError):
    """An unknown pack, or a pack that is not staged/installed where needed."""


class RefusedError(AuroraError):
    """The operation is refused by the current state or by policy."""


class DependencyError(RefusedError):
    """Dependencies missing, unsatisfiable or cyclic."""


class PackRunningError(RefusedError):
    """The pack is running and the operation needs it stopped."""


class DependentsError(RefusedError):
    """Installed packs depend on this one."""


class IntegrityError(RefusedError):
    """A digest or artifact hash does not match what was recorded or pinned."""


class LockBusyError(AuroraError):
    """Another installer holds the lock."""

    def __init__(self, message: str, holder_pid: int | None) -> None:
        super().__init__(message)
        self.holder_pid = holder_pid


class ApprovalError(AuroraError):
    """Operator approval is required and was not given (no terminal, no --approve) or denied."""


class OperationFailed(AuroraError):
    """The operation ran and failed (a script failed, a check did not pass)."""


class ScriptError(OperationFailed):
    """A lifecycle script exited non-zero or timed out."""

    def __init__(
        self,
        message: str,
        *,
        returncode: int | None,
        timed_out: bool,
        output_tail: Sequence[str],
        log_path: str,
    ) -> None:
        super().__init__(message, [f"output: {line}" for line in output_tail])
        self.returncode = returncode
        self.timed_out = timed_out
        self.output_tail = list(output_tail)
        self.log_path = log_path


class StateError(OperationFailed):
    """A state file is unreadable or invalid; it is never silently repaired."""
