"""Aurora installer library: validate, stage, install and run Aurora packs."""

# First: puts pack01_common (aurora_common) on sys.path for every installer module.
from aurora import _common  # noqa: F401
from aurora.errors import (
    ApprovalError,
    AuroraError,
    DependencyError,
    DependentsError,
    IntegrityError,
    LockBusyError,
    ManifestError,
    NotFoundError,
    OperationFailed,
    PackRunningError,
    RefusedError,
    ScriptError,
    StateError,
    UsageError,
)
from aurora.exitcodes import ExitCode, exit_code_for
from aurora.installer import ApprovalRequest, Approver, Installer, Options
from aurora.manifest import Manifest, load_manifest
from aurora.runtime import HealthPolicy

__all__ = [
    "ApprovalError",
    "ApprovalRequest",
    "Approver",
    "AuroraError",
    "DependencyError",
    "DependentsError",
    "ExitCode",
    "HealthPolicy",
    "Installer",
    "IntegrityError",
    "LockBusyError",
    "Manifest",
    "ManifestError",
    "NotFoundError",
    "OperationFailed",
    "Options",
    "PackRunningError",
    "RefusedError",
    "ScriptError",
    "StateError",
    "UsageError",
    "exit_code_for",
    "load_manifest",
]
