"""Confine this process by a policy, decide whether it may run, then exec the command.

Two backends share the steps that stay in the launcher (data dir, cgroup, session,
rlimits, environment, report) and differ in how they shut the plugin in:

* ``native``: PID/mount/UTS/IPC/network namespaces (sandbox.pidns: the launcher stays
  as a waiter, the plugin is its grandchild), a minimal root (sandbox.mounts), the
  plugin's own uid/gid (sandbox.identity), no_new_privs, seccomp, Landlock; then exec.
* ``bwrap``: exec bubblewrap with a mount namespace holding only what the policy
  allows, plus pid/IPC/UTS/network namespaces; ``setpriv`` switches to the plugin's
  uid/gid inside and empties the bounding set.

Layers are recorded as they are applied; ``enforcement`` says which active layers
hold back each capability that was not granted. A capability nothing holds back is
a refusal unless the policy sets ``allow_degraded``: the launcher never fails open
silently.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys

from sandbox import CAPABILITIES, _log, cgroups, identity, landlock, limits, pidns, privileges
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
#: What of its own /proc/<pid> a plugin reads (without fs-read): not mountinfo, mounts,
#: mountstats or task/ (its threads' copies): they list the host's mounts under the
#: covered old root (other plugins' data dirs, users' paths). Detaching the old root
#: instead costs an RCU grace period on every start (0.1-20 ms, median 5 ms, measured).
OWN_PROC = ("fd", "fdinfo", "stat", "statm", "status", "maps", "smaps", "smaps_rollup",
            "cmdline", "comm", "environ", "limits", "cgroup", "io", "auxv", "oom_score_adj",
            "sched", "net", "ns", "attr")  # fmt: skip
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
        self.host_pid = os.getpid()  # the plugin's pid as the host sees it
        self.relay: pidns.Relay | None = None  # in the plugin process of a PID namespace
        # The plugin's protocol connection, parked high and close-on-exec until _exec
        # makes it fd 3 (sandbox.protocol); None: the plugin gets none.
        self.protocol_fd: int | None = None
        self.prefixes: list[str] | None = None  # the executable's python_prefixes (_prefixes)
        self.real_executable: str | None = None  # its realpath on the host (_real_executable)

    def layer(self, name: str, active: bool, detail: str) -> None:
        self.layers[name] = {"active": active, "detail": detail}

    def active(self, name: str) -> bool:
        return bool(self.layers.get(name, {}).get("active"))

    def enforcement(self) -> dict[str, list[str]]:
        """For each capability not granted: the active layers that enforce its denial."""
        bw = self.active("bwrap")
        rules = {
            "network": ["network-namespace", "seccomp"] + (["bwrap"] if bw else []),
            "fs-read": ["landlock", "mount-namespace", "bwrap"],
            "fs-write": ["landlock", "mount-namespace", "user", "bwrap"],
            "gpu": ["landlock", "mount-namespace", "bwrap"],
            "io": ["landlock", "mount-namespace", "bwrap"],
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
            + (["pid-namespace"] if self.active("bwrap") or self.active("pid-namespace")
               else []) + (["user"] if self.active("user") else []),
            "cpu": ["cgroup-cpu"] if cg and cg.cpu else [],
        }  # fmt: skip
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
                "(needs its own uid, a pid namespace or Landlock ABI 6 scoping)"
            )
        if "cpu_cores" in self.policy.limits and not self.containment()["cpu"]:
            gaps.append("limits.cpu_cores: no cgroup cpu controller is writable")
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
            "pid": self.host_pid,
            "uid": self.policy.uid,
            "gid": self.policy.gid,
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


def python_prefixes(executable: str, real: str | None = None) -> list[str]:
    """Directories a Python interpreter reads at start-up: its prefix and base prefix.
    `real`: the executable's realpath, when the caller has it."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for path in (executable, real or realpath(executable)):
        if os.path.basename(path).startswith("python"):
            dirs.add(os.path.dirname(os.path.dirname(path)))
    return sorted(d for d in dirs if d not in ("/", ""))


