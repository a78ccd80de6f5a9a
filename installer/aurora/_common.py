"""Put pack01_common (the shared primitives, ``aurora_common``) on sys.path.

The installer imports the library from the repository's packs directory,
``<repo>/packs/pack01_common`` (docs/primitives.md "How packs get it").
"""

from __future__ import annotations

import sys
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[2] / "packs" / "pack01_common"

if str(LIBRARY) not in sys.path:
    sys.path.insert(0, str(LIBRARY))
