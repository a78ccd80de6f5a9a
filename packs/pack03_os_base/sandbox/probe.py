"""What this host can enforce: each layer tried for real, in throw-away child processes."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
from collections.abc import Callable
from typing import Any

from sandbox import _libc as libc
from sandbox import cgroups, landlock, privileges, seccomp

PROBE_SCHEMA = "aurora-sandbox-probe-v1"
ALWAYS = ("session", "rlimits", "environment", "no-new-privs", "file-descriptors")


def _in_child(test: Callable[[], str]) -> tuple[bool, str]:
    """Run `test` in a forked child; (True, detail) when it returned, (False, error) if not."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        os.close(r)
        try:
            msg = {"ok": True, "detail": test()}
        except BaseException as exc:
            msg = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
        os.write(w, json.dumps(msg).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    try:
        msg = json.loads(data)
    except ValueError:
        return False, "probe child died"
    return bool(msg["ok"]), str(msg["detail"])


def _session() -> str:
    os.setsid()
    return "setsid works"


def _rlimits() -> str:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    return "RLIMIT_CPU, AS, NOFILE, FSIZE, CORE" + (
        ", NPROC" if os.getuid() != 0 else " (NPROC does not bind root: cgroup pids instead)"
    )


def _nnp() -> str:
    privileges.set_no_new_privs()
    return "PR_SET_NO_NEW_PRIVS"


def _caps() -> str:
    if os.geteuid() != 0:
        return f"uid {os.geteuid()}: no capabilities to drop"
    privileges.drop_all_capabilities()
    left = privileges.capability_sets()
    if any(left.get(k) for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb")):
        raise OSError(f"capabilities left: {left}")
    return "root runs the plugin with no capabilities (bounding set emptied)"


def _netns() -> str:
    libc.unshare(libc.CLONE_NEWNET)
    return "unshare(CLONE_NEWNET): only a loopback interface, down"


def _ipcns() -> str:
    libc.unshare(libc.CLONE_NEWIPC)
    return "unshare(CLONE_NEWIPC)"


def _landlock() -> str:
    abi = landlock.abi_version()
    if abi <= 0:
        raise OSError("kernel offers no Landlock")
    privileges.set_no_new_privs()
    rs = landlock.Ruleset(abi=abi, restrict_tcp=True, scope_signals=True)
    rs.allow("/usr", landlock.READ)
    rs.restrict_self()
    try:
        open("/etc/hostname", "rb").close()
    except PermissionError:
        return f"ABI {abi}"
    raise OSError("ruleset applied but reads outside it still work")


def _seccomp() -> str:
    if seccomp.library() is None:
        raise OSError("libseccomp.so.2 not found (no binding for seccomp)")
    privileges.set_no_new_privs()
    flt = seccomp.Filter()
    flt.deny_sockets()
    flt.load()
    import socket

    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
    except PermissionError:
        return f"libseccomp {seccomp.version()} (ctypes): socket() can be denied"
    raise OSError("filter loaded but an AF_INET socket was still created")


def _cgroup() -> tuple[bool, str]:
    run = cgroups.create_run("probe", os.getpid(), 64 * 1024 * 1024, 16)
    try:
        if not run.dirs:
            return False, "; ".join(run.problems)
        have = [
            "memory" if run.memory else "no memory controller",
            "pids" if run.pids else "no pids controller",
            "cgroup.kill" if run.kill_file else "freezer" if run.freezer else "signal loop",
        ]
        return True, ", ".join(have) + f" (under {os.path.dirname(os.path.dirname(run.dirs[0]))})"
    finally:
        cgroups.kill_dirs(run.dirs, grace=0.0)


def _bwrap() -> tuple[bool, str]:
    from sandbox import bwrap

    path = bwrap.find()
    if path is None:
        return False, "bwrap not installed (apt-get install bubblewrap)"
    try:
        version = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
        trial = subprocess.run(
            [path, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-net",
             "--unshare-pid", "--cap-drop", "ALL", "--", "/bin/true"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{path}: {exc}"
    if trial.returncode != 0:
        return False, f"{path} ({version}) fails here: {trial.stderr.strip()[:200]}"
    return True, f"{path} ({version}), always with --cap-drop ALL"


def probe() -> dict[str, Any]:
    """Try every layer; report which are available and what each capability can rely on."""
    layers: dict[str, dict[str, Any]] = {}

    def put(name: str, result: tuple[bool, str]) -> None:
        layers[name] = {"available": result[0], "detail": result[1]}

    put("session", _in_child(_session))
    put("rlimits", _in_child(_rlimits))
    put("environment", (True, "cleared but PATH, LANG, LC_ALL, TZ, HOME, TMPDIR"))
    put("file-descriptors", (True, "every fd above 2 closed before exec"))
    put("no-new-privs", _in_child(_nnp))
    put("capabilities", _in_child(_caps))
    put("network-namespace", _in_child(_netns))
    put("ipc-namespace", _in_child(_ipcns))
    put("landlock", _in_child(_landlock))
    abi = landlock.abi_version()
    put(
        "landlock-network",
        (
            abi >= 4,
            "TCP bind/connect denied without network"
            if abi >= 4
            else f"ABI {abi}: TCP rules need ABI 4",
        ),
    )
    put(
        "landlock-scope",
        (
            abi >= 6,
            "signals to processes outside the sandbox denied"
            if abi >= 6
            else f"ABI {abi}: signal scoping needs ABI 6",
        ),
    )
    put("seccomp", _in_child(_seccomp))
    put("cgroup", _cgroup())
    put("bwrap", _bwrap())
    ok = {name: bool(v["available"]) for name, v in layers.items()}
    native = {
        "network": [n for n in ("network-namespace", "seccomp") if ok[n]],
        "fs-read": ["landlock"] if ok["landlock"] else [],
        "fs-write": ["landlock"] if ok["landlock"] else [],
        "gpu": ["landlock"] if ok["landlock"] else [],
        "io": ["landlock"] if ok["landlock"] else [],
        "processes": ["cgroup"] if (ok["cgroup"] and "pids" in layers["cgroup"]["detail"])
        else ["rlimit-nproc"] if os.getuid() != 0 else [],
        "tree-kill": ["cgroup"] if ok["cgroup"] else [],
        "signals": ["landlock-scope"] if ok["landlock-scope"] else [],
    }  # fmt: skip
    bw = {k: (["bwrap"] if ok["bwrap"] else []) + [x for x in v if x == "seccomp"]
          for k, v in native.items()}  # fmt: skip
    bw["processes"], bw["tree-kill"] = native["processes"], native["tree-kill"]
    always_ok = all(ok[name] for name in ALWAYS)
    return {
        "schema": PROBE_SCHEMA,
        "kernel": platform.release(),
        "euid": os.geteuid(),
        "always_ok": always_ok,
        "backend_auto": "native" if ok["landlock"] or not ok["bwrap"] else "bwrap",
        "layers": layers,
        "enforceable": {"native": native, "bwrap": bw},
    }


def format_text(result: dict[str, Any]) -> str:
    """The probe as a few lines for a person."""
    lines = [f"sandbox probe (kernel {result['kernel']}, euid {result['euid']}):"]
    for name, layer in result["layers"].items():
        mark = "yes" if layer["available"] else "NO "
        lines.append(f"  {mark}  {name:18} {layer['detail']}")
    lines.append(f"  default backend: {result['backend_auto']}")
    for backend, table in result["enforceable"].items():
        missing = [k for k, v in table.items() if not v]
        lines.append(
            f"  {backend}: every denial enforceable"
            if not missing
            else f"  {backend}: NOT enforceable here: {', '.join(missing)}"
        )
    lines.append("  always-layers: " + ("ok" if result["always_ok"] else "FAILED"))
    return "\n".join(lines)