def _prefixes(run: Run) -> list[str]:
    """python_prefixes of the run's executable, resolved once, on the host (the mount
    view binds each at its host path, so Landlock's rules name the same ones after
    pivot_root): realpath's lstat of every component is not paid twice a start."""
    if run.prefixes is None:
        run.prefixes = python_prefixes(run.executable, _real_executable(run))
    return run.prefixes


def _real_executable(run: Run) -> str:
    """The executable's realpath, resolved once a start on the host (os.path.realpath is
    an lstat per component, in Python)."""
    if run.real_executable is None:
        run.real_executable = realpath(run.executable)
    return run.real_executable


def realpath(path: str) -> str:
    """os.path.realpath of an existing file, resolved by the kernel: an O_PATH open and a
    readlink of its /proc/self/fd entry (os.path.realpath costs an lstat per component,
    in Python). Anything unusual (no /proc, a deleted file) falls back to it."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return os.path.realpath(path)
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        real = ""
    finally:
        os.close(fd)
    if not real.startswith("/") or real.endswith(" (deleted)"):
        return os.path.realpath(path)
    return real


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
    if policy.sdk_dir is not None:
        env["AURORA_PLUGIN_SDK"] = policy.sdk_dir
    return env


def _prepare_data_dir(policy: Policy) -> None:
    """The data dir and its tmp/: created or fixed as uid:gid, mode 0700.

    Only those two, through descriptors and without following a symlink: the plugin
    owns what is inside, so a link it planted (``tmp -> /etc``) is refused, never
    chowned through.
    """
    parent, name = os.path.split(policy.data_dir)
    try:
        os.makedirs(parent, mode=0o755, exist_ok=True)  # the launcher's own layout
        pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            top = _own_dir(pfd, name, policy.uid, policy.gid)
            try:
                os.close(_own_dir(top, "tmp", policy.uid, policy.gid))
            finally:
                os.close(top)
        finally:
            os.close(pfd)
    except OSError as exc:
        what = f"{exc.filename}: " if exc.filename else ""
        raise LayerError(
            f"data_dir: cannot create or own {policy.data_dir} ({what}{exc.strerror})"
        ) from None


def _own_dir(dirfd: int, name: str, uid: int, gid: int) -> int:
    """Open (making it if missing) directory `name` in `dirfd`, owned uid:gid mode 0700."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=dirfd)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=dirfd)  # fmt: skip
    except OSError as exc:  # ELOOP: a symlink; ENOTDIR: a file
        raise OSError(exc.errno, f"{exc.strerror} (a symlink or not a directory)", name) from None
    try:
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)
        if st.st_mode & 0o7777 != 0o700:
            os.fchmod(fd, 0o700)
    except OSError:
        os.close(fd)
        raise
    return fd


def _session(run: Run) -> None:
    """Own session: no controlling terminal (no TIOCSTI), signals by group reach only us."""
    try:
        os.setsid()
        run.layer("session", True, "own session and process group")
    except PermissionError:
        if os.getsid(0) == os.getpid():  # a server's spare made it ahead (setsid is slow)
            run.layer("session", True, "own session and process group")
        else:
            # A process-group leader cannot setsid; it keeps the caller's session.
            run.layer("session", False, "caller made the launcher a process-group leader")
            run.warnings.append("session: not a new session (launcher is a group leader)")


def _cgroup(run: Run, prepared: cgroups.RunCgroup | None) -> None:
    pol = run.policy
    memory = int(pol.limits["memory_bytes"]) if "memory_bytes" in pol.limits else None
    processes = int(pol.limits["processes"]) if "processes" in pol.limits else None
    cores = float(pol.limits["cpu_cores"]) if "cpu_cores" in pol.limits else None
    if prepared is not None:  # a server's spare: created and joined ahead, limits now
        cg = prepared
        cg.set_limits(memory, processes, cores)
    else:
        cg = cgroups.create_run(pol.plugin_id, os.getpid(), memory, processes, cores)
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
    if cores is None:
        run.layer("cpu", False, "limits.cpu_cores not in policy: CPU bandwidth not limited")
    elif cg.cpu:
        run.layer("cpu", True, f"{cores:g} core(s) for the whole run ({cg.cpu}: "
                  f"{round(cores * cgroups.CPU_PERIOD)} per {cgroups.CPU_PERIOD} us)")  # fmt: skip
    else:
        run.layer("cpu", False, "no writable cgroup cpu controller (v2 cpu.max, v1 cpu)")


