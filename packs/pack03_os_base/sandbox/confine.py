"""Confine this process by a policy, decide whether it may run, then exec the command.

Two backends share the steps that stay in the launcher (data dir, cgroup, session,
rlimits, environment, report) and differ in how they shut the plugin in:

* ``native``: network/IPC namespaces (unshare), capabilities dropped, no_new_privs,
  seccomp, Landlock, all in this process; then exec the command itself.
* ``bwrap``: exec bubblewrap (always ``--cap-drop ALL``) with a mount namespace
  holding only what the policy allows, plus pid/IPC/network namespaces.

Layers are recorded as they are applied; ``enforcement`` says which active layers
hold back each capability that was not granted. A capability nothing holds back is
a refusal unless the policy sets ``allow_degraded``: the launcher never fails open
silently.
"""

from __future__ import annotations

import errno
import os
import sys

from sandbox import CAPABILITIES, _log, cgroups, landlock, limits, privileges
from sandbox import _libc as libc
from sandbox.errors import CommandNotExecutable, CommandNotFound, LayerError, Refused
from sandbox.policy import Policy
from sandbox.report import write_report

TYPE_CHECKING = False  # typing costs start-up time; mypy reads the block anyway
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

    #: Receives the report document (status "running" just before exec, or "refused").
    Publish = Callable[[dict[str, Any]], None]

REPORT_SCHEMA = "aurora-sandbox-report-v1"
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Variables a plugin inherits from the launcher's caller, when set; all else is dropped.
ENV_PASS = ("LANG", "LC_ALL", "TZ")

#: What every program needs to start: loader, libraries, a few files of /etc.
SYSTEM_READ = (
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
    "/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf", "/etc/host.conf",
    "/etc/gai.conf", "/etc/passwd", "/etc/group", "/etc/services", "/etc/protocols",
    "/etc/ssl", "/etc/ca-certificates", "/etc/pki", "/etc/mime.types", "/etc/os-release",
)  # fmt: skip
#: Harmless devices every process may use (read and write).
BASIC_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
#: Device nodes (names in /dev) behind the `gpu` and `io` capabilities.
DEVICES = {
    "gpu": ("nvidia*", "dri", "kfd", "accel"),
    "io": (
        "ttyS*", "ttyUSB*", "ttyACM*", "ttyAMA*", "serial", "bus", "hidraw*", "usb*",
        "gpiochip*", "i2c-*", "spidev*", "parport*", "lp[0-9]*",
    ),
}  # fmt: skip
BACKENDS = ("auto", "native", "bwrap")


