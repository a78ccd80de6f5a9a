"""Where the launcher finds its files, from the lifecycle environment.

Installed, the installer sets AURORA_HOME and the AURORA_PACK_* variables.
Run by hand from the source tree (AURORA_HOME unset) data, run and logs go
under the pack's own directory and pack03/pack05 are the sibling packs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from launcher.errors import SandboxUnavailable

PACK_ID = "pack04_launcher"
PACK05_ID = "pack05_plugin_api"
PACK03_ID = "pack03_os_base"

#: The host-wide uid claims directory (README "Plugin identity"); the variable moves it
#: (tests, hosts whose /var/lib is not for this).
UID_CLAIMS_ENV = "AURORA_UID_CLAIMS"
DEFAULT_UID_CLAIMS = Path("/var/lib/aurora/plugin-uids")


def uid_claims_dir(env: Mapping[str, str]) -> Path:
    """Where plugin uids are claimed host-wide: $AURORA_UID_CLAIMS or the default."""
    value = env.get(UID_CLAIMS_ENV)
    return Path(value).resolve() if value else DEFAULT_UID_CLAIMS


#: The pack's own directory when run from the source tree.
SOURCE_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Paths:
    """Every location the launcher reads or writes."""

    home: Path | None  # None when run by hand from the source tree
    root: Path
    data: Path
    run: Path
    logs: Path
    registry: Path
    #: Host-wide, shared by every installation (not under ``home``).
    uid_claims: Path = field(default_factory=lambda: uid_claims_dir(os.environ))

    @property
    def pidfile(self) -> Path:
        return self.run / "launcher.pid"

    @property
    def lockfile(self) -> Path:
        return self.run / "launcher.lock"

    @property
    def status(self) -> Path:
        return self.run / "status.json"

    @property
    def control(self) -> Path:
        return self.run / "control.json"

    @property
    def control_lock(self) -> Path:
        return self.run / "control.lock"

    @property
    def degraded(self) -> Path:
        """The operator's degraded-mode allowances (data: survives restarts)."""
        return self.data / "degraded.json"

    @property
    def degraded_lock(self) -> Path:
        return self.data / "degraded.lock"

    @property
    def identities(self) -> Path:
        """Each plugin's host uid/gid (data: never reused, survives removal)."""
        return self.data / "identities.json"

    @property
    def identities_lock(self) -> Path:
        return self.data / "identities.lock"

    @property
    def limits(self) -> Path:
        """The operator's per-plugin resource limits (data: survives restarts)."""
        return self.data / "limits.json"

    @property
    def limits_lock(self) -> Path:
        return self.data / "limits.lock"

    @property
    def plugin_data_root(self) -> Path:
        """Every plugin's data dir lies directly beneath it (the fork server's --data-root)."""
        return self.data / "plugin-data"

    @property
    def images(self) -> Path:
        """The per-plugin filesystem images that bound each data dir's bytes and inodes."""
        return self.data / "images"

    def plugin_image(self, plugin_id: str) -> Path:
        return self.images / f"{plugin_id}.img"

    @property
    def reports_root(self) -> Path:
        """Holds the per-plugin run dirs (the fork server's --report-root)."""
        return self.run / "plugins"

    @property
    def audit_log(self) -> Path:
        """Append-only JSON lines: operator decisions the launcher acts on."""
        return self.data / "audit.log"

    @property
    def service_log(self) -> Path:
        return self.logs / "launcher.log"

    @property
    def sandbox_dir(self) -> Path:
        """Mode 0700, root's: only the supervisor reaches the fork server's socket."""
        return self.run / "sandbox"

    @property
    def sandbox_socket(self) -> Path:
        """pack03's fork server socket (the supervisor runs the server)."""
        return self.sandbox_dir / "sandbox.sock"

    @property
    def api_dir(self) -> Path:
        """Root's, mode 0700 (0711 when the operator allows other callers)."""
        return self.run / "api"

    @property
    def api_socket(self) -> Path:
        """Plugin calls from the operator and from Aurora (launcher.api_socket)."""
        return self.api_dir / "calls.sock"

    @property
    def sandbox_server_pidfile(self) -> Path:
        return self.run / "sandbox-server.pid"

    @property
    def sandbox_server_log(self) -> Path:
        return self.logs / "sandbox-server.log"

    def plugin_log(self, plugin_id: str) -> Path:
        return self.logs / "plugins" / f"{plugin_id}.log"

    def plugin_data(self, plugin_id: str) -> Path:
        return self.plugin_data_root / plugin_id

    def plugin_run(self, plugin_id: str) -> Path:
        """Per-plugin run files: the sandbox policy and report."""
        return self.reports_root / plugin_id

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, registry: str | None = None) -> Paths:
        """Resolve the paths from ``env`` (default: os.environ)."""
        env = os.environ if env is None else env
        home = Path(env["AURORA_HOME"]).resolve() if env.get("AURORA_HOME") else None
        root = Path(env.get("AURORA_PACK_ROOT") or SOURCE_ROOT).resolve()

        def _dir(var: str, default: Path) -> Path:
            value = env.get(var)
            return Path(value).resolve() if value else default

        if home is not None:
            data = _dir("AURORA_PACK_DATA", home / "data" / PACK_ID)
            run = _dir("AURORA_PACK_RUN", home / "run" / PACK_ID)
            logs = _dir("AURORA_PACK_LOGS", home / "logs" / PACK_ID)
            default_registry = home / "data" / PACK05_ID / "plugins" / "registry.json"
        else:
            data = _dir("AURORA_PACK_DATA", root / "data")
            run = _dir("AURORA_PACK_RUN", root / "run")
            logs = _dir("AURORA_PACK_LOGS", root / "logs")
            default_registry = root.parent / PACK05_ID / "data" / "plugins" / "registry.json"
        reg = registry or env.get("AURORA_PLUGIN_REGISTRY")
        return cls(
            home=home,
            root=root,
            data=data,
            run=run,
            logs=logs,
            registry=Path(reg).resolve() if reg else default_registry,
            uid_claims=uid_claims_dir(env),
        )


def sandbox_root(paths: Paths, env: Mapping[str, str] | None = None) -> Path:
    """pack03's root directory (the one holding ``sandbox/launch.py``).

    AURORA_SANDBOX_ROOT wins; installed, the active pack03 version recorded in
    ``$AURORA_HOME/state.json``; by hand, the sibling ``../pack03_os_base``.
    Raises SandboxUnavailable with the place looked at.
    """
    env = os.environ if env is None else env
    if env.get("AURORA_SANDBOX_ROOT"):
        root = Path(env["AURORA_SANDBOX_ROOT"]).resolve()
        where = "AURORA_SANDBOX_ROOT"
    elif paths.home is not None:
        state = paths.home / "state.json"
        try:
            doc = json.loads(state.read_text())
            version = doc["packs"][PACK03_ID]["active_version"]
        except FileNotFoundError as exc:
            raise SandboxUnavailable(f"{state}: missing, pack03_os_base not installed") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SandboxUnavailable(
                f"{state}: no packs.{PACK03_ID}.active_version ({exc!r})"
            ) from exc
        if not isinstance(version, str) or not version or "/" in version or version in (".", ".."):
            raise SandboxUnavailable(f"{state}: pack03_os_base has no active version")
        root = paths.home / "packs" / PACK03_ID / version
        where = f"{state} (active version {version})"
    else:
        root = paths.root.parent / PACK03_ID
        where = "the source tree sibling"
    launch = root / "sandbox" / "launch.py"
    if not launch.is_file():
        raise SandboxUnavailable(f"{launch}: not found (pack03 root from {where})")
    return root
