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


class LayerError(SandboxError):
    """One confinement layer could not be applied; the message says why."""
