"""seal: pin the sha256 of every listed artifact in manifest.yaml, keeping the YAML as written."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import Any

import yaml

from aurora.errors import ManifestError
from aurora.fsutil import atomic_write_bytes, remove_temps
from aurora.manifest import MANIFEST_NAME, Manifest, parse_yaml
from aurora.tree import sha256_file


def _mapping_get(node: yaml.Node, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            found: yaml.Node = value_node
            return found
    return None


def seal(
    manifest: Manifest, before_write: Callable[[str, bytes], None] | None = None
) -> dict[str, Any]:
    """Pin every artifact of a validated pack: rewrite only the sha256 values.

    The file is edited in place of each `sha256:` scalar (comments, order and
    quoting elsewhere are kept) and replaced atomically; the result is
    checked before it is written. ``before_write(path, new_bytes)`` is called first
    (the installer records its audit intent there, with what it will write).
    """
    path = manifest.root / MANIFEST_NAME
    # A killed seal leaves its temp file beside the manifest: never part of the pack.
    leftovers = [str(p) for p in remove_temps(manifest.root, MANIFEST_NAME)]
    # The manifest was validated moments ago (bounded read, no aliases, depth capped).
    text = path.read_text(encoding="utf-8")
    root_node = yaml.compose(text, Loader=yaml.SafeLoader)
    pack_node = _mapping_get(root_node, "pack") if root_node is not None else None
    artifacts_node = _mapping_get(pack_node, "artifacts") if pack_node is not None else None
    edits: list[tuple[int, int, str]] = []
    results: list[dict[str, Any]] = []
    if isinstance(artifacts_node, yaml.SequenceNode):
        for artifact, item in zip(manifest.artifacts, artifacts_node.value, strict=True):
            value_node = _mapping_get(item, "sha256")
            if value_node is None:  # the schema requires the key; defensive
                raise ManifestError(f"{path}: artifact {artifact.path!r} has no sha256 key")
            digest = sha256_file(manifest.root / artifact.path)
            results.append(
                {"path": artifact.path, "sha256": digest, "changed": digest != artifact.sha256}
            )
            edits.append((value_node.start_mark.index, value_node.end_mark.index, f'"{digest}"'))
    new_text = text
    for start, end, replacement in sorted(edits, reverse=True):
        new_text = new_text[:start] + replacement + new_text[end:]
    # Check the edit before writing: the new text must pin exactly these hashes.
    document = parse_yaml(new_text, str(path))
    pinned = [a.get("sha256") for a in document["pack"]["artifacts"]]
    if pinned != [r["sha256"] for r in results]:
        raise ManifestError(f"{path}: could not rewrite the sha256 values in place")
    if before_write is not None:
        before_write(str(path), new_text.encode("utf-8"))
    if new_text != text:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        atomic_write_bytes(path, new_text.encode("utf-8"), mode)
    return {
        "pack": manifest.id,
        "manifest": str(path),
        "artifacts": results,
        "written": new_text != text,
        "removed_temps": leftovers,
    }
