"""pack04 launcher: the supervisor that runs enabled plugins in the pack03 sandbox."""

# First: puts pack01_common (aurora_common) on sys.path for every launcher module.
from launcher import aurora_boot  # noqa: F401
from launcher.errors import (
    ConfigError,
    ForkServerError,
    LauncherError,
    PluginNotFound,
    RegistryError,
    SandboxUnavailable,
    ServiceError,
)

__all__ = [
    "ConfigError",
    "ForkServerError",
    "LauncherError",
    "PluginNotFound",
    "RegistryError",
    "SandboxUnavailable",
    "ServiceError",
]