def _namespace_flags(run: Run) -> int:
    """Which namespaces the native backend unshares (root launcher), recorded as layers."""
    flags = libc.CLONE_NEWNS | libc.CLONE_NEWUTS | libc.CLONE_NEWIPC
    if "network" in run.policy.granted:
        run.layer("network-namespace", False, "network granted: host network")
    else:
        flags |= libc.CLONE_NEWNET
        run.layer("network-namespace", True, "new network namespace (loopback only, down)")
    run.layer("ipc-namespace", True, "new IPC namespace (no System V IPC with the host)")
    run.layer("pid-namespace", True, "new PID namespace: the plugin sees only its own "
              "processes (it is pid 2; pid 1 reaps, the launcher waits outside)")  # fmt: skip
    run.layer("uts-namespace", True, f"new UTS namespace, hostname {pidns.HOSTNAME!r}")
    return flags


def _unshare(run: Run, flags: int) -> None:
    """The plugin process's own namespaces; a network namespace the kernel refuses is
    recorded (a refusal, unless degraded mode), the others are required."""
    try:
        libc.unshare(flags)
        return
    except OSError as exc:
        if not flags & libc.CLONE_NEWNET:
            raise LayerError(f"namespaces: unshare: {exc.strerror}") from None
        run.layer("network-namespace", False, f"unshare(CLONE_NEWNET): {exc.strerror}")
    try:
        libc.unshare(flags & ~libc.CLONE_NEWNET)
    except OSError as exc:
        raise LayerError(f"namespaces: unshare: {exc.strerror}") from None


def _cgroup_namespace(run: Run) -> None:
    """A cgroup namespace rooted at the run's own cgroups: /proc/self/cgroup shows "/"
    instead of the host's cgroup path and the run's name (which holds a host pid)."""
    try:
        libc.unshare(libc.CLONE_NEWCGROUP)
    except OSError as exc:
        raise LayerError(f"namespaces: unshare(CLONE_NEWCGROUP): {exc.strerror}") from None
    run.layer("cgroup-namespace", True, "new cgroup namespace: its own cgroups are its root")


def _back_to_host_network(run: Run, flags: int) -> None:
    """A spare's namespaces were made ahead with a network namespace: a plugin granted
    `network` goes back to the host's (the spare kept a descriptor of it)."""
    assert run.relay is not None
    if not flags & libc.CLONE_NEWNET and run.relay.host_net is not None:
        try:
            libc.setns(run.relay.host_net, libc.CLONE_NEWNET)
        except OSError as exc:
            raise LayerError(f"network: back to the host network: {exc.strerror}") from None
    if run.relay.host_net is not None:
        os.close(run.relay.host_net)
        run.relay.host_net = None


def _namespaces_unprivileged(run: Run) -> None:
    """A non-root launcher: network and IPC namespaces only (through a user namespace)."""
    for name in ("pid-namespace", "uts-namespace", "mount-namespace", "cgroup-namespace"):
        run.layer(name, False, "non-root launcher: not built (run the launcher as root)")
    if "network" in run.policy.granted:
        run.layer("network-namespace", False, "network granted: host network")
    else:
        _user_namespace(run)
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


def _ruleset(abi: int, network: bool) -> landlock.Ruleset:
    return landlock.Ruleset(abi=abi, restrict_tcp=not network, scope_signals=True,
                            scope_abstract_unix=not network)  # fmt: skip


