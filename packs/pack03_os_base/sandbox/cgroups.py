"""Control groups: memory, process-count and CPU-bandwidth limits, and killing a run's tree.

Works with a pure cgroup v2 hierarchy and with the hybrid layout (v1 controllers
beside a controller-less v2 mount) this project's CI machines have. Every run gets
``aurora-sandbox/<plugin_id>/run-<pid>`` in each hierarchy it uses; the pid is the
launcher's, which is also the plugin's (the launcher execs it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time

from sandbox import _log

BASE = "aurora-sandbox"
#: The group of a server's runs: their cgroups are made before the plugin is known
#: (cgroups cannot move between parents). Not a valid plugin id (leading "_").
POOL = "_pool"


class Hierarchy:
    """One mounted hierarchy: v2 (controllers from cgroup.controllers) or v1 (mount options)."""

    __slots__ = ("controllers", "mount", "own_path", "version")

    def __init__(self, mount: str, version: int, controllers: frozenset[str], own_path: str):
        self.mount = mount
        self.version = version
        self.controllers = controllers
        self.own_path = own_path  # where this process sits in it ("/" when unknown)

    def base_dirs(self) -> list[str]:
        """Where runs are created: under our own cgroup for v1, at the root for v2."""
        dirs = [os.path.join(self.mount, BASE)]
        if self.own_path not in ("", "/"):
            dirs.insert(0, os.path.join(self.mount + self.own_path, BASE))
        return dirs if self.version == 1 else dirs[-1:]


def hierarchies() -> list[Hierarchy]:
    """The cgroup hierarchies mounted on this machine."""
    own: dict[str, str] = {}
    try:
        with open("/proc/self/cgroup", encoding="ascii") as fh:
            for line in fh:
                _, ctrl, path = line.rstrip("\n").split(":", 2)
                own[ctrl] = path
    except OSError:
        pass
    found: list[Hierarchy] = []
    try:
        with open("/proc/self/mounts", encoding="utf-8") as fh:
            mounts = [line.split() for line in fh]
    except OSError:
        return found
    for fields in mounts:
        if len(fields) < 4:
            continue
        mount, fstype, options = fields[1], fields[2], fields[3].split(",")
        if fstype == "cgroup2":
            try:
                with open(os.path.join(mount, "cgroup.controllers"), encoding="ascii") as fh:
                    ctrls = frozenset(fh.read().split())
            except OSError:
                ctrls = frozenset()
            found.append(Hierarchy(mount, 2, ctrls, own.get("", "/")))
        elif fstype == "cgroup":
            ctrls = frozenset(o for o in options if o in ("memory", "pids", "freezer", "cpu"))
            if ctrls:
                key = next((k for k in own if set(k.split(",")) & ctrls), "")
                found.append(Hierarchy(mount, 1, ctrls, own.get(key, "/")))
    return found


class RunCgroup:
    """The cgroup directories of one run and what they enforce."""

    def __init__(self, problems: list[str] | None = None) -> None:
        self.dirs: list[str] = []
        self.origins: list[str] = []  # where the launcher was, per dir
        self.versions: list[int] = []  # the hierarchy version, per dir
        self.memory: str | None = None  # the file holding the memory limit, when set
        self.pids: str | None = None  # the file holding the process limit, when set
        self.cpu: str | None = None  # the file holding the CPU bandwidth, when set
        self.kill_file: str | None = None  # v2 cgroup.kill, when the kernel has it
        self.freezer: str | None = None  # v1 freezer.state, stops forks while killing
        self.problems: list[str] = problems or []

    def join(self, pid: int) -> None:
        """Move `pid` into every directory of the run."""
        for d in self.dirs:
            _write(os.path.join(d, "cgroup.procs"), str(pid))

    def set_limits(
        self, memory_bytes: int | None, processes: int | None, cpu_cores: float | None = None
    ) -> None:
        """Write the limits into the run's directories; problems are recorded, not raised.

        Cheap (a few small writes): a cgroup prepared ahead (server spares) gets its
        limits only when the policy is known.
        """
        for run_dir, version in zip(self.dirs, self.versions, strict=True):
            _set_limits(version, run_dir, self, memory_bytes, processes)
            if cpu_cores is not None and self.cpu is None:
                _set_cpu(version, run_dir, self, cpu_cores)

    def to_json(self) -> dict[str, object]:
        return {
            "dirs": self.dirs,
            "memory": self.memory,
            "pids": self.pids,
            "cpu": self.cpu,
            "kill": self.kill_file or self.freezer or ("signal loop" if self.dirs else None),
            "problems": self.problems,
        }


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def create_run(
    plugin_id: str,
    pid: int,
    memory_bytes: int | None,
    processes: int | None,
    cpu_cores: float | None = None,
) -> RunCgroup:
    """Create the run's cgroups and set the limits; problems are recorded, not raised."""
    run = prepare_run(plugin_id, pid, memory_bytes is not None, processes is not None,
                      cpu=cpu_cores is not None)  # fmt: skip
    run.set_limits(memory_bytes, processes, cpu_cores)
    return run


