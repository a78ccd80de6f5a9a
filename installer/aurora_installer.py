#!/usr/bin/env python3
"""aurora_installer: validate, stage, install and run Aurora packs (the operator's CLI)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

if __package__ in (None, ""):
    # Run as a script (python3 installer/aurora_installer.py): the library sits beside it.
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from aurora import (
    ApprovalError,
    ApprovalRequest,
    AuroraError,
    ExitCode,
    HealthPolicy,
    Installer,
    OperationFailed,
    Options,
    UsageError,
    exit_code_for,
)
from aurora.home import check_home, default_home, default_packs_dir
from aurora_common import cli as conventions  # importable once aurora is (aurora/_common.py)
from aurora_common.errors import InputRefused

log = logging.getLogger("aurora")

DEFAULT_WAIT = 5.0
DEFAULT_SCRIPT_TIMEOUT = 300.0
DEFAULT_STOP_TIMEOUT = 60.0


class _Parser(argparse.ArgumentParser):
    """ArgumentParser that raises UsageError instead of exiting on a bad argument."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}\n{self.format_usage().strip()}")


def _positive(text: str) -> float:
    """Seconds, zero or more (a finite number: `nan` or `inf` would wait forever)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number of seconds: {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _timeout(text: str) -> float:
    """Seconds a script may run: more than zero."""
    value = _positive(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _add_common(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options every command takes. They are accepted before the command too
    (`--json list`); after it (`list --json`) they win, so the subcommand's copies
    set nothing unless given (SUPPRESS) and the top-level parser holds the defaults."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--home",
        type=str,
        metavar="DIR",
        default=default(None),
        help="installer home (default: $AURORA_HOME, else <repo>/.aurora)",
    )
    parser.add_argument(
        "--packs-dir",
        type=Path,
        metavar="DIR",
        default=default(None),
        help="where packs are found (default: <repo>/packs)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print one JSON document on stdout (messages go to stderr)",
    )
    parser.add_argument(
        "--wait",
        type=_positive,
        default=default(DEFAULT_WAIT),
        metavar="SECONDS",
        help=f"wait this long for another installer's lock (default {DEFAULT_WAIT:g})",
    )
    parser.add_argument(
        "--script-timeout",
        type=_timeout,
        default=default(DEFAULT_SCRIPT_TIMEOUT),
        metavar="SECONDS",
        help="kill a lifecycle script (and its process "
        f"group) after this long (default {DEFAULT_SCRIPT_TIMEOUT:g})",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default(False),
        help="more messages on stderr",
    )


_EXAMPLES = {
    "list": "",
    "stage": "--pack pack05_plugin_api --require-hashes",
    "install": "--pack pack05_plugin_api --with-deps --approve",
    "uninstall": "--pack pack05_plugin_api --stop --purge",
    "status": "--json",
    "health": "--pack pack05_plugin_api --watch --count 10",
}


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    _add_common(common, defaults=False)
    prog = conventions.prog_name(PROG)
    parser = _Parser(
        prog=prog,
        description="Validate, stage, install and run Aurora packs. Options go before or "
        "after the command; `COMMAND --help` lists its own.",
        epilog=conventions.epilog(
            [f"{prog} list", f"{prog} install --pack pack05_plugin_api --with-deps --approve"]
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(parser, defaults=True)
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    def command(name: str, help_text: str, pack: str = "required") -> argparse.ArgumentParser:
        args = _EXAMPLES.get(name, "--pack pack05_plugin_api")
        p = sub.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=help_text,
            epilog=conventions.epilog([f"{prog} {name} {args}".rstrip()]),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if pack == "required":
            p.add_argument("--pack", required=True, metavar="ID", help="the pack id")
        elif pack == "optional":
            p.add_argument("--pack", metavar="ID", help="one pack (default: every pack)")
        return p

    command("list", "list the packs found and installed, with their state", pack="none")
    command("validate", "check a pack's manifest and structure; writes nothing")
    p = command("stage", "validate and copy a pack into staging/<id>/<version>/")
    p.add_argument(
        "--require-hashes", action="store_true", help="every artifact must have a pinned sha256"
    )
    command("seal", "write every artifact's sha256 into the pack's manifest.yaml")
    command("dry-run", "stage if needed, plan the dependencies, run install.sh --dry-run")
    p = command("install", "install a pack (staged first if needed) after operator approval")
    p.add_argument(
        "--with-deps",
        action="store_true",
        help="install missing dependencies first, in dependency order",
    )
    p.add_argument(
        "--approve",
        action="store_true",
        help="approve without a prompt (needed when there is no terminal)",
    )
    p = command("uninstall", "remove an installed pack (its data stays unless --purge)")
    p.add_argument("--force", action="store_true", help="even if installed packs depend on it")
    p.add_argument("--purge", action="store_true", help="also delete data/<id> and run/<id>")
    p.add_argument("--stop", action="store_true", help="stop it first if it is running")
    p.add_argument(
        "--timeout",
        type=_timeout,
        default=DEFAULT_STOP_TIMEOUT,
        metavar="SECONDS",
        help=f"with --stop: kill stop.sh after this long (default {DEFAULT_STOP_TIMEOUT:g})",
    )
    command("verify", "re-hash an installed pack against its recorded digest")
    command("status", "state, version, digest, approval, last result and runtime", pack="optional")
    defaults = HealthPolicy()

    def health_options(p: argparse.ArgumentParser, *, watch: bool) -> None:
        when = "with --watch: " if watch else ""
        p.add_argument(
            "--interval",
            type=_positive,
            default=defaults.interval,
            metavar="SECONDS",
            help=f"{when}between checks (default {defaults.interval:g})",
        )
        p.add_argument(
            "--check-timeout",
            type=_timeout,
            default=defaults.timeout,
            metavar="SECONDS",
            help=f"a check is killed after this long (default {defaults.timeout:g})",
        )
        p.add_argument(
            "--retries",
            type=_count,
            default=defaults.retries,
            metavar="N",
            help=f"consecutive failures that make the pack unhealthy (default {defaults.retries})",
        )

    p = command("start", "run start.sh, then poll health_check.sh until healthy")
    health_options(p, watch=False)
    p.add_argument(
        "--start-period",
        type=_positive,
        default=defaults.start_period,
        metavar="SECONDS",
        help=f"failures in this window do not count (default {defaults.start_period:g})",
    )
    p = command("stop", "run stop.sh and record the result")
    p.add_argument(
        "--timeout",
        type=_timeout,
        default=DEFAULT_STOP_TIMEOUT,
        metavar="SECONDS",
        help=f"kill stop.sh after this long (default {DEFAULT_STOP_TIMEOUT:g})",
    )
    p = command("health", "run health_check.sh once (or keep watching)")
    p.epilog = (
        "Exit 0 if the check passes, 1 if not. With --watch: 0 if the pack is healthy "
        "after the last check, 1 if not (starting or unhealthy), 130 on Ctrl-C.\n\n"
        + (p.epilog or "")
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="keep checking; print the first state and each change",
    )
    p.add_argument("--count", type=_count, metavar="N", help="with --watch: stop after N checks")
    health_options(p, watch=True)
    return parser


# -- output ------------------------------------------------------------------


def _emit(text: str, stream: TextIO, end: str = "\n") -> OSError | None:
    """Write one message; a stream that cannot take it stops nothing (the operation
    goes on, its scripts' output is in logs/): the error is returned for the caller to
    judge (see _Output.lost)."""
    return conventions.emit(text, stream, end=end, warn=False)


# Commands whose product is what they print (a lost output is their failure);
# every other command changes state, and its exit status stays its own.
REPORTS = frozenset({"list", "validate", "verify", "status", "health"})


class _Output:
    """Human text (stdout) or one JSON document (stdout) with messages on stderr."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.progress = conventions.Progress(as_json=True)  # main() sets the real one
        self.command: str | None = None  # once the arguments are parsed
        # Why stdout could not be written (a reader that went away does not count).
        self.lost: OSError | None = None

    def emit(self, text: str, stream: TextIO, end: str = "\n") -> None:
        error = _emit(text, stream, end)
        if error is not None and stream is sys.stdout and not isinstance(error, BrokenPipeError):
            self.lost = self.lost or error

    def emit_json(self, doc: dict[str, Any]) -> None:
        self.emit(json.dumps(doc, indent=2, sort_keys=True), sys.stdout)

    def text(self, line: str = "") -> None:
        self.emit(line, sys.stderr if self.as_json else sys.stdout)

    def script_line(self, line: str) -> None:
        self.text(f"  | {line}")

    def settle(self, code: int) -> int:
        """The exit status once the output is written: a report whose output was lost
        failed; a command that changed state keeps its own status (the change stands)."""
        if self.lost is None:
            return code
        why, command = self.lost.strerror or str(self.lost), self.command
        if command in REPORTS and code == ExitCode.OK:
            line = f"could not write the {command} output to stdout: {why}"
            _emit(conventions.error_line(conventions.prog_name(PROG), line), sys.stderr)
            return int(ExitCode.FAILED)
        what = command or "command"
        verdict = (
            f"the {what} took effect; only its output was lost"
            if code == ExitCode.OK
            else f"the exit status ({code}) is the {what}'s own"
        )
        prog = conventions.prog_name(PROG)
        _emit(f"{prog}: warning: cannot write to stdout: {why}; {verdict}", sys.stderr)
        return code


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _show_plan(out: _Output, result: dict[str, Any]) -> None:
    if result["staged_now"]:
        out.text(f"staged {result['pack']} {result['version']} first")
    plan = result["plan"]
    out.text("plan (install --with-deps would do, in order):")
    for i, step in enumerate(plan["steps"], 1):
        out.text(f"  {i}. {step['action']} {step['pack']} {step['version']}  ({step['reason']})")
    for pack_id in plan["satisfied"]:
        out.text(f"  - {pack_id}: already installed in a satisfying version")


def _show(out: _Output, command: str, result: Any, packs_dir: Path) -> None:
    if command == "list":
        if not result:
            where = str(packs_dir)
            if not packs_dir.is_dir():
                where += " (not a directory)" if packs_dir.exists() else " (no such directory)"
            out.text(f"no packs found in {where}")
        for row in result:
            flags = [f"installed {row['installed']}" if row["installed"] else "not installed"]
            if row["staged"]:
                flags.append("staged " + ", ".join(row["staged"]))
            if row["running"]:
                flags.append("running")
            if not row["valid"] and row["source"]:
                flags.append(f"INVALID ({row['problems']} problems: run validate)")
            out.text(f"{row['id']:<24} {row['version'] or '-':<10} {'; '.join(flags)}")
    elif command == "validate":
        out.text(f"{result['pack']} {result['version']}: valid")
    elif command == "stage":
        verb = "staged" if result["changed"] else "already staged, unchanged"
        out.text(f"{result['pack']} {result['version']} {verb}: {result['path']}")
        out.text(
            f"  digest {result['digest']} ({result['files']} files, {_human_size(result['size'])})"
        )
    elif command == "seal":
        for art in result["artifacts"]:
            mark = "pinned" if art["changed"] else "unchanged"
            out.text(f"{art['path']}: sha256 {art['sha256']} ({mark})")
        out.text(f"{result['manifest']}: " + ("written" if result["written"] else "unchanged"))
    elif command == "dry-run":  # the plan was shown before the script ran (_cmd_dry_run)
        if result["script"] is None:
            out.text("install.sh --dry-run not run (dry_run_supported: false)")
        out.text(f"dry run of {result['pack']} {result['version']} passed; nothing installed")
    elif command == "install":
        for step in result["installed"]:
            how = step["approval"]["how"] if step["approval"] else "not required"
            out.text(
                f"installed {step['pack']} {step['version']} ({step['action']}; "
                f"approval: {how}) -> {step['path']}"
            )
    elif command == "uninstall":
        if result["stopped"]:
            out.text(f"stopped {result['pack']} first")
        out.text(f"uninstalled {result['pack']} {result['version']}")
        if result["data_kept"]:
            out.text(f"  data kept in {result['data_kept']} (uninstall --purge deletes it)")
    elif command == "verify":
        out.text(f"{result['pack']} {result['version']}: intact ({result['digest']})")
    elif command == "status":
        entries = result.get("packs", [result])
        if not entries:
            out.text("nothing staged or installed yet")
        for entry in entries:
            _show_status(out, entry)
    elif command == "start":
        out.text(f"{result['pack']} {result['version']} started: {result['health']['status']}")
    elif command == "stop":
        out.text(f"{result['pack']} {result['version']} stopped")
    elif command == "health":
        out.text(f"{result['pack']}: {result['status']}")


def _show_status(out: _Output, s: dict[str, Any]) -> None:
    out.text(f"{s['pack']}: {s['state']}")
    if s["active_version"]:
        out.text(f"  version   {s['active_version']}  digest {s['digest']}")
        approval = s["approval"]
        out.text(
            "  approval  "
            + (
                f"{approval['how']} by {approval['by']} at {approval['at']}"
                if approval
                else "not required"
            )
        )
    if s["staged"]:
        out.text(
            "  staged    " + ", ".join(f"{v} ({r['digest'][:19]}…)" for v, r in s["staged"].items())
        )
    rt = s["runtime"]
    if s["active_version"]:
        running = "yes" if rt["running"] else "no"
        if rt["pid"]:
            running += f", pid {rt['pid']}"
        if rt["uptime_seconds"] is not None:
            running += f", up {rt['uptime_seconds']:.0f} s"
        out.text(f"  running   {running}")
        health = rt["health"]
        if health:
            last = health.get("last_check") or {}
            output = (last.get("output") or "").replace("\n", " / ")
            out.text(f"  health    {health['status']}" + (f": {output}" if output else ""))
    last = s["last_result"]
    if last:
        out.text(
            f"  last      {last['op']} {'ok' if last['ok'] else 'FAILED'} at {last['at']}: "
            f"{last['message']}"
        )
    if s["pending"]:
        out.text(f"  pending   interrupted {s['pending']['op']} (cleaned up by the next command)")


# -- approval ----------------------------------------------------------------


def _approver(args: argparse.Namespace) -> Callable[[ApprovalRequest], str | None]:
    def approve(request: ApprovalRequest) -> str | None:
        if getattr(args, "approve", False):
            return "flag"
        if not sys.stdin.isatty():
            raise ApprovalError(
                f"{request.pack_id} {request.version} requires operator approval and there is "
                "no terminal to ask on: pass --approve"
            )
        _emit(
            f"{request.action} {request.pack_id} {request.version}\n"
            f"  staged digest {request.digest}\nApprove? [y/N] ",
            sys.stderr,
            end="",
        )
        answer = sys.stdin.readline().strip().lower()
        return "prompt" if answer in ("y", "yes") else None

    return approve


# -- handlers ----------------------------------------------------------------


@dataclass(frozen=True)
class _Failed:
    """A handler's result that still ends in failure (health --watch ending not healthy,
    or by Ctrl-C): the error is reported and the JSON document carries the result too."""

    result: dict[str, Any]
    error: AuroraError
    code: ExitCode


def _after_progress(progress: conventions.Progress, out: _Output) -> Callable[[str], None]:
    """A script's line, on a line of its own (a progress line is ended first)."""

    def show(line: str) -> None:
        progress.done()
        out.script_line(line)

    return show


def _installer(
    args: argparse.Namespace, out: _Output, progress: conventions.Progress | None = None
) -> Installer:
    policy = HealthPolicy(
        interval=getattr(args, "interval", HealthPolicy.interval),
        timeout=getattr(args, "check_timeout", HealthPolicy.timeout),
        start_period=getattr(args, "start_period", HealthPolicy.start_period),
        retries=getattr(args, "retries", HealthPolicy.retries),
    )
    options = Options(
        lock_wait=args.wait,
        script_timeout=args.script_timeout,
        stop_timeout=getattr(args, "timeout", DEFAULT_STOP_TIMEOUT),
        health=policy,
    )
    return Installer(
        check_home(args.home) if args.home is not None else default_home(),
        args.packs_dir or default_packs_dir(),
        options=options,
        on_output=out.script_line if progress is None else _after_progress(progress, out),
        approver=_approver(args),
        on_progress=None
        if progress is None or not progress.enabled
        else lambda what, done, total: progress.update(f"{what}: {done}/{total} files"),
    )


def _cmd_list(inst: Installer, args: argparse.Namespace, out: _Output) -> Any:
    return inst.list_packs()


def _cmd_validate(inst: Installer, args: argparse.Namespace, out: _Output) -> Any:
    return inst.validate(args.pack)


def _cmd_stage(inst: Installer, args: argparse.Namespace, out: _Output) -> Any:
    return inst.stage(args.pack, require_hashes=args.require_hashes)


def _cmd_seal(inst: Installer, args: argparse.Namespace, out: _Output) -> Any:
    return inst.seal(args.pack)


def _cmd_dry_run(inst: Installer, args: argparse.Namespace, out: _Output) -> Any:
    return inst.dry_run(args.pack, on_plan=None if args.json else lambda r: _show_plan(out, r))


def _cmd_install(inst: Installer, args: argparse.Namespace, out: _Output) -> Any:
    return inst.install(args.pack, with_deps=args.with_deps)


def _cmd_uninstall(inst: Installer, args: argparse.Namespace, out: _Output) -> Any:
    return inst.uninstall(args.pack, force=args.force, purge=args.purge, stop=args.stop)


def _cmd_verify(inst: Installer, args: argparse.Namespace, out: _Output) -> Any:
    return inst.verify(args.pack)


def _cmd_status(inst: Installer, args: argparse.Namespace, out: _Output) -> Any:
    return inst.status(args.pack)


def _health_change(out: _Output) -> Callable[[dict[str, Any]], None]:
    def show(doc: dict[str, Any]) -> None:
        last = doc.get("last_check") or {}
        output = (last.get("output") or "").replace("\n", " / ")
        stamp = time.strftime("%H:%M:%S")
        out.text(f"{stamp} health: {doc['status']}" + (f" ({output})" if output else ""))

    return show


def _cmd_start(inst: Installer, args: argparse.Namespace, out: _Output) -> Any:
    return inst.start(args.pack, on_health=_health_change(out))


def _cmd_stop(inst: Installer, args: argparse.Namespace, out: _Output) -> Any:
    return inst.stop(args.pack)


def _cmd_health(inst: Installer, args: argparse.Namespace, out: _Output) -> Any:
    if not args.watch:
        if args.count is not None:
            raise UsageError("--count only goes with --watch")
        return inst.health(args.pack)
    changes: list[dict[str, Any]] = []
    show = _health_change(out)

    def record(doc: dict[str, Any]) -> None:
        changes.append(doc)
        out.progress.done()
        show(doc)

    def progress(n: int, doc: dict[str, Any]) -> None:
        of = f"/{args.count}" if args.count else ""
        out.progress.update(f"{args.pack}: check {n}{of}: {doc['status']}")

    checks: int | None = None  # stays None when Ctrl-C ends the watch
    with contextlib.suppress(KeyboardInterrupt):
        checks = inst.watch_health(args.pack, record, args.count, progress)
    out.progress.done()
    # Every change is recorded, so the last one is the state the last check left.
    status = changes[-1]["status"] if changes else None
    result = {"pack": args.pack, "checks": checks, "changes": changes, "status": status}
    if checks is None:
        error = AuroraError(f"{args.pack}: health --watch ended by Ctrl-C; last state: {status}")
        return _Failed(result, error, ExitCode.INTERRUPTED)
    if status != "healthy":
        error = OperationFailed(f"{args.pack} is {status} after the last check ({checks} in all)")
        return _Failed(result, error, ExitCode.FAILED)
    return result


_HANDLERS: dict[str, Callable[[Installer, argparse.Namespace, _Output], Any]] = {
    "list": _cmd_list,
    "validate": _cmd_validate,
    "stage": _cmd_stage,
    "seal": _cmd_seal,
    "dry-run": _cmd_dry_run,
    "install": _cmd_install,
    "uninstall": _cmd_uninstall,
    "verify": _cmd_verify,
    "status": _cmd_status,
    "start": _cmd_start,
    "stop": _cmd_stop,
    "health": _cmd_health,
}


def _setup_logging(verbose: bool) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("aurora: %(levelname)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    return handler


PROG = "aurora_installer.py"


def _report_error(
    out: _Output,
    command: str | None,
    error: AuroraError,
    code: ExitCode,
    recovered: Sequence[str] = (),
    result: Any = None,
) -> None:
    """The one error line on stderr; with --json the envelope on stdout says it too."""
    _emit(conventions.error_line(conventions.prog_name(PROG), str(error)), sys.stderr)
    if out.as_json:
        detail = conventions.error_object(
            error.message, kind=type(error).__name__, problems=error.problems
        )
        doc = conventions.envelope(command, code, result, detail, recovered=list(recovered))
        out.emit_json(doc)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one installer command; returns the exit code (see ExitCode)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    out = _Output("--json" in arguments)
    return out.settle(_run(arguments, out))


def _run(arguments: list[str], out: _Output) -> int:
    """main() up to the exit status of the command itself."""
    try:
        args = build_parser().parse_args(arguments)
    except UsageError as exc:
        command = next((a for a in arguments if a in _HANDLERS), None)
        _report_error(out, command, exc, ExitCode.USAGE)
        return ExitCode.USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    out.as_json, out.command = args.json, args.command
    # A copy of a pack (stage, install) shows its progress on a terminal, never with --json.
    progress = conventions.Progress(as_json=args.json)
    out.progress = progress
    handler = _setup_logging(args.verbose)
    try:
        inst = _installer(args, out, progress)
    except UsageError as exc:
        log.removeHandler(handler)
        _report_error(out, args.command, exc, ExitCode.USAGE)
        return ExitCode.USAGE
    try:
        try:
            result = _HANDLERS[args.command](inst, args, out)
        finally:
            progress.done()  # the progress line ends before any message
    except AuroraError as exc:
        code = exit_code_for(exc)
        _report_error(out, args.command, exc, code, inst.recovered)
        return code
    except OSError as exc:
        err = AuroraError(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        _report_error(out, args.command, err, ExitCode.FAILED, inst.recovered)
        return ExitCode.FAILED
    except InputRefused as exc:  # hostile input the command did not expect: exit 2, no traceback
        _report_error(out, args.command, AuroraError(str(exc)), ExitCode.USAGE, inst.recovered)
        return ExitCode.USAGE
    except (RecursionError, MemoryError, UnicodeError) as exc:
        err = AuroraError(f"refused: {type(exc).__name__}: {exc}")
        _report_error(out, args.command, err, ExitCode.USAGE, inst.recovered)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        err = AuroraError("interrupted (Ctrl-C); the next command cleans up what was left")
        _report_error(out, args.command, err, ExitCode.INTERRUPTED, inst.recovered)
        return ExitCode.INTERRUPTED
    finally:
        log.removeHandler(handler)
    if isinstance(result, _Failed):
        _report_error(out, args.command, result.error, result.code, inst.recovered, result.result)
        return result.code
    if args.json:
        document = conventions.envelope(
            args.command, ExitCode.OK, result, None, recovered=inst.recovered
        )
        out.emit_json(document)
    else:
        _show(out, args.command, result, inst.packs_dir)
    return ExitCode.OK


if __name__ == "__main__":
    raise SystemExit(conventions.run_main(main))