class Run:
    """What the launcher did to itself for one run: the basis of the report."""

    def __init__(self, policy: Policy, argv: list[str], backend: str) -> None:
        self.policy = policy
        self.argv = argv
        self.backend = backend
        self.executable = ""
        self.layers: dict[str, dict[str, Any]] = {}
        self.warnings: list[str] = []
        self.cgroup: cgroups.RunCgroup | None = None
        self.limits: dict[str, int | str] = {}
        self.status = "starting"
        self.refusal: list[str] = []

    def layer(self, name: str, active: bool, detail: str) -> None:
        self.layers[name] = {"active": active, "detail": detail}

    def active(self, name: str) -> bool:
        return bool(self.layers.get(name, {}).get("active"))

    def enforcement(self) -> dict[str, list[str]]:
        """For each capability not granted: the active layers that enforce its denial."""
        bw = self.active("bwrap")
        rules = {
            "network": ["network-namespace", "seccomp"] + (["bwrap"] if bw else []),
            "fs-read": ["landlock", "bwrap"],
            "fs-write": ["landlock", "bwrap"],
            "gpu": ["landlock", "bwrap"],
            "io": ["landlock", "bwrap"],
        }
        return {
            cap: [name for name in rules[cap] if self.active(name)] for cap in self.policy.denied()
        }

    def containment(self) -> dict[str, list[str]]:
        """Which active layers contain memory, processes, the tree, and signals."""
        cg = self.cgroup
        out: dict[str, list[str]] = {
            "memory": (["rlimit-as"] if "memory_bytes" in self.policy.limits else [])
            + (["cgroup-memory"] if cg and cg.memory else []),
            "processes": (["cgroup-pids"] if cg and cg.pids else [])
            + (["rlimit-nproc"] if isinstance(self.limits.get("processes"), int) else []),
            "tree-kill": ["cgroup"] if cg and cg.dirs else [],
            "signals": (["landlock-scope"] if self.active("landlock-scope") else [])
            + (["pid-namespace"] if self.active("bwrap") else []),
        }
        return out

    def gaps(self) -> list[str]:
        """Every denial nothing enforces, each with its reason: the grounds to refuse."""
        gaps = [
            f"{cap}: not granted, and no active layer can deny it ({self._why(cap)})"
            for cap, layers in self.enforcement().items()
            if not layers
        ]
        if not self.containment()["signals"]:
            # The plugin keeps the launcher's uid: without a layer it could signal (and
            # ptrace) every process of that uid - for root, the whole machine.
            gaps.append(
                "signals: no layer keeps the plugin from signalling processes outside it "
                "(needs Landlock ABI 6 scoping or the bwrap backend's pid namespace)"
            )
        if "processes" in self.policy.limits and not self.containment()["processes"]:
            gaps.append(
                "limits.processes: no cgroup pids controller is writable and RLIMIT_NPROC "
                "does not bind root"
            )
        return gaps

    def _why(self, cap: str) -> str:
        names = ["network-namespace", "seccomp"] if cap == "network" else ["landlock"]
        reasons = [f"{n}: {self.layers[n]['detail']}" for n in names if n in self.layers]
        return "; ".join(reasons) or "no layer for it on this host"

    def to_json(self) -> dict[str, Any]:
        containment = self.containment()
        degraded = self.gaps() if self.policy.allow_degraded else []
        warnings = list(self.warnings)
        warnings += [f"{k}: not contained" for k, v in containment.items() if not v]
        return {
            "schema": REPORT_SCHEMA,
            "status": self.status,
            "refusal": self.refusal,
            "plugin_id": self.policy.plugin_id,
            "pid": os.getpid(),
            "backend": self.backend,
            "argv": self.argv,
            "executable": self.executable,
            "granted": sorted(self.policy.granted),
            "allow_degraded": self.policy.allow_degraded,
            "layers": self.layers,
            "enforced": self.enforcement(),
            "contained": containment,
            "degraded": degraded,
            "warnings": warnings,
            "limits": self.limits,
            "cgroup": self.cgroup.to_json() if self.cgroup else None,
        }


def resolve_command(argv: list[str]) -> str:
    """The absolute path exec will run, searched in the sandbox's PATH (not the caller's)."""
    if not argv:
        raise CommandNotFound("no command given after --")
    name = argv[0]
    candidates = [name] if "/" in name else [os.path.join(d, name) for d in SAFE_PATH.split(":")]
    for path in candidates:
        if os.path.isfile(path):
            if not os.access(path, os.X_OK):
                raise CommandNotExecutable(f"{path}: not executable")
            return os.path.abspath(path)
    raise CommandNotFound(f"{name}: command not found (searched {SAFE_PATH})")


def choose_backend(requested: str) -> str:
    """auto: native when the kernel has Landlock, else bubblewrap when installed."""
    if requested != "auto":
        return requested
    if landlock.abi_version() > 0:
        return "native"
    from sandbox import bwrap  # only needed on hosts without Landlock

    return "bwrap" if bwrap.find() else "native"


def python_prefixes(executable: str) -> list[str]:
    """Directories a Python interpreter reads at start-up: its prefix and base prefix."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for path in (executable, os.path.realpath(executable)):
        if os.path.basename(path).startswith("python"):
            dirs.add(os.path.dirname(os.path.dirname(path)))
    return sorted(d for d in dirs if d not in ("/", ""))


def environment(policy: Policy) -> dict[str, str]:
    """The plugin's whole environment: a short allow-list, HOME and TMPDIR in its data dir."""
    env = {k: os.environ[k] for k in ENV_PASS if k in os.environ}
    env.setdefault("LANG", "C.UTF-8")
    env.update(
        PATH=SAFE_PATH,
        HOME=policy.data_dir,
        TMPDIR=os.path.join(policy.data_dir, "tmp"),
        PYTHONDONTWRITEBYTECODE="1",
        AURORA_PLUGIN_ID=policy.plugin_id,
        AURORA_PLUGIN_DATA=policy.data_dir,
    )
    return env