#: cpu.max / cpu.cfs_period_us: the bandwidth period, in microseconds.
CPU_PERIOD = 100_000


def _set_cpu(version: int, run_dir: str, run: RunCgroup, cores: float) -> None:
    """CPU bandwidth for everything in the run: `cores` x the period per period."""
    quota = max(1000, round(cores * CPU_PERIOD))
    try:  # a hierarchy without the controller lacks the file: ENOENT (no stat first)
        if version == 2:
            _write(os.path.join(run_dir, "cpu.max"), f"{quota} {CPU_PERIOD}")
            run.cpu = os.path.join(run_dir, "cpu.max")
        elif version == 1:
            _write(os.path.join(run_dir, "cpu.cfs_period_us"), str(CPU_PERIOD))
            _write(os.path.join(run_dir, "cpu.cfs_quota_us"), str(quota))
            run.cpu = os.path.join(run_dir, "cpu.cfs_quota_us")
    except FileNotFoundError:
        pass
    except OSError as exc:
        run.problems.append(f"{run_dir}: cpu bandwidth: {exc.strerror}")


def prepare_run(
    group: str, pid: int, memory: bool, pids: bool, prune: bool = True, cpu: bool = False
) -> RunCgroup:
    """Create ``<group>/run-<pid>`` in each hierarchy needed for these controllers.

    `group` is the plugin id, or ``POOL`` for a server's spare whose plugin is not
    known yet. Nothing is limited until ``set_limits``; nothing is joined. `prune`
    first removes the group's dead runs; spares must not (see ``prune_pool``).
    """
    run = RunCgroup()
    name = f"run-{pid}"
    have: set[str] = set()
    # v2 first (cgroup.kill and, on a pure v2 machine, every controller), then v1 for
    # whatever v2 does not provide.
    for h in sorted(hierarchies(), key=lambda h: -h.version):
        if h.version == 1 and not (
            (memory and "memory" in h.controllers and "memory" not in have)
            or (pids and "pids" in h.controllers and "pids" not in have)
            or (cpu and "cpu" in h.controllers and "cpu" not in have)
            or ("freezer" in h.controllers and not have & {"kill", "freezer"})
        ):
            continue
        base = h.base_dirs()[0]
        run_dir = os.path.join(base, group, name)
        try:
            _make_run_dir(h, base, group, run_dir, prune)
        except OSError as exc:
            run.problems.append(f"{h.mount}: cannot create {run_dir}: {exc.strerror}")
            continue
        run.dirs.append(run_dir)
        run.origins.append(os.path.normpath(h.mount + h.own_path))
        run.versions.append(h.version)
        have |= {c for c in ("memory", "pids", "cpu") if c in h.controllers}
        if h.version == 2 and os.path.exists(os.path.join(run_dir, "cgroup.kill")):
            run.kill_file = os.path.join(run_dir, "cgroup.kill")
            have.add("kill")
        if h.version == 1 and "freezer" in h.controllers and run.freezer is None:
            run.freezer = os.path.join(run_dir, "freezer.state")
            have.add("freezer")
    if not run.dirs:
        run.problems.append("no writable cgroup hierarchy")
    return run


def _make_run_dir(h: Hierarchy, base: str, plugin_id: str, run_dir: str, prune: bool) -> None:
    if prune:
        _prune(os.path.join(base, plugin_id))
    # A run ending at the same time removes the plugin's dir, and the base, when they
    # become empty (_rmdir_run): make them again.
    for attempt in range(3):
        try:
            for d in (base, os.path.join(base, plugin_id)):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(d, 0o755)
                if h.version == 2:
                    _enable_controllers(h, d)
            if os.path.isdir(run_dir):
                # Leftovers of an earlier run whose pid we now have: that run is over.
                kill_dirs([run_dir], grace=0.0)
            os.mkdir(run_dir, 0o755)
            return
        except FileNotFoundError:
            if attempt == 2:
                raise


