"""Errors raised by the sandbox library; the command line maps them to exit codes."""

from __future__ import annotations


class SandboxError(Exception):
    """Base class of every error the sandbox raises on purpose."""


class PolicyError(SandboxError, ValueError):
    """The policy file is unreadable or invalid; carries every problem found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid policy:\n  " + "\n  ".join(problems))


class Refused(SandboxError):
    """The sandbox will not start the command: something it must enforce is unavailable."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("refused to start:\n  " + "\n  ".join(reasons))


class CommandNotFound(SandboxError):
    """The command to run does not exist (exit 127, like env(1))."""


class CommandNotExecutable(SandboxError):
    """The command exists but cannot be executed (exit 126, like env(1))."""


class RequestError(SandboxError, ValueError):
    """A request to the server is malformed; carries every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("bad request:\n  " + "\n  ".join(problems))


class ServerError(SandboxError):
    """The fork server cannot start (its socket path is taken)."""


class LayerError(SandboxError):
    """One confinement layer could not be applied; the message says why."""


class Relayed(SandboxError):
    """The sandboxed process (in its PID namespace) failed with this status; the launcher
    outside ends with the same one."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


# Exit statuses, like env(1): a plugin exiting 2 is never mistaken for a launcher error.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


def exit_status(exc: BaseException) -> tuple[int, str] | None:
    """The exit status and message for an error a run can end with (None: not ours)."""
    if isinstance(exc, Relayed):
        return exc.status, str(exc)
    if isinstance(exc, CommandNotFound):
        return EXIT_NOT_FOUND, str(exc)
    if isinstance(exc, CommandNotExecutable):
        return EXIT_CANNOT_EXECUTE, str(exc)
    if isinstance(exc, SandboxError):
        return EXIT_REFUSED, str(exc)
    if isinstance(exc, OSError):  # anything the layers did not foresee: still never fail open
        return EXIT_REFUSED, f"launcher error: {exc}"
    return None