def _base_rules(rs: landlock.Ruleset) -> None:
    """The rules of every policy without fs-read/fs-write: the system dirs, basic devices."""
    for path in SYSTEM_READ:
        rs.allow(path, landlock.READ)
    for dev in BASIC_DEVICES:
        rs.allow(dev, landlock.READ_FILE | landlock.WRITE_FILE | landlock.IOCTL_DEV)


def landlock_ahead(abi: int) -> dict[bool, landlock.Ruleset]:
    """A server's spare, before its request: both rulesets (without and with `network`)
    made in the kernel with the rules no policy changes (_base_rules); a request adds its
    own. Rules hold inodes, and the plugin's root binds these very host paths (mounts)."""
    ahead: dict[bool, landlock.Ruleset] = {}
    if abi > 0:
        for network in (False, True):
            rs = _ruleset(abi, network)
            _base_rules(rs)
            rs.create()
            ahead[network] = rs
    return ahead


def _plan_landlock(run: Run, abi: int) -> landlock.Ruleset | None:
    pol = run.policy
    if abi <= 0:
        run.layer("landlock", False, "kernel offers no Landlock (landlock_create_ruleset)")
        return None
    network = "network" in pol.granted
    write = landlock.WRITE
    hidden = [pat for cap, pats in DEVICES.items() if cap not in pol.granted for pat in pats]
    if "fs-read" in pol.granted or "fs-write" in pol.granted:
        rs = _ruleset(abi, network)
        access = write if "fs-write" in pol.granted else landlock.READ
        _allow_all_but_devices(rs, access, hidden)
        for dev in BASIC_DEVICES:
            rs.allow(dev, landlock.READ_FILE | landlock.WRITE_FILE | landlock.IOCTL_DEV)
    else:
        ahead = run.relay.landlock.pop(network, None) if run.relay is not None else None
        if ahead is not None and ahead.abi == abi:
            rs = ahead  # made by the spare (landlock_ahead), with _base_rules
        else:
            rs = _ruleset(abi, network)
            _base_rules(rs)
        for path in (*_prefixes(run), *pol.read_paths):
            rs.allow(path, landlock.READ)
        if pol.sdk_dir is not None:
            rs.allow(pol.sdk_dir, landlock.READ)
        rs.allow(run.executable, landlock.READ)
        for name in OWN_PROC:
            rs.allow(f"/proc/{os.getpid()}/{name}", landlock.READ_FILE | landlock.READ_DIR)
    for cap in ("gpu", "io"):
        if cap in pol.granted:
            for name in _dev_entries(DEVICES[cap]):
                rs.allow(name, write)
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
            _filter(network).compile()
        except OSError as exc:
            _log.debug(__name__, "seccomp filter: %s", exc)


def _filter(network: bool) -> Any:
    from sandbox import seccomp

    if network not in _FILTERS:
        flt = seccomp.Filter()
        if not network:
            flt.deny_sockets()
        flt.deny_namespaces()
        flt.deny_setid_modes()
        flt.deny_out_of_band()
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
        "socket() denied (all families, Unix too), socketpair() only AF_UNIX stream/seqpacket; "
        if "network" not in (run.policy.granted)
        else ""
    )
    run.layer("seccomp", True, f"{sockets}clone(CLONE_NEW*) EPERM, clone3 ENOSYS; "
              "modes with S_ISUID/S_ISGID EPERM, openat2 ENOSYS; MSG_OOB EPERM; denied: "
              f"{', '.join(seccomp.HARDENING)}")  # fmt: skip
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

    def write(self, doc: dict[str, Any]) -> None:
        if self.path:
            write_report(self.path, doc)
        if self.publish is not None:
            self.publish(doc)

    def deliver(self, doc: dict[str, Any]) -> None:
        """The launcher of a PID namespace: the plugin exec'd with this report."""
        self.write(doc)

    def refused(self, doc: dict[str, Any] | None) -> None:
        """The launcher of a PID namespace: the plugin process refused (its report)."""
        if doc is not None and self:
            try:
                self.write(doc)
            except OSError as err:
                _log.debug(__name__, "report %s: %s", self.path, err)


