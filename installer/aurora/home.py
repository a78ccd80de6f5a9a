"""The layout of $AURORA_HOME: one place that knows where everything lives."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_home() -> Path:
    """$AURORA_HOME, else <repo>/.aurora."""
    env = os.environ.get("AURORA_HOME")
    return Path(env) if env else REPO_ROOT / ".aurora"


def check_home(text: str) -> Path:
    """``--home`` as a path; UsageError unless a directory (or yet to be made) that is not '/'.

    An empty value would mean the current directory and '/' would fill the root
    with installer files; a file cannot hold a home.
    """
    from aurora.errors import UsageError

    if not text.strip():
        raise UsageError("--home: empty; give the installer home directory")
    path = Path(text)
    if path.absolute().resolve() == Path("/"):
        raise UsageError("--home: '/' cannot be an installer home; give a directory of its own")
    if path.exists() and not path.is_dir():
        raise UsageError(f"--home: {text} exists and is not a directory")
    return path


def default_packs_dir() -> Path:
    """<repo>/packs: where packs are found."""
    return REPO_ROOT / "packs"


@dataclass(frozen=True)
class Home:
    """Paths inside an installer home; nothing is created until an operation needs it."""

    root: Path

    @property
    def reserve(self) -> Path:
        return self.root / ".reserve"

    @property
    def lock(self) -> Path:
        return self.root / "installer.lock"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def audit(self) -> Path:
        return self.root / "audit.log"

    def staging(self, pack_id: str) -> Path:
        return self.root / "staging" / pack_id

    def staged(self, pack_id: str, version: str) -> Path:
        return self.staging(pack_id) / version

    def packs(self, pack_id: str) -> Path:
        return self.root / "packs" / pack_id

    def installed(self, pack_id: str, version: str) -> Path:
        return self.packs(pack_id) / version

    def records(self, pack_id: str) -> Path:
        return self.root / "records" / pack_id

    def record(self, pack_id: str, digest: str) -> Path:
        return self.records(pack_id) / (digest.rpartition(":")[2] + ".json")

    def health(self, pack_id: str) -> Path:
        return self.root / "health" / f"{pack_id}.json"

    def data(self, pack_id: str) -> Path:
        return self.root / "data" / pack_id

    def run(self, pack_id: str) -> Path:
        return self.root / "run" / pack_id

    def logs(self, pack_id: str) -> Path:
        return self.root / "logs" / pack_id

    def secure(self) -> None:
        """Close the home to other uids (a plugin's included), made or narrowed, never widened.

        The home and ``data/``, ``run/`` are search-only (0711: pack04's launcher lets a
        uid the operator allows reach its call socket, and its plugin data dirs, by
        name); every other directory is 0700; state.json, its mirror and audit.log are
        0600. So no other uid lists the home, opens a lock file (0600, aurora_common.lock)
        or reads the installer's state, audit log, records or logs (adv8 F8).
        """
        from aurora_common.lock import private_dir

        private_dir(self.root, 0o711)  # a home that cannot be made fails the command
        # Narrowing is best effort: an immutable audit.log or a read-only tree must not
        # turn every command into an error (their own checks say what is wrong).
        for name, mode in TREE_MODES.items():
            path = self.root / name
            try:
                if path.is_dir() and not path.is_symlink():
                    private_dir(path, mode)
            except OSError as exc:
                log.warning("%s: not narrowed to %o: %s", path, mode, exc.strerror or exc)
        for name in ("state.json", "state.json.bak", "audit.log"):
            path = self.root / name
            try:
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
                    os.chmod(path, 0o600)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("%s: not narrowed to 600: %s", path, exc.strerror or exc)


#: The most each directory of the home may allow (``Home.secure``); a pack's own
#: ``data/<id>``, ``run/<id>`` get the same as their parent, ``logs/<id>`` 0700.
TREE_MODES = {
    "data": 0o711,
    "run": 0o711,
    "logs": 0o700,
    "staging": 0o700,
    "packs": 0o700,
    "records": 0o700,
    "health": 0o700,
}