def _prepare_data_dir(policy: Policy) -> None:
    try:
        os.makedirs(os.path.join(policy.data_dir, "tmp"), mode=0o700, exist_ok=True)
    except OSError as exc:
        raise LayerError(f"data_dir: cannot create {policy.data_dir}: {exc.strerror}") from None


def _session(run: Run) -> None:
    """Own session: no controlling terminal (no TIOCSTI), signals by group reach only us."""
    try:
        os.setsid()
        run.layer("session", True, "new session and process group")
    except PermissionError:
        if os.getsid(0) == os.getpid():
            run.layer("session", True, "already a session leader")
        else:
            # A process-group leader cannot setsid; it keeps the caller's session.
            run.layer("session", False, "caller made the launcher a process-group leader")
            run.warnings.append("session: not a new session (launcher is a group leader)")


def _cgroup(run: Run, prepared: cgroups.RunCgroup | None) -> None:
    pol = run.policy
    memory = int(pol.limits["memory_bytes"]) if "memory_bytes" in pol.limits else None
    processes = int(pol.limits["processes"]) if "processes" in pol.limits else None
    if prepared is not None:  # a server's spare: created and joined ahead, limits now
        cg = prepared
        cg.set_limits(memory, processes)
    else:
        cg = cgroups.create_run(pol.plugin_id, os.getpid(), memory, processes)
    if cg.dirs and prepared is None:
        try:
            cg.join(os.getpid())
        except OSError as exc:
            cg.problems.append(f"join: {exc.strerror}")
            cgroups.leave(cg, os.getpid())
            cg = cgroups.RunCgroup(problems=cg.problems)
    run.cgroup = cg
    if cg.dirs:
        what = [f"memory={pol.limits['memory_bytes']}" if cg.memory else "",
                f"pids={pol.limits['processes']}" if cg.pids else "", "tree kill"]  # fmt: skip
        run.layer("cgroup", True, ", ".join(w for w in what if w) + f" ({cg.dirs[0]})")
    else:
        run.layer("cgroup", False, "; ".join(cg.problems) or "no cgroup hierarchy")


def _namespaces(run: Run) -> None:
    if "network" in run.policy.granted:
        run.layer("network-namespace", False, "network granted: host network")
    else:
        try:
            libc.unshare(libc.CLONE_NEWNET)
            run.layer("network-namespace", True, "new network namespace (loopback only, down)")
        except PermissionError as exc:
            if os.geteuid() == 0:
                run.layer("network-namespace", False, f"unshare(CLONE_NEWNET): {exc.strerror}")
            else:
                _user_namespace(run)
        except OSError as exc:
            run.layer("network-namespace", False, f"unshare(CLONE_NEWNET): {exc.strerror}")
    try:
        libc.unshare(libc.CLONE_NEWIPC)
        run.layer("ipc-namespace", True, "new IPC namespace (no System V IPC with the host)")
    except OSError as exc:
        run.layer("ipc-namespace", False, f"unshare(CLONE_NEWIPC): {exc.strerror}")


def _user_namespace(run: Run) -> None:
    """Unprivileged launcher: a user namespace makes the network namespace possible.

    Inside it the launcher holds capabilities over the new namespaces only; the exec
    that follows (by a non-root uid, with no_new_privs) drops them.
    """
    try:
        libc.unshare(libc.CLONE_NEWUSER | libc.CLONE_NEWNET)
        run.layer("network-namespace", True, "new user+network namespace (loopback only, down)")
    except OSError as exc:
        run.layer("network-namespace", False, f"unshare(CLONE_NEWUSER|NEWNET): {exc.strerror}")