def apply_and_exec(
    policy: Policy,
    argv: list[str],
    backend: str = "auto",
    report: str | None = None,
    *,
    cgroup: cgroups.RunCgroup | None = None,
    publish: Publish | None = None,
    keep_fd: int | None = None,
    relay: pidns.Relay | None = None,
    protocol_fd: int | None = None,
) -> NoReturn:
    """Confine this process by `policy` and exec `argv`; raises on refusal, never returns.

    `cgroup`: the run's cgroups, already made and joined by this process (a server's
    spare); else they are made and joined here. `publish` receives the report
    document too; `keep_fd` stays open up to exec (close-on-exec), so its reader
    sees EOF exactly when exec succeeded. `relay`: this process already is the plugin
    process of a PID namespace (a server's pre-forked spare, sandbox.pidns.prefork).
    `protocol_fd`: the plugin's protocol connection, already parked by
    ``sandbox.protocol.take`` (checked, high, close-on-exec); the plugin gets it as fd 3.
    """
    out = _Output(report, publish, keep_fd)
    run = Run(policy=policy, argv=list(argv), backend=choose_backend(backend))
    run.protocol_fd = protocol_fd
    if relay is not None:
        run.relay = relay
        run.host_pid = relay.host_pid
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
        if run.relay is not None:  # the plugin process: the launcher ends the run
            _relay_failure(run, exc)
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


def _relay_failure(run: Run, exc: BaseException) -> NoReturn:
    from sandbox.errors import EXIT_REFUSED, exit_status

    status = exit_status(exc) or (EXIT_REFUSED, f"launcher error: {exc!r}")
    doc = None
    if isinstance(exc, Refused):
        run.status = "refused"
        run.refusal = exc.reasons
        doc = run.to_json()
    assert run.relay is not None
    run.relay.fail(status[0], status[1], doc)


def _common(run: Run) -> dict[str, str]:
    _session(run)
    run.limits = limits.describe(run.policy.limits)
    run.layer("rlimits", True, ", ".join(f"{k}={v}" for k, v in run.limits.items()))
    env = environment(run.policy)
    if run.protocol_fd is not None:
        env["AURORA_PLUGIN_PROTOCOL_FD"] = "3"  # sandbox.protocol.ENV, FD (not imported: cost)
        run.layer("protocol", True, "fd 3 (AURORA_PLUGIN_PROTOCOL_FD)")
    else:
        run.layer("protocol", False, "no protocol connection passed: fd 3 not open")
    run.layer("environment", True, f"cleared; set {', '.join(sorted(env))}")
    os.chdir(run.policy.data_dir)
    return env


def _finish_report(run: Run, out: _Output) -> None:
    if run.relay is not None and not run.relay.direct:  # the launcher outside writes it
        run.relay.report(run.to_json())  # (our root is another)
        return
    out.write(run.to_json())


def _exec_native(run: Run, out: _Output) -> NoReturn:
    abi = landlock.abi_version()
    flt = _plan_seccomp(run)  # built (and its module imported) while the host root is ours
    if os.geteuid() == 0:
        import fnmatch  # noqa: F401 - needed after pivot_root, where sandbox/ is not visible
        import socket  # noqa: F401

        from sandbox import mounts  # noqa: F401

        flags = _namespace_flags(run)
        if run.relay is None:
            with contextlib.suppress(PermissionError):  # the waiter too leads its own group
                os.setsid()
            run.relay = pidns.enter(out.keep_fd, out.deliver, out.refused, run.protocol_fd)
            run.host_pid = run.relay.host_pid
            out.keep_fd = None  # the launcher keeps the server's channel; we relay
        if run.relay.unshared:  # a spare made them ahead
            _back_to_host_network(run, flags)
        else:
            _unshare(run, flags)
        socket_sethostname(pidns.HOSTNAME)
        _mount_view(run)
        _cgroup_namespace(run)
    else:
        _namespaces_unprivileged(run)
    env = _common(run)
    rs = _plan_landlock(run, abi)
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
    _become(run)
    _refuse_if_gaps(run)
    privileges.set_no_new_privs()
    run.layer("no-new-privs", True, "PR_SET_NO_NEW_PRIVS set")
    run.layer("file-descriptors", True, _fd_detail(run))
    run.status = "running"
    _finish_report(run, out)
    try:
        if flt is not None:
            flt.load()
        if rs is not None:
            rs.restrict_self()
    except OSError as exc:
        raise Refused([f"seccomp/landlock: could not be applied: {exc.strerror}"]) from None
    _exec(run, run.executable, run.argv, env, cloexec=out.keep_fd)