def _enable_controllers(h: Hierarchy, d: str) -> None:
    """Controllers must be enabled in every ancestor's subtree_control (v2)."""
    wanted = " ".join(f"+{c}" for c in ("memory", "pids", "cpu") if c in h.controllers)
    if not wanted:
        return
    for parent in (os.path.dirname(d), d):
        try:
            _write(os.path.join(parent, "cgroup.subtree_control"), wanted)
        except OSError as exc:
            _log.debug(__name__, "enable %s in %s: %s", wanted, parent, exc)


def _run_is_live(name: str) -> bool:
    """Whether the process a run dir is named after still exists and still is that run."""
    pid = name.removeprefix("run-")
    try:
        with open(f"/proc/{pid}/cgroup", encoding="ascii") as fh:
            return any(line.rstrip("\n").endswith(f"/{name}") for line in fh)
    except OSError:
        return False


def _prune(plugin_dir: str, only_gone: bool = False) -> None:
    """Remove the plugin's runs whose main process is gone, killing what they left behind.

    A crashed plugin's escaped grandchildren must not outlive it forever; a run whose
    main process lives (another instance, run in the foreground) is left alone. With
    `only_gone`, a run counts as dead only once no process has its pid at all: a spare
    has made its dirs but not yet moved in, and must not lose them to a neighbour.
    """
    try:
        names = [n for n in os.listdir(plugin_dir) if n.startswith("run-")]
    except OSError:
        return
    for name in names:
        if _run_is_live(name) or (only_gone and _pid_exists(name.removeprefix("run-"))):
            continue
        kill_dirs([os.path.join(plugin_dir, name)], grace=0.0)


def _pid_exists(pid: str) -> bool:
    return pid.isdigit() and os.path.exists(f"/proc/{pid}")


def prune_pool() -> None:
    """Remove the runs of servers that are gone (a server killed by SIGKILL leaves its
    spares' empty cgroups, and maybe a run's escaped processes): called as a server starts."""
    for h in hierarchies():
        _prune(os.path.join(h.base_dirs()[0], POOL), only_gone=True)


def _set_limits(
    version: int, run_dir: str, run: RunCgroup, memory_bytes: int | None, processes: int | None
) -> None:
    def setting(fname: str, value: str) -> bool:
        path = os.path.join(run_dir, fname)
        try:  # a file this hierarchy lacks is ENOENT (no stat first: a start's hot path)
            _write(path, value)
        except FileNotFoundError:
            return False
        except OSError as exc:
            run.problems.append(f"{path}: {exc.strerror}")
            return False
        return True

    if memory_bytes is not None and run.memory is None:
        if version == 2 and setting("memory.max", str(memory_bytes)):
            setting("memory.swap.max", "0")
            run.memory = os.path.join(run_dir, "memory.max")
        elif version == 1 and setting("memory.limit_in_bytes", str(memory_bytes)):
            setting("memory.memsw.limit_in_bytes", str(memory_bytes))
            run.memory = os.path.join(run_dir, "memory.limit_in_bytes")
    if processes is not None and run.pids is None and setting("pids.max", str(processes)):
        run.pids = os.path.join(run_dir, "pids.max")


