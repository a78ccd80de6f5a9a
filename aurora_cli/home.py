"""Which home, and which installed copy of a pack in it (read from state.json)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INSTALLER = REPO / "installer" / "aurora_installer.py"


class HomeError(Exception):
    """state.json cannot be read: the error names the file."""


@dataclass(frozen=True)
class InstalledPack:
    """One pack's active copy in a home, and the environment its scripts get."""

    home: Path
    pack_id: str
    version: str

    @property
    def root(self) -> Path:
        return self.home / "packs" / self.pack_id / self.version

    def env(self) -> dict[str, str]:
        """The installer's lifecycle-script environment (README "How to write a pack")."""
        return {
            "AURORA_HOME": str(self.home),
            "AURORA_PACK_ID": self.pack_id,
            "AURORA_PACK_VERSION": self.version,
            "AURORA_PACK_ROOT": str(self.root),
            "AURORA_PACK_DATA": str(self.home / "data" / self.pack_id),
            "AURORA_PACK_RUN": str(self.home / "run" / self.pack_id),
            "AURORA_PACK_LOGS": str(self.home / "logs" / self.pack_id),
        }


def resolve_home(given: str | None) -> Path:
    """The one rule: --home, else $AURORA_HOME, else <repo>/.aurora (absolute)."""
    value = given or os.environ.get("AURORA_HOME") or str(REPO / ".aurora")
    return Path(value).expanduser().absolute()


def read_state(home: Path) -> dict[str, object]:
    """state.json of ``home`` ({} when nothing was ever staged or installed there)."""
    path = home / "state.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise HomeError(f"cannot read {path}: {exc.strerror}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise HomeError(f"{path}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise HomeError(f"{path}: not a JSON object")
    return doc


def installed(home: Path, pack_id: str) -> InstalledPack | None:
    """The active installed copy of ``pack_id`` in ``home`` (None if not installed)."""
    packs = read_state(home).get("packs")
    record = packs.get(pack_id) if isinstance(packs, dict) else None
    version = record.get("active_version") if isinstance(record, dict) else None
    if not isinstance(version, str) or not version:
        return None
    pack = InstalledPack(home, pack_id, version)
    return pack if pack.root.is_dir() else None