def socket_sethostname(name: str) -> None:
    import socket

    socket.sethostname(name)


def _mount_view(run: Run) -> None:
    """The plugin's own root (sandbox.mounts), in the plugin process, still root."""
    from sandbox import mounts

    pol = run.policy
    base = "rw" if "fs-write" in pol.granted else "ro" if "fs-read" in pol.granted else None
    view = mounts.View(base, pol.uid, pol.gid)
    prefixes = _prefixes(run)
    view.read = [*prefixes, *pol.read_paths, *([pol.sdk_dir] if pol.sdk_dir else [])]
    for path in (run.executable, _real_executable(run)):
        if not any(path == b or path.startswith(b.rstrip("/") + "/")
                   for b in (*SYSTEM_READ, *view.read)):  # fmt: skip
            view.read.append(path)
    view.write = [pol.data_dir]
    granted: list[str] = []
    for cap in ("gpu", "io"):
        if cap in pol.granted:
            granted += _dev_entries(DEVICES[cap])
    try:
        if run.relay is not None and run.relay.prepared is not None:  # a spare's, made ahead
            mounts.finish(view, run.relay.prepared, granted)
        else:
            mounts.build(view, SYSTEM_READ, list(BASIC_DEVICES), granted)
    except OSError as exc:
        raise LayerError(f"mount-namespace: {exc}") from None
    run.layer("mount-namespace", True, view.describe())


def _become(run: Run) -> None:
    """The plugin's own uid/gid, no group, no capability (sandbox.identity)."""
    pol = run.policy
    was_root = os.geteuid() == 0
    try:
        identity.become(pol.uid, pol.gid)
    except LayerError as exc:
        raise Refused([str(exc)]) from None
    run.layer("user", True, f"uid {pol.uid}, gid {pol.gid}, no supplementary group "
              "(getresuid/getresgid/getgroups checked)")  # fmt: skip
    run.layer("capabilities", True, "none: bounding set emptied, then uid switched from root"
              if was_root else f"uid {pol.uid}: none to drop")  # fmt: skip


