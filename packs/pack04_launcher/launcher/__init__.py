"""pack04 launcher: the supervisor that runs enabled plugins in the pack03 sandbox."""

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
