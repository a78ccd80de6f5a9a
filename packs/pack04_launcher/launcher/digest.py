"""The tree digest pack05 records for a staged package: pack01_common's ``tree-v1``.

The launcher recomputes it before each start so that what runs is what the
operator enabled, not a package changed since. The format is defined once, in
``aurora_common.digest`` (docs/primitives.md); this module only adapts errors.
``launcher/__init__.py`` has put pack01_common on ``sys.path`` (``aurora_boot``).
"""

from __future__ import annotations

from pathlib import Path

from aurora_common import digest as _digest
from aurora_common.errors import InputRefused

__all__ = ["old_format_hint", "tree_digest"]


def tree_digest(root: Path) -> str:
    """The tree-v1 digest of the package at ``root``.

    Raises OSError when the tree cannot be read or holds what a package may not
    (a FIFO, a device, a name that is not UTF-8).
    """
    try:
        return _digest.tree_digest(root)
    except InputRefused as exc:
        raise OSError(str(exc)) from None


def old_format_hint(recorded: str) -> str:
    """ "" for a current digest; else why it cannot match (an old format: restage)."""
    try:
        _digest.check_format(recorded, "registry digest")
    except InputRefused as exc:
        return f" ({exc})"
    return ""