def _plan_landlock(run: Run, abi: int) -> landlock.Ruleset | None:
    pol = run.policy
    if abi <= 0:
        run.layer("landlock", False, "kernel offers no Landlock (landlock_create_ruleset)")
        return None
    rs = landlock.Ruleset(
        abi=abi,
        restrict_tcp="network" not in pol.granted,
        scope_signals=True,
        scope_abstract_unix="network" not in pol.granted,
    )
    write = landlock.WRITE
    hidden = [pat for cap, pats in DEVICES.items() if cap not in pol.granted for pat in pats]
    if "fs-read" in pol.granted or "fs-write" in pol.granted:
        access = write if "fs-write" in pol.granted else landlock.READ
        _allow_all_but_devices(rs, access, hidden)
    else:
        for path in (*SYSTEM_READ, *python_prefixes(run.executable), *pol.read_paths):
            rs.allow(path, landlock.READ)
        rs.allow(run.executable, landlock.READ)
        rs.allow(f"/proc/{os.getpid()}", landlock.READ_FILE | landlock.READ_DIR)
    for cap in ("gpu", "io"):
        if cap in pol.granted:
            for name in _dev_entries(DEVICES[cap]):
                rs.allow(name, write)
    for dev in BASIC_DEVICES:
        rs.allow(dev, landlock.READ_FILE | landlock.WRITE_FILE | landlock.IOCTL_DEV)
    rs.allow(pol.data_dir, write)
    return rs


def _dev_entries(patterns: tuple[str, ...] | list[str]) -> list[str]:
    import fnmatch

    try:
        names = os.listdir("/dev")
    except OSError:
        return []
    return [f"/dev/{n}" for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]


def _allow_all_but_devices(rs: landlock.Ruleset, access: int, hidden: list[str]) -> None:
    """Grant `access` on the whole filesystem, except kernel interfaces and hidden devices.

    Landlock only allows, so "all but /dev/dri" is every top-level entry except
    /dev, plus every entry of /dev except the hidden ones. /proc, /sys and device
    nodes stay read-only even with fs-write: for uid 0, writing them is not "writing
    files" but reconfiguring the host (core_pattern, cgroup.procs, a raw disk).
    """
    import fnmatch

    rs.allow("/", landlock.READ_DIR)
    for name in os.listdir("/"):
        if name != "dev":
            rs.allow(f"/{name}", landlock.READ if name in ("proc", "sys") else access)
    for name in os.listdir("/dev"):
        if not any(fnmatch.fnmatch(name, p) for p in hidden):
            rs.allow(f"/dev/{name}", access if name in ("shm", "mqueue") else landlock.READ)


_FILTERS: dict[bool, Any] = {}  # network granted -> seccomp.Filter, built once per process


def seccomp_filters() -> None:
    """Build both seccomp filters now (a server does, so each fork only loads one)."""
    from sandbox import seccomp

    if seccomp.library() is None:
        return
    for network in (False, True):
        try:
            _filter(network)
        except OSError as exc:
            _log.debug(__name__, "seccomp filter: %s", exc)


def _filter(network: bool) -> Any:
    from sandbox import seccomp

    if network not in _FILTERS:
        flt = seccomp.Filter()
        if not network:
            flt.deny_sockets()
        for name in seccomp.HARDENING:
            flt.deny(name)
        _FILTERS[network] = flt
    return _FILTERS[network]


def _plan_seccomp(run: Run) -> Any:
    from sandbox import seccomp

    if seccomp.library() is None:
        run.layer("seccomp", False, "libseccomp.so.2 not found (no binding for seccomp)")
        return None
    try:
        flt = _filter("network" in run.policy.granted)
    except OSError as exc:
        run.layer("seccomp", False, f"building the filter: {exc.strerror or exc}")
        return None
    sockets = (
        "socket() denied (all families, Unix too), socketpair() only for AF_UNIX; "
        if "network" not in (run.policy.granted)
        else ""
    )
    run.layer("seccomp", True, f"{sockets}denied: {', '.join(seccomp.HARDENING)}")
    return flt


