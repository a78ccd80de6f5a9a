"""pack04 launcher: the supervisor that runs enabled plugins in the pack03 sandbox."""

from launcher.errors import (
    ConfigError,
    LauncherError,
    PluginNotFound,
    RegistryError,
    SandboxUnavailable,
    ServiceError,
)

__all__ = [
    "ConfigError",
    "LauncherError",
    "PluginNotFound",
    "RegistryError",
    "SandboxUnavailable",
    "ServiceError",
]