def _procs(d: str) -> list[int]:
    # os-level read: a served run's end reads one per hierarchy before its client hears
    # `exited` (the io stack costs ~4x as much as the read itself)
    try:
        fd = os.open(os.path.join(d, "cgroup.procs"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        data = b""
        while chunk := os.read(fd, 1 << 16):
            data += chunk
        return [int(x) for x in data.split()]
    except (OSError, ValueError):
        return []
    finally:
        os.close(fd)


def find_run_dirs(pid: int) -> list[str]:
    """The cgroup directories of the run started as `pid` (alive or not).

    Looks at the process itself first, then searches each hierarchy a few levels
    deep (v1 runs sit under the launcher's own cgroup, which the caller may not share).
    """
    import glob  # only the kill path needs it

    name = f"run-{pid}"
    found: set[str] = set()
    hiers = hierarchies()
    try:
        with open(f"/proc/{pid}/cgroup", encoding="ascii") as fh:
            for line in fh:
                _, ctrl, path = line.rstrip("\n").split(":", 2)
                if f"/{BASE}/" not in path or not path.endswith(f"/{name}"):
                    continue
                for h in hiers:
                    if (ctrl == "" and h.version == 2) or (
                        h.version == 1 and set(ctrl.split(",")) & h.controllers
                    ):
                        found.add(os.path.normpath(h.mount + path))
    except (OSError, ValueError, IndexError):
        pass
    for h in hiers:
        for depth in range(4):
            pattern = os.path.join(glob.escape(h.mount), *["*"] * depth, BASE, "*", name)
            found.update(glob.glob(pattern))
    return sorted(d for d in found if os.path.isdir(d))


def members(dirs: list[str]) -> list[int]:
    """Every process still in the given cgroup directories."""
    return sorted({p for d in dirs for p in _procs(d)})


def kill_dirs(dirs: list[str], grace: float = 5.0, remove: bool = True) -> list[int]:
    """TERM every process of the run, wait up to `grace`, KILL the rest, remove the dirs.

    Returns the pids that are still there afterwards (empty on success). With
    `remove` false the (empty) dirs stay for ``remove_dirs`` later: removing a cgroup
    costs the kernel about a millisecond, which a caller may not want to wait for.
    """
    alive = members(dirs)  # read once up front: a served run's end usually finds none
    # (a dir that is gone reads as empty; removing it again is a no-op)
    if alive:
        dirs = [d for d in dirs if os.path.isdir(d)]
    if grace > 0 and alive:
        for p in alive:
            _signal(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        pause = _Backoff(0.05)
        while (alive := members(dirs)) and time.monotonic() < deadline:
            pause()
    if not alive:
        if remove:
            remove_dirs(dirs)
        return []
    deadline = time.monotonic() + 10.0
    pause = _Backoff(0.02)
    while members(dirs) and time.monotonic() < deadline:
        kill_files = [os.path.join(d, "cgroup.kill") for d in dirs]
        kill_files = [k for k in kill_files if os.path.exists(k)]
        if kill_files:
            for k in kill_files:
                try:
                    _write(k, "1")
                except OSError as exc:
                    _log.debug(__name__, "%s: %s", k, exc)
        else:
            _freeze_and_kill(dirs)
        pause()
    left = members(dirs)
    if remove:
        remove_dirs(dirs)
    return left


def remove_dirs(dirs: list[str]) -> None:
    """Remove a run's (empty) cgroup dirs, and its group's dir when no other run is left."""
    for d in dirs:
        _rmdir_run(d)


class _Backoff:
    """Sleep 1 ms, then twice as long each call, up to `longest`: a dying process is
    usually gone within a millisecond, and a caller waits for the whole loop."""

    def __init__(self, longest: float) -> None:
        self.next = 0.001
        self.longest = longest

    def __call__(self) -> None:
        time.sleep(self.next)
        self.next = min(self.next * 2, self.longest)


def _freeze_and_kill(dirs: list[str]) -> None:
    """Without cgroup.kill: freeze (v1 freezer) so nothing forks, KILL each member, thaw."""
    freezers = [os.path.join(d, "freezer.state") for d in dirs]
    freezers = [f for f in freezers if os.path.exists(f)]
    for f in freezers:
        try:
            _write(f, "FROZEN")
        except OSError as exc:
            _log.debug(__name__, "%s: %s", f, exc)
    for p in members(dirs):
        _signal(p, signal.SIGKILL)
    for f in freezers:
        try:
            _write(f, "THAWED")
        except OSError as exc:
            _log.debug(__name__, "%s: %s", f, exc)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _rmdir_run(run_dir: str) -> None:
    # A cgroup cannot be removed while a (dying) task is still counted: retry briefly.
    for _ in range(100):
        try:
            os.rmdir(run_dir)
            break
        except FileNotFoundError:
            break
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                _log.debug(__name__, "rmdir %s: %s", run_dir, exc)
                return
            time.sleep(0.02)
    group = os.path.dirname(run_dir)
    with contextlib.suppress(OSError):  # the plugin's dir, when no other run uses it
        os.rmdir(group)
        # ... and aurora-sandbox itself, when no plugin is left: no empty directory
        # stays behind in the caller's cgroup (v1) or at the root (v2).
        if os.path.basename(os.path.dirname(group)) == BASE:
            os.rmdir(os.path.dirname(group))


def leave(run: RunCgroup, pid: int) -> None:
    """Move `pid` back to the parent cgroups and remove the run's dirs (used on refusal)."""
    for d, origin in zip(run.dirs, run.origins, strict=True):
        try:
            _write(os.path.join(origin, "cgroup.procs"), str(pid))
        except OSError as exc:
            _log.debug(__name__, "leave %s: %s", d, exc)
        _rmdir_run(d)
