"""Finding packs in the packs directory."""

from __future__ import annotations

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


def find_packs(packs_dir: Path) -> dict[str, PackSource]:
    """Every directory of ``packs_dir`` holding a manifest.yaml, by directory name."""
    found: dict[str, PackSource] = {}
    if not packs_dir.is_dir():
        return found
    for root in sorted(p for p in packs_dir.iterdir() if (p / MANIFEST_NAME).is_file()):
        found[root.name] = read_pack(root)
    return found


def read_pack(root: Path) -> PackSource:
    """Validate one pack directory without raising."""
    try:
        return PackSource(root.name, root, load_manifest(root, expected_id=root.name), None)
    except ManifestError as exc:
        return PackSource(root.name, root, None, exc)


def has_pack(packs_dir: Path, pack_id: str) -> bool:
    """Whether ``packs_dir`` has a pack directory ``pack_id`` (valid or not)."""
    if "/" in pack_id or pack_id in ("", ".", ".."):
        return False
    return (packs_dir / pack_id / MANIFEST_NAME).is_file()


def unknown_pack(packs_dir: Path, pack_id: str) -> NotFoundError:
    """The error for a pack id that is neither in ``packs_dir`` nor installed."""
    known = ", ".join(sorted(find_packs(packs_dir))) or "none"
    where = str(packs_dir)
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