def _refuse_if_gaps(run: Run) -> None:
    gaps = run.gaps()
    if gaps and not run.policy.allow_degraded:
        raise Refused(gaps)
    for gap in gaps:
        _log.warning(__name__, "degraded (allow_degraded): %s", gap)


class _Output:
    """Where the report goes: a file (written atomically), a callback, or both."""

    def __init__(self, path: str | None, publish: Publish | None, keep_fd: int | None) -> None:
        self.path = path
        self.publish = publish
        self.keep_fd = keep_fd  # survives the fd sweep, still closed by exec (a status pipe)

    def __bool__(self) -> bool:
        return bool(self.path) or self.publish is not None


def apply_and_exec(
    policy: Policy,
    argv: list[str],
    backend: str = "auto",
    report: str | None = None,
    *,
    cgroup: cgroups.RunCgroup | None = None,
    publish: Publish | None = None,
    keep_fd: int | None = None,
) -> NoReturn:
    """Confine this process by `policy` and exec `argv`; raises on refusal, never returns.

    `cgroup`: the run's cgroups, already made and joined by this process (a server's
    spare); else they are made and joined here. `publish` receives the report
    document too; `keep_fd` stays open up to exec (close-on-exec), so its reader
    sees EOF exactly when exec succeeded.
    """
    out = _Output(report, publish, keep_fd)
    run = Run(policy=policy, argv=list(argv), backend=choose_backend(backend))
    run.executable = resolve_command(argv)
    if os.path.basename(run.executable).startswith("python") and "-I" not in argv[1:]:
        run.warnings.append("python started without -I: it reads PYTHON* and the script dir")
    _prepare_data_dir(policy)
    _cgroup(run, cgroup)
    try:
        if run.backend == "bwrap":
            _exec_bwrap(run, out)
        _exec_native(run, out)
    except BaseException as exc:
        if run.cgroup is not None and run.cgroup.dirs and cgroup is None:
            cgroups.leave(run.cgroup, os.getpid())
        if out and isinstance(exc, Refused):
            run.status = "refused"
            run.refusal = exc.reasons
            try:  # after Landlock the report may be out of reach: the exit code still says it
                _finish_report(run, out)
            except OSError as err:
                _log.debug(__name__, "report %s: %s", report, err)
        raise


def _common(run: Run) -> dict[str, str]:
    _session(run)
    run.limits = limits.describe(run.policy.limits)
    run.layer("rlimits", True, ", ".join(f"{k}={v}" for k, v in run.limits.items()))
    env = environment(run.policy)
    run.layer("environment", True, f"cleared; set {', '.join(sorted(env))}")
    os.chdir(run.policy.data_dir)
    return env


def _finish_report(run: Run, out: _Output) -> None:
    if out.path:
        write_report(out.path, run.to_json())
    if out.publish is not None:
        out.publish(run.to_json())


def _exec_native(run: Run, out: _Output) -> NoReturn:
    abi = landlock.abi_version()
    _namespaces(run)
    env = _common(run)
    rs = _plan_landlock(run, abi)
    flt = _plan_seccomp(run)
    if rs is not None:
        fs = (
            "all but hidden devices"
            if run.policy.granted & {"fs-read", "fs-write"}
            else ("system dirs, python prefix, read_paths")
        )
        run.layer("landlock", True, f"ABI {abi}: reads {fs}; writes only data_dir"
                  + (" (fs-write granted: everywhere but hidden devices)"
                     if "fs-write" in run.policy.granted else ""))  # fmt: skip
        if rs.restrict_tcp:
            run.layer("landlock-network", abi >= 4, "TCP bind/connect denied" if abi >= 4
                      else f"ABI {abi} < 4: no TCP rules")  # fmt: skip
        run.layer("landlock-scope", abi >= 6, "signals to processes outside denied"
                  if abi >= 6 else f"ABI {abi} < 6: no signal scoping")  # fmt: skip
    if flt is None and "network" not in run.policy.granted:
        run.warnings.append(
            "network: without seccomp, Unix sockets on the host filesystem stay reachable"
        )
    _refuse_if_gaps(run)
    if os.geteuid() == 0:
        try:
            privileges.drop_all_capabilities()
            run.layer("capabilities", True, "root without capabilities (bounding set empty)")
        except OSError as exc:
            raise Refused([f"capabilities: cannot drop them: {exc.strerror}"]) from None
    else:
        run.layer("capabilities", True, f"uid {os.geteuid()}: none to drop")
    privileges.set_no_new_privs()
    run.layer("no-new-privs", True, "PR_SET_NO_NEW_PRIVS set")
    run.layer("file-descriptors", True, "every fd above 2 closed before exec")
    run.status = "running"
    _finish_report(run, out)
    try:
        if flt is not None:
            flt.load()
        if rs is not None:
            rs.restrict_self()
    except OSError as exc:
        run.status = "refused"
        _finish_report(run, out)
        raise Refused([f"seccomp/landlock: could not be applied: {exc.strerror}"]) from None
    _exec(run, run.executable, run.argv, env, cloexec=out.keep_fd)


