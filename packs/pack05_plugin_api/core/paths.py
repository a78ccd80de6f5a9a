"""Where the plugin data lives; computed on demand, never created here."""

from __future__ import annotations

import os
from pathlib import Path

PACK_DATA_ENV = "AURORA_PACK_DATA"


def pack_root() -> Path:
    """The directory of this pack (the parent of ``core/``)."""
    return Path(__file__).resolve().parent.parent


def plugins_dir() -> Path:
    """``$AURORA_PACK_DATA/plugins`` when set (by the installer), else ``<pack>/data/plugins``."""
    data = os.environ.get(PACK_DATA_ENV)
    base = Path(data) if data else pack_root() / "data"
    return base / "plugins"


def schemas_dir() -> Path:
    """The JSON Schemas shipped inside the pack (the installer copies only the pack)."""
    return pack_root() / "schemas"
