#!/usr/bin/env python3
"""pack03 sandbox command line: run a command confined by a policy, probe, kill a run's tree.

    launch.py --policy POLICY.json [--report FILE] [--backend auto|native|bwrap]
              [--protocol-fd N] -- ARGV...
    launch.py --probe [--json]
    launch.py --check [--json]
    launch.py --kill-tree (--pid PID | --report FILE) [--grace SECONDS] [--json]
    launch.py --serve SOCKET --data-root DIR --packages-root DIR --report-root DIR
              [--sdk-root DIR] [--spares N] [--grace SECONDS]

Exit codes (like env(1)): 125 the sandbox refused or failed to start the command,
126 the command cannot be executed, 127 it was not found; otherwise the command's
own status. --probe exits 0 when the always-on layers work, 1 when not; --check
exits 0 when the launcher can run on this host at all, 1 when not.
--kill-tree exits 0 when no process of the run is left, 1 when some are.
--serve runs the fork server (sandbox/server.py) until SIGTERM/SIGINT, then exits 0.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # Run as a script: import the package from the pack root, never from the script's
    # own directory (its module names must not shadow anything).
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

import argparse
import json

from sandbox.errors import (
    EXIT_CANNOT_EXECUTE,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    exit_status,
)

TYPE_CHECKING = False  # typing costs start-up time; mypy reads the block anyway
if TYPE_CHECKING:
    from typing import NoReturn


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse would exit 2: a plugin's status
        raise _UsageError(message)


class _Formatter(argparse.HelpFormatter):
    # An explicit width keeps argparse from importing shutil at start-up.
    def __init__(self, prog: str) -> None:
        columns = os.environ.get("COLUMNS", "")
        super().__init__(prog, width=int(columns) - 2 if columns.isdigit() else 98)


def _parser() -> _Parser:
    p = _Parser(
        prog="launch.py",
        formatter_class=_Formatter,
        description="Run ARGV confined by a sandbox policy (see pack03 README).",
        epilog="Exit: 125 refused/launcher error, 126 cannot execute, 127 not found, "
        "else the command's status. Python plugins: pass `python -I script.py`.",
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--policy", metavar="FILE", help="policy JSON (pack03 contract)")
    mode.add_argument("--probe", action="store_true", help="report which layers this host has")
    mode.add_argument(
        "--check", action="store_true", help="check the launcher can run here (writes nothing)"
    )
    mode.add_argument(
        "--kill-tree",
        action="store_true",
        help="kill every process of a run (its cgroup), given --pid or --report",
    )
    mode.add_argument(
        "--serve",
        metavar="SOCKET",
        help="fork server: start runs requested on this Unix socket (pack03 README)",
    )
    p.add_argument("--report", metavar="FILE", help="write the layers applied to this run")
    p.add_argument(
        "--backend",
        choices=("auto", "native", "bwrap"),
        default="auto",
        help="native: namespaces+Landlock+seccomp in-process; bwrap: bubblewrap; "
        "auto: native when Landlock exists (default)",
    )
    p.add_argument(
        "--protocol-fd",
        type=int,
        metavar="N",
        help="--policy: inherited fd N (a connected AF_UNIX stream socket) becomes the "
        "plugin's fd 3, AURORA_PLUGIN_PROTOCOL_FD=3",
    )
    p.add_argument(
        "--sdk-root",
        metavar="DIR",
        help="--serve: the only policy.sdk_dir a request may name (default: none may)",
    )
    p.add_argument("--pid", type=int, help="--kill-tree: the pid the run was started as")
    p.add_argument(
        "--grace",
        type=float,
        default=5.0,
        help="--kill-tree, and --serve when it stops: seconds between TERM and KILL",
    )
    p.add_argument(
        "--spares",
        type=int,
        default=1,
        help="--serve: children kept ready in their own cgroups (default 1)",
    )
    for flag, what in (
        ("--data-root", "every policy.data_dir lies strictly beneath it"),
        ("--packages-root", "every policy.read_paths[i] lies beneath it"),
        ("--report-root", "every request's report lies beneath it"),
    ):
        p.add_argument(flag, metavar="DIR", help=f"--serve (required): {what}")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    return p


def _err(message: str) -> None:
    print(f"sandbox: {message}", file=sys.stderr)


def _cmd_run(args: argparse.Namespace, command: list[str]) -> int:
    from sandbox.confine import apply_and_exec
    from sandbox.policy import load_policy

    if not command:
        raise _UsageError("no command: give it after --, e.g. -- python3 -I main.py")
    conn = None
    if args.protocol_fd is not None:
        conn = _protocol_fd(args.protocol_fd)
    policy = load_policy(args.policy)
    apply_and_exec(policy, command, backend=args.backend, report=args.report, protocol_fd=conn)


def _protocol_fd(fd: int) -> int:
    """The inherited protocol connection, checked and parked high (sandbox.protocol)."""
    from sandbox import protocol

    where = f"--protocol-fd {fd}"
    if fd < 3:
        raise _UsageError(f"{where}: 0-2 are the plugin's stdio; pass the socket as 3 or above")
    problem = protocol.problem(fd, where)
    if problem:
        raise _UsageError(problem)
    return protocol.take(fd)


def _cmd_probe(args: argparse.Namespace) -> int:
    from sandbox.probe import format_text, probe

    result = probe()
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(format_text(result), file=sys.stderr)
    return EXIT_OK if result["always_ok"] else EXIT_FAILED


def _cmd_check(args: argparse.Namespace) -> int:
    import platform

    problems: list[str] = []
    if sys.version_info < (3, 11):  # noqa: UP036 - $PYTHON may be any interpreter
        problems.append(f"python {platform.python_version()}: 3.11 or newer needed")
    if platform.system() != "Linux":
        problems.append(f"{platform.system()}: the sandbox needs Linux")
    try:
        from sandbox import _libc, bwrap, confine, probe, seccomp  # noqa: F401

        _libc.libc()
    except (ImportError, OSError) as exc:
        problems.append(f"cannot load the sandbox library: {exc}")
    result = {"ok": not problems, "problems": problems, "python": sys.executable}
    if args.json:
        print(json.dumps(result, sort_keys=True))
    for problem in problems:
        _err(problem)
    if not problems and not args.json:
        _err(f"ok: launcher runs with {sys.executable} (layers: launch.py --probe)")
    return EXIT_OK if not problems else EXIT_FAILED


def _cmd_kill_tree(args: argparse.Namespace) -> int:
    from sandbox import cgroups

    if args.pid is None and args.report is None:
        raise _UsageError("--kill-tree needs --pid PID or --report FILE")
    dirs: list[str] = []
    if args.report is not None:
        try:
            with open(args.report, encoding="utf-8") as fh:
                doc = json.load(fh)
            dirs = list((doc.get("cgroup") or {}).get("dirs") or [])
            args.pid = args.pid if args.pid is not None else int(doc["pid"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _UsageError(f"--report {args.report}: not a sandbox report ({exc})") from None
    dirs = sorted(set(dirs) | set(cgroups.find_run_dirs(args.pid)))
    before = cgroups.members(dirs)
    left = cgroups.kill_dirs(dirs, grace=args.grace)
    result = {"pid": args.pid, "cgroups": dirs, "killed": before, "left": left}
    if args.json:
        print(json.dumps(result, sort_keys=True))
    if not dirs:
        _err(f"no cgroup for run {args.pid}: nothing to kill")
    elif left:
        _err(f"run {args.pid}: still alive after KILL: {left}")
    return EXIT_FAILED if left else EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from sandbox.layout import Layout, check_root, check_socket_dir
    from sandbox.server import Server

    if args.spares < 0 or args.grace < 0:
        raise _UsageError("--spares and --grace must not be negative")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.serve))):
        raise _UsageError(f"--serve {args.serve}: its directory does not exist")
    roots: list[str] = []
    problems: list[str] = []
    for flag in ("--data-root", "--packages-root", "--report-root"):
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            problems.append(f"--serve needs {flag} DIR")
            continue
        root, problem = check_root(flag, value)
        roots.append(root)
        if problem:
            problems.append(problem)
    sdk_root = None
    if args.sdk_root is not None:
        sdk_root, problem = check_root("--sdk-root", args.sdk_root)
        if problem:
            problems.append(problem)
    socket_problem = check_socket_dir(args.serve)
    if socket_problem:
        problems.append(socket_problem)
    if problems:
        raise _UsageError("; ".join(problems))
    logging.basicConfig(level=logging.INFO, format="sandbox-server: %(message)s")
    layout = Layout(roots[0], roots[1], roots[2], sdk_root=sdk_root)
    Server(args.serve, layout, spares=args.spares, grace=args.grace).serve()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one mode; every failure becomes an exit code."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in args_in:
        i = args_in.index("--")
        args_in, command = args_in[:i], args_in[i + 1 :]
    try:
        args = _parser().parse_args(args_in)
        if args.probe:
            return _cmd_probe(args)
        if args.check:
            return _cmd_check(args)
        if args.kill_tree:
            return _cmd_kill_tree(args)
        if args.serve is not None:
            return _cmd_serve(args)
        return _cmd_run(args, command)
    except _UsageError as exc:
        _err(f"usage: {exc} (see --help)")
        return EXIT_REFUSED
    except Exception as exc:
        status = exit_status(exc)
        if status is None:
            raise
        _err(status[1])
        return status[0]


__all__ = [
    "EXIT_CANNOT_EXECUTE",
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_REFUSED",
    "main",
]

if __name__ == "__main__":
    raise SystemExit(main())
