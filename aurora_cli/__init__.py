"""The `aurora` command: one front door to the installer, pack05's plugins and pack04's launcher.

It runs the installer and the packs of the checkout it lives in, and takes the shared
conventions (aurora_common) from that checkout's library pack, like the installer
(docs/primitives.md "How packs get it"): here, so that the console script of
`pip install -e .` finds it as `./aurora` does.
"""

import sys
from pathlib import Path

_LIBRARY = str(Path(__file__).resolve().parents[1] / "packs" / "pack01_common")
if _LIBRARY not in sys.path:
    sys.path.insert(1, _LIBRARY)
