"""Aurora Plugin API core: manifests, registry, loader and permissions of plugins."""

# First: puts pack01_common (aurora_common) on sys.path for every core module.
from . import aurora_boot  # noqa: F401
from .api import load_manifest, validate_manifest
from .errors import (
    CapabilityError,
    ManifestError,
    PermissionDenied,
    PluginError,
    RegistryError,
    StagingError,
    UnknownPlugin,
)
from .loader import PluginLoader
from .permissions import request_permissions
from .registry import PluginRegistry

__all__ = [
    "CapabilityError",
    "ManifestError",
    "PermissionDenied",
    "PluginError",
    "PluginLoader",
    "PluginRegistry",
    "RegistryError",
    "StagingError",
    "UnknownPlugin",
    "load_manifest",
    "request_permissions",
    "validate_manifest",
]
