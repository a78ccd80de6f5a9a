"""The launcher's error hierarchy: every failure a caller can act on."""

from __future__ import annotations


class LauncherError(Exception):
    """Base of every error the launcher raises on purpose."""


class ConfigError(LauncherError, ValueError):
    """A path, environment variable or option is unusable."""


class RegistryError(LauncherError):
    """pack05's registry.json cannot be read or does not follow the contract.

    ``problems`` lists every problem found, each naming its place.
    """

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = list(problems)
        super().__init__(f"{path}: " + "; ".join(self.problems))


class PluginNotFound(LauncherError, KeyError):
    """The plugin id is not in the registry (or has no active version)."""

    def __init__(self, plugin_id: str, reason: str = "not in the registry") -> None:
        self.plugin_id = plugin_id
        self.reason = reason
        super().__init__(plugin_id)

    def __str__(self) -> str:
        return f"plugin {self.plugin_id!r}: {self.reason}"


class SandboxUnavailable(LauncherError):
    """pack03's sandbox launcher cannot be found; plugins are never run unconfined."""


class ServiceError(LauncherError):
    """The launcher service could not be started, stopped or reached."""


class ForkServerError(LauncherError):
    """pack03's fork server cannot be started, or did not answer a request."""