def _exec_bwrap(run: Run, out: _Output) -> NoReturn:
    from sandbox import bwrap

    env = _common(run)
    path = bwrap.find()
    if path is None:
        run.layer("bwrap", False, "bwrap not installed")
        raise Refused(["backend bwrap: bwrap is not installed"])
    flt = _plan_seccomp(run)
    keep: list[int] = []
    args = bwrap.arguments(run, python_prefixes(run.executable), DEVICES, SYSTEM_READ)
    if flt is not None:
        fd = os.memfd_create("aurora-seccomp", 0)
        flt.export(fd)
        os.lseek(fd, 0, os.SEEK_SET)
        keep.append(fd)
        args[-1:-1] = ["--seccomp", str(fd)]
    run.layer("bwrap", True, f"{path} --cap-drop ALL; mounts: system ro, data_dir rw; "
              "new pid/ipc/uts" + ("" if "network" in run.policy.granted else "/net")
              + " namespaces")  # fmt: skip
    run.layer("capabilities", True, "bwrap --cap-drop ALL (bwrap keeps the bounding set; "
              "no-new-privs stops exec from using it)")  # fmt: skip
    run.layer("ipc-namespace", True, "bwrap --unshare-ipc")
    if "network" not in run.policy.granted:
        run.layer("network-namespace", True, "bwrap --unshare-net")
    _refuse_if_gaps(run)
    privileges.set_no_new_privs()
    run.layer("no-new-privs", True, "PR_SET_NO_NEW_PRIVS set")
    run.layer("file-descriptors", True, "every fd above 2 closed before exec")
    run.status = "running"
    _finish_report(run, out)
    argv = [path, *args, run.executable, *run.argv[1:]]
    _exec(run, path, argv, env, tuple(keep), cloexec=out.keep_fd)


def _exec(run: Run, path: str, argv: list[str], env: dict[str, str], keep: tuple[int, ...] = (),
          cloexec: int | None = None) -> NoReturn:  # fmt: skip
    """Set the rlimits, close every fd above 2 (but `keep`), exec: nothing runs after this.

    `keep` is inherited by the command (bwrap's seccomp fd); `cloexec` survives the
    sweep but not exec (the server's status channel).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        limits.apply(run.policy.limits)
    except (OSError, ValueError) as exc:
        raise LayerError(f"rlimits: {exc}") from None
    low = 3
    for fd in sorted({*keep, *([] if cloexec is None else [cloexec])}):
        os.closerange(low, fd)
        os.set_inheritable(fd, fd in keep)
        low = fd + 1
    os.closerange(low, 2**31 - 1)
    try:
        os.execve(path, argv, env)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise CommandNotFound(f"{path}: {exc.strerror}") from None
        raise CommandNotExecutable(f"{path}: {exc.strerror}") from None


__all__ = [
    "BACKENDS",
    "CAPABILITIES",
    "Run",
    "apply_and_exec",
    "environment",
    "resolve_command",
    "seccomp_filters",
]
