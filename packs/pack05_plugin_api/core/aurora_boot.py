"""Put pack01_common (Aurora's shared primitives) on sys.path; import this before aurora_common.

The only copied code of the library: each pack that declares pack01_common as a
dependency keeps this file, byte for byte the same, in its top-level package
(docs/primitives.md "How packs get it"; a pack01 test checks the copies).
From the source tree the library is the sibling <pack root>/../pack01_common;
installed, it is $AURORA_HOME/packs/pack01_common/<active_version>/ (state.json);
in a dry run before it is installed, $AURORA_COMMON_ROOT (set by the installer).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def library_root() -> Path | None:
    """Where aurora_common is: the sibling pack in a source tree, else the installed copy."""
    sibling = Path(__file__).resolve().parent.parent.parent / "pack01_common"
    if (sibling / "aurora_common" / "__init__.py").is_file():
        return sibling
    try:
        home = Path(os.environ.get("AURORA_HOME") or Path(__file__).resolve().parents[4])
        with open(home / "state.json", "rb") as fh:
            version = json.loads(fh.read(1 << 22))["packs"]["pack01_common"]["active_version"]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        version = None
    if isinstance(version, str) and "/" not in version and version not in ("", ".", ".."):
        installed = home / "packs" / "pack01_common" / version
        if (installed / "aurora_common" / "__init__.py").is_file():
            return installed
    # A dry run before pack01_common is installed: the installer names the copy it plans.
    planned = Path(os.environ.get("AURORA_COMMON_ROOT") or "/nonexistent")
    return planned if (planned / "aurora_common" / "__init__.py").is_file() else None


_root = library_root()
if _root is None:
    raise ImportError("pack01_common is not installed (a dependency of this pack)")
if str(_root) not in sys.path:
    sys.path.insert(0, str(_root))