def _exec_bwrap(run: Run, out: _Output) -> NoReturn:
    from sandbox import bwrap

    if run.relay is not None and run.relay.unshared:  # a spare's namespaces, made ahead
        granted = "network" in run.policy.granted
        _back_to_host_network(run, 0 if granted else libc.CLONE_NEWNET)
    env = _common(run)
    path = bwrap.find()
    if path is None:
        run.layer("bwrap", False, "bwrap not installed")
        raise Refused(["backend bwrap: bwrap is not installed"])
    flt = _plan_seccomp(run)
    keep: list[int] = []
    args = bwrap.arguments(run, python_prefixes(run.executable), DEVICES, SYSTEM_READ)
    if flt is not None:
        fd = _above_protocol_fd(os.memfd_create("aurora-seccomp", 0))
        flt.export(fd)
        os.lseek(fd, 0, os.SEEK_SET)
        keep.append(fd)
        args[-1:-1] = ["--seccomp", str(fd)]
    pol = run.policy
    run.layer("bwrap", True, f"{path} --cap-drop ALL but SETUID/SETGID/SETPCAP (setpriv) "
              "and DAC_READ_SEARCH (--chdir into the plugin-owned data_dir), all gone after "
              "setpriv; "
              "mounts: system ro, data_dir rw; new pid/ipc/uts"
              + ("" if "network" in pol.granted else "/net") + " namespaces")  # fmt: skip
    if not os.access(bwrap.SETPRIV, os.X_OK):
        run.layer("user", False, f"{bwrap.SETPRIV} (util-linux) not installed")
        raise Refused([f"user: {bwrap.SETPRIV} is needed to run the plugin as {pol.uid}"])
    problem = identity.may_become(pol.uid, pol.gid)
    if problem:
        run.layer("user", False, problem)
        raise Refused([f"user: {problem}"])
    run.layer("user", True, f"uid {pol.uid}, gid {pol.gid}, no supplementary group (setpriv "
              "--reuid --regid --clear-groups inside bwrap)")  # fmt: skip
    run.layer("capabilities", True, "none: setpriv --inh-caps=-all --bounding-set=-all, then "
              "the switch from root clears the rest")  # fmt: skip
    run.layer("ipc-namespace", True, "bwrap --unshare-ipc")
    run.layer("pid-namespace", True, "bwrap --unshare-pid")
    run.layer("uts-namespace", True, "bwrap --unshare-uts --hostname aurora-sandbox")
    run.layer("mount-namespace", True, "bwrap: new root of binds (pack03 README)")
    run.layer("cgroup-namespace", True, "bwrap --unshare-cgroup-try")
    if "network" not in pol.granted:
        run.layer("network-namespace", True, "bwrap --unshare-net")
    _refuse_if_gaps(run)
    privileges.set_no_new_privs()
    run.layer("no-new-privs", True, "PR_SET_NO_NEW_PRIVS set")
    run.layer("file-descriptors", True, _fd_detail(run))
    run.status = "running"
    _finish_report(run, out)
    argv = [path, *args, *bwrap.setpriv_argv(pol.uid, pol.gid), run.executable, *run.argv[1:]]
    _exec(run, path, argv, env, tuple(keep), cloexec=out.keep_fd)


def _fd_detail(run: Run) -> str:
    if run.protocol_fd is None:
        return "every fd above 2 closed before exec"
    return "every fd above 3 closed before exec; fd 3: the protocol connection"


def _above_protocol_fd(fd: int) -> int:
    """bwrap's seccomp memfd, moved off fd 3 (the protocol connection's number in the
    plugin; bwrap gets it inherited, so both must be kept at exec)."""
    if fd > 3:
        return fd
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 4)
    os.close(fd)
    return high


def _exec(run: Run, path: str, argv: list[str], env: dict[str, str], keep: tuple[int, ...] = (),
          cloexec: int | None = None) -> NoReturn:  # fmt: skip
    """Set the rlimits, close every fd above 2 (but `keep`), exec: nothing runs after this.

    `keep` is inherited by the command (bwrap's seccomp fd); `cloexec` survives the
    sweep but not exec (the server's status channel). The protocol connection, parked
    high until now, becomes fd 3 only here, after the sweep.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        limits.apply(run.policy.limits)
    except (OSError, ValueError) as exc:
        raise LayerError(f"rlimits: {exc}") from None
    spared = {*keep, *([] if cloexec is None else [cloexec])}
    if run.protocol_fd is not None:
        if 3 in spared:  # never by construction (sandbox.protocol.take, _above_protocol_fd)
            raise LayerError("file-descriptors: fd 3 is held by the launcher itself: the "
                             "protocol connection cannot take it")  # fmt: skip
        spared.add(run.protocol_fd)
    low = 3
    for fd in sorted(spared):
        os.closerange(low, fd)
        os.set_inheritable(fd, fd in keep)
        low = fd + 1
    os.closerange(low, 2**31 - 1)
    if run.protocol_fd is not None:
        os.dup2(run.protocol_fd, 3)  # inheritable: the plugin's (through bwrap and setpriv)
        os.close(run.protocol_fd)
        run.protocol_fd = 3
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
