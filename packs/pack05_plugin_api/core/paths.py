"""Where the plugin data lives; computed on demand, never created here."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .storage import read_bytes

PACK_DATA_ENV = "AURORA_PACK_DATA"
HOME_ENV = "AURORA_HOME"
PACK_ID = "pack05_plugin_api"
_MAX_STATE_BYTES = 16 * 2**20


class DataLocationError(Exception):
    """``$AURORA_HOME`` is set but does not say where this pack's data is."""


def pack_root() -> Path:
    """The directory of this pack (the parent of ``core/``)."""
    return Path(__file__).resolve().parent.parent


def plugins_dir() -> Path:
    """``$AURORA_PACK_DATA/plugins`` when set (by the installer), else ``<pack>/data/plugins``."""
    data = os.environ.get(PACK_DATA_ENV)
    base = Path(data) if data else pack_root() / "data"
    return base / "plugins"


def _installed_in(home: Path) -> bool:
    """Whether ``home/state.json`` records this pack installed (an active version)."""
    state = home / "state.json"
    try:
        doc = json.loads(read_bytes(state, _MAX_STATE_BYTES))
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as exc:
        raise DataLocationError(f"{HOME_ENV}={home}: cannot read {state}: {exc}") from None
    packs = doc.get("packs") if isinstance(doc, dict) else None
    record = packs.get(PACK_ID) if isinstance(packs, dict) else None
    return isinstance(record, dict) and bool(record.get("active_version"))


def operator_plugins_dir() -> Path:
    """The plugins directory of the operator's command line, resolved the installer's way.

    ``$AURORA_PACK_DATA/plugins`` when set; else, when ``$AURORA_HOME`` is set, the data of
    this pack as installed there (``$AURORA_HOME/data/pack05_plugin_api/plugins``), and an
    error when ``state.json`` there does not record it installed; else ``<pack>/data/plugins``.
    """
    if os.environ.get(PACK_DATA_ENV):
        return plugins_dir()
    home = os.environ.get(HOME_ENV)
    if not home:
        return plugins_dir()
    root = Path(home)
    if not _installed_in(root):
        raise DataLocationError(
            f"{HOME_ENV}={home}: {PACK_ID} is not installed there ({root / 'state.json'} "
            "records no active version); install it, or pass --data DIR"
        )
    return root / "data" / PACK_ID / "plugins"


def schemas_dir() -> Path:
    """The JSON Schemas shipped inside the pack (the installer copies only the pack)."""
    return pack_root() / "schemas"
