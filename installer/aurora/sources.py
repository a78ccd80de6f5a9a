"""Finding packs in the packs directory."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from aurora.errors import ManifestError, NotFoundError
from aurora.manifest import MANIFEST_NAME, Manifest, load_manifest


@dataclass(frozen=True)
class PackSource:
    """A pack directory: its manifest if valid, else the validation error."""

    id: str
    root: Path
    manifest: Manifest | None
    error: ManifestError | None


# The manifest schema's pack id: also what a directory of the packs dir must be named.
PACK_ID = re.compile(r"[a-z][a-z0-9_]{0,63}")


def is_pack_id(pack_id: str) -> bool:
    """Whether ``pack_id`` can name a pack (never a path, never too long for a file name)."""
    return PACK_ID.fullmatch(pack_id) is not None


def _display_name(name: str) -> str:
    """A directory name as text that can be printed (non-UTF-8 bytes replaced)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def find_packs(packs_dir: Path) -> dict[str, PackSource]:
    """Every directory of ``packs_dir`` holding a manifest.yaml, by directory name.

    A hostile pack never breaks the listing: whatever reading it raises makes it an
    invalid pack with that problem (the others are read as usual).
    """
    found: dict[str, PackSource] = {}
    if not packs_dir.is_dir():
        return found
    for root in sorted(packs_dir.iterdir()):
        try:  # anything named manifest.yaml (a FIFO too) makes a pack, maybe an invalid one
            if not os.path.lexists(root / MANIFEST_NAME) or not root.is_dir():
                continue
        except OSError:
            continue
        found[_display_name(root.name)] = read_pack(root)
    return found


def read_pack(root: Path) -> PackSource:
    """Validate one pack directory without raising (any failure: an invalid pack)."""
    name = _display_name(root.name)
    if not is_pack_id(root.name):
        error = ManifestError(
            f"{root}: directory name {name!r} is not a pack id", [f"expected {PACK_ID.pattern}"]
        )
        return PackSource(name, root, None, error)
    try:
        return PackSource(name, root, load_manifest(root, expected_id=root.name), None)
    except ManifestError as exc:
        return PackSource(name, root, None, exc)
    except Exception as exc:  # whatever one pack's reading raises is that pack's problem
        error = ManifestError(f"{root}: cannot read the pack", [f"{type(exc).__name__}: {exc}"])
        return PackSource(name, root, None, error)


def has_pack(packs_dir: Path, pack_id: str) -> bool:
    """Whether ``packs_dir`` has a pack directory ``pack_id`` (valid or not)."""
    if not is_pack_id(pack_id):
        return False
    return os.path.lexists(packs_dir / pack_id / MANIFEST_NAME)


def unknown_pack(packs_dir: Path, pack_id: str) -> NotFoundError:
    """The error for a pack id that is neither in ``packs_dir`` nor installed."""
    known = ", ".join(sorted(find_packs(packs_dir))) or "none"
    where = str(packs_dir)
    if len(pack_id) > 80:
        pack_id = pack_id[:64] + f"... ({len(pack_id)} characters)"
    if not packs_dir.is_dir():
        where += " (not a directory)" if packs_dir.exists() else " (no such directory)"
    return NotFoundError(f"unknown pack {pack_id!r} in {where} (found: {known})")


def find_pack(packs_dir: Path, pack_id: str) -> Manifest:
    """The valid manifest of ``pack_id`` (its directory is named after it)."""
    if not has_pack(packs_dir, pack_id):
        raise unknown_pack(packs_dir, pack_id)
    return load_manifest(packs_dir / pack_id, expected_id=pack_id)


def valid_manifests(packs_dir: Path) -> dict[str, Manifest]:
    """The packs of ``packs_dir`` whose manifest is valid."""
    return {pid: src.manifest for pid, src in find_packs(packs_dir).items() if src.manifest}
