"""The error hierarchy of the Plugin API core: every failure a caller can act on."""

from __future__ import annotations

from collections.abc import Iterable


class PluginError(Exception):
    """Base of every error raised by the plugin core."""


class ManifestError(PluginError, ValueError):
    """A manifest is unreadable or invalid; ``problems`` lists every problem with its place."""

    def __init__(self, problems: Iterable[str], *, source: str | None = None) -> None:
        self.problems: list[str] = list(problems) or ["invalid manifest"]
        self.source = source
        where = f"{source}: " if source else ""
        if len(self.problems) == 1:
            message = f"{where}invalid manifest: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{where}invalid manifest ({len(self.problems)} problems):\n{lines}"
        super().__init__(message)


class RegistryError(PluginError):
    """The registry (or the permission policy) cannot be read or written."""


class UnknownPlugin(RegistryError, LookupError):
    """The plugin id, or one of its versions, is not in the registry."""

    def __init__(
        self, plugin_id: str, version: str | None = None, *, staged: Iterable[str] | None = None
    ) -> None:
        self.plugin_id = plugin_id
        self.version = version
        self.staged: list[str] | None = None if staged is None else sorted(staged)
        if version and self.staged is not None:
            # the plugin is known: say which versions are there to choose from
            shown = ", ".join(self.staged) or "none"
            message = f"{plugin_id} has no staged version {version} (staged: {shown})"
        else:
            shown = (
                plugin_id
                if len(plugin_id) <= 100
                else f"{plugin_id[:100]}... ({len(plugin_id)} characters)"
            )
            message = f"unknown plugin: {shown}" + (f" {version}" if version else "")
        super().__init__(message)


class CapabilityError(PluginError, ValueError):
    """A capability name outside the closed vocabulary, or not requested by the plugin."""


class StagingError(PluginError):
    """A package was refused by the loader; ``reason`` says why."""

    def __init__(self, reason: str, *, source: str | None = None) -> None:
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {reason}" if source else reason)


class PermissionDenied(PluginError):
    """An action needs capabilities or call grants that are not granted or are blocked by policy."""

    def __init__(self, plugin_id: str, capabilities: Iterable[str], reason: str) -> None:
        self.plugin_id = plugin_id
        self.capabilities: list[str] = sorted(set(capabilities))
        self.reason = reason
        super().__init__(f"{plugin_id}: {reason}")

    @property
    def capability(self) -> str | None:
        """The first capability concerned (a convenience for single-capability refusals)."""
        return self.capabilities[0] if self.capabilities else None
