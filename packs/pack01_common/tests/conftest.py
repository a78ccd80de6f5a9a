"""pack01 tests import aurora_common from this pack's root."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACK_ROOT = Path(__file__).resolve().parents[1]
if str(PACK_ROOT) not in sys.path:
    sys.path.insert(0, str(PACK_ROOT))


@pytest.fixture(scope="session", autouse=True)
def uid_claims_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Plugin uids are claimed host-wide (pack04 README "Plugin identity"): every launcher
    this session starts claims them in a temp dir, never in /var/lib/aurora."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AURORA_UID_CLAIMS", str(tmp_path_factory.mktemp("uid-claims") / "plugin-uids"))
        yield
