"""Put pack01_common (Aurora's shared primitives) on sys.path; import this before aurora_common.

The only copied code of the library: each pack that declares pack01_common as a
dependency keeps this file, byte for byte the same, in its top-level package
(docs/primitives.md "How packs get it"; a pack01 test checks the copies).
From the source tree the library is the sibling <pack root>/../pack01_common;
installed, it is $AURORA_HOME/packs/pack01_common/<active_version>/ (state.json);
in a dry run before it is installed, $AURORA_COMMON_ROOT (set by the installer).

It runs first in every process of a pack (health checks included, whose target is
twice a bare interpreter): os.path only, and json only to read an installed state.json.
"""

from __future__ import annotations

import os
import sys


def _has_library(root: str) -> bool:
    return os.path.isfile(os.path.join(root, "aurora_common", "__init__.py"))


def library_root() -> str | None:
    """Where aurora_common is: the sibling pack in a source tree, else the installed copy."""
    here = os.path.dirname(os.path.realpath(__file__))  # <pack root>/<package>
    sibling = os.path.join(os.path.dirname(os.path.dirname(here)), "pack01_common")
    if _has_library(sibling):
        return sibling
    import json

    # Installed: <home>/packs/<pack>/<version>/<package>/aurora_boot.py
    home = os.environ.get("AURORA_HOME") or here.rsplit(os.sep, 4)[0]
    try:
        with open(os.path.join(home, "state.json"), "rb") as fh:
            version = json.loads(fh.read(1 << 22))["packs"]["pack01_common"]["active_version"]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        version = None
    if isinstance(version, str) and "/" not in version and version not in ("", ".", ".."):
        installed = os.path.join(home, "packs", "pack01_common", version)
        if _has_library(installed):
            return installed
    # A dry run before pack01_common is installed: the installer names the copy it plans.
    planned = os.environ.get("AURORA_COMMON_ROOT") or "/nonexistent"
    return planned if _has_library(planned) else None


_root = library_root()
if _root is None:
    raise ImportError(
        "pack01_common is not installed (a dependency of this pack): "
        "aurora pack install --pack pack01_common"
    )
if _root not in sys.path:
    sys.path.insert(0, _root)
