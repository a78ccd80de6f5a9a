"""Operator command line of the Plugin API: stage, inspect, permit, enable and remove plugins."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

# Run as a script, Python puts this file's directory (where `core` lives) on sys.path;
# importing core first puts pack01_common (aurora_common) there too (core/aurora_boot.py).
try:
    from core import aurora_boot  # noqa: F401
except Exception as exc:  # an incomplete or damaged installation: one line, no traceback
    if __name__ != "__main__":
        raise
    missing = isinstance(exc, ImportError)  # exit 3: "not installed"; else 1: "failed"
    what = exc if missing else f"internal error: {type(exc).__name__}: {exc} (a damaged copy?)"
    print(f"{os.environ.get('AURORA_PROG') or 'plugins.py'}: error: {what}", file=sys.stderr)
    raise SystemExit(3 if missing else 1) from None

# isort: split
from aurora_common import cli as conventions
from aurora_common.cli import Exit

with conventions.damage_is_one_line(__name__):  # a damaged installed copy: no traceback
    from core import paths
    from core.api import load_manifest, manifest_problems
    from core.capabilities import (
        CALL_GRANT_FORM,
        CALL_GRANT_PREFIX,
        CAPABILITIES,
        CAPABILITY_NAMES,
        requested_grants,
    )
    from core.errors import (
        CapabilityError,
        ManifestError,
        PermissionDenied,
        PluginError,
        RegistryError,
        StagingError,
        UnknownPlugin,
    )
    from core.loader import PluginLoader
    from core.permissions import load_policy, update_policy
    from core.registry import PluginRegistry
    from core.storage import LockBusy

# Exit codes: aurora_common.cli.Exit, the table every Aurora command line shares.
EXIT_OK = Exit.OK  # done
EXIT_FAILED = Exit.FAILED  # the operation failed (unreadable registry, I/O error)
EXIT_INVALID = Exit.USAGE  # bad usage or invalid input: manifest, package, capability name
EXIT_NOT_FOUND = Exit.NOT_FOUND  # unknown plugin, version or path
EXIT_DENIED = Exit.REFUSED  # refused by the permission policy or missing grants
EXIT_BUSY = Exit.BUSY  # a lock stayed held for storage.LOCK_WAIT seconds (the holder is named)
PROG = "plugins.py"
#: What "disabled" means for the processes (adv8 F6): the registry says so at once; pack04's
#: launcher sees it at its next registry check (1 s) and stops the plugin's whole tree
#: (TERM, then KILL after its 5 s stop grace). A script that then touches the data dir
#: waits for `aurora launcher list` to show it stopped.
STOPPED_WITHIN = "pack04's launcher stops its processes within about 10 s"
PACK_ID = "pack05_plugin_api"


class _UsageError(Exception):
    pass


class UnknownPath(PluginError):
    """A path given on the command line does not exist (exit 3, like an unknown plugin)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f"{path}: no such file or directory")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        verb = self.prog.partition(" ")[2]  # the error line names the program already
        raise _UsageError(f"{verb}: {message}" if verb else message)


def _data_dir(args: argparse.Namespace) -> Path:
    """--data, else $AURORA_PACK_DATA/plugins, else the pack as installed in $AURORA_HOME."""
    return paths.operator_plugins_dir() if args.data is None else Path(args.data)


# Commands that only read: an interrupted change they find is settled when the data
# directory is writable, else they warn and go on reading.
_READ_ONLY = {"list", "show", "policy"}


def _recover(args: argparse.Namespace) -> None:
    """Settle what an interrupted command left (an unrecorded outcome, a removal), first."""
    data = _data_dir(args)
    if not data.is_dir():
        return
    loader = PluginLoader(data, actor=args.actor)
    try:
        loader.recover()
    except (PluginError, OSError) as exc:
        policy_change = any(getattr(args, k, None) for k in ("allow", "block", "clear"))
        if args.command not in _READ_ONLY or policy_change:
            raise
        print(f"plugins: warning: {_describe(exc)}", file=sys.stderr)


def _registry(args: argparse.Namespace) -> PluginRegistry:
    return PluginRegistry(_data_dir(args), actor=args.actor)


def _emit(args: argparse.Namespace, doc: dict[str, Any], text: str, code: int = Exit.OK) -> None:
    """The envelope on stdout with --json (``doc`` is its result), else the human text."""
    if args.json:
        result = {k: v for k, v in doc.items() if k != "ok"}
        conventions.emit_json(conventions.envelope(args.command, code, result))
    elif text:
        conventions.emit(text)


def _policy_blocked(args: argparse.Namespace) -> frozenset[str]:
    """What the policy blocks, for display; an unreadable policy is a warning here."""
    try:
        return load_policy(_data_dir(args)).blocked
    except RegistryError as exc:
        conventions.emit(f"{conventions.prog_name(PROG)}: warning: {exc}", sys.stderr)
        return frozenset()


def _calls(requested: list[str], granted: list[str], blocked: frozenset[str]) -> dict[str, Any]:
    """The call grants alone (``call:<plugin id>/<function>``): requested, granted, missing."""
    want = [g for g in requested if g.startswith(CALL_GRANT_PREFIX)]
    have = [g for g in granted if g.startswith(CALL_GRANT_PREFIX)]
    return {
        "requested": want,
        "granted": have,
        "missing": sorted(set(want) - set(have) - blocked),
        "blocked": sorted((set(want) - set(have)) & blocked),
    }


def _protocol(manifest: dict[str, Any] | None) -> dict[str, Any]:
    """The active version's protocol keys (defaults filled in, as pack04 applies them)."""
    m = manifest or {}
    health = {**_HEALTH_DEFAULTS, **(m.get("health") or {})}
    activation = m.get("activation", "always")
    return {
        "functions": sorted(m.get("functions") or {}),
        "activation": activation,
        "idle_seconds": m.get("idle_seconds", 60) if activation == "on-call" else None,
        "health": health,
    }


_HEALTH_DEFAULTS = {"interval_s": 10, "timeout_s": 2, "failures": 3}


def _summary(pid: str, rec: dict[str, Any], blocked: frozenset[str]) -> dict[str, Any]:
    active = rec.get("active_version")
    # capabilities and call grants (call:<plugin id>/<function>), as the registry counts them
    requested = requested_grants(rec.get("manifest"))
    pending = rec.get("pending_version")
    pending_requested = requested_grants(rec["versions"][pending]["manifest"]) if pending else []
    return {
        "id": pid,
        "enabled": rec["enabled"],
        "active_version": active,
        "pending_version": rec.get("pending_version"),
        "versions": sorted(rec["versions"]),
        "requested": requested,
        "granted": rec["granted"],
        # requested, not granted, and grantable: `grant` is the next step
        "missing": sorted(set(requested) - set(rec["granted"]) - blocked),
        # requested, not granted, and blocked by the policy: `grant` is refused
        "blocked": sorted((set(requested) - set(rec["granted"])) & blocked),
        # what the operator must grant before `enable` switches to the pending version
        "pending_missing": sorted(set(pending_requested) - set(rec["granted"])),
        # granted, but blocked since (permissions.json edited by hand): `policy --block` withdraws
        "blocked_by_policy": sorted(set(rec["granted"]) & blocked),
        # the call grants alone, from the lists above
        "calls": _calls(requested, rec["granted"], blocked),
        "protocol": _protocol(rec.get("manifest")),
    }


# -- handlers ------------------------------------------------------------------------------


def _cmd_validate(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not os.path.lexists(path):
        raise UnknownPath(path)
    if path.is_file() and path.suffix.lower() in (".json", ".yaml", ".yml"):
        manifest = load_manifest(path)
        problems = manifest_problems(manifest)
        if problems:
            raise ManifestError(problems, source=str(path))
        doc: dict[str, Any] = {"ok": True, "path": str(path), "id": manifest["id"]}
        doc["version"] = manifest["version"]
    else:
        # A package: stage it into a throw-away directory, with every check `stage` makes.
        with tempfile.TemporaryDirectory(prefix="plugins-validate-") as tmp:
            result = PluginLoader(Path(tmp) / "plugins").stage_package(path)
        keys = ("id", "version", "digest", "files", "bytes")
        doc = {"ok": True, "path": str(path), **{k: result[k] for k in keys}}
    _emit(args, doc, f"{path}: valid ({doc['id']} {doc['version']})")
    return EXIT_OK


def _cmd_stage(args: argparse.Namespace) -> int:
    progress = conventions.Progress(as_json=args.json)  # on a terminal only
    loader = PluginLoader(_data_dir(args), actor=args.actor, progress=progress.update)
    if not os.path.lexists(args.path):
        raise UnknownPath(Path(args.path))
    try:
        result = loader.stage_package(args.path, replace=args.replace)
    finally:
        progress.done()
    lines = [
        f"{'staged' if result['changed'] else 'unchanged'}: {result['id']} {result['version']} "
        f"({result['files']} files, {result['digest']})"
    ]
    if result.get("pending_version") == result["version"]:
        lines.append(
            f"waiting: {result['version']} requests {', '.join(result['missing'])} not granted; "
            f"{result['active_version']} stays active (grant, then enable)"
        )
    elif result["missing"]:
        lines.append(f"not granted yet: {', '.join(result['missing'])}")
    _emit(args, result, "\n".join(lines))
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    records = _registry(args).list()
    blocked = _policy_blocked(args) if records else frozenset()
    plugins = [_summary(pid, records[pid], blocked) for pid in sorted(records)]
    lines = [
        f"{p['id']:<32} {p['active_version'] or '-':<12} "
        f"{'enabled' if p['enabled'] else 'disabled':<9} "
        f"granted={','.join(_capabilities(p['granted'])) or '-'}"
        + (
            f" calls={len(p['calls']['granted'])}/{len(p['calls']['requested'])}"
            if p["calls"]["requested"] or p["calls"]["granted"]
            else ""
        )
        + (f" missing={','.join(p['missing'])}" if p["missing"] else "")
        + (f" blocked={','.join(p['blocked'])} (policy)" if p["blocked"] else "")
        + (
            f" pending={p['pending_version']} "
            + (f"(needs {','.join(p['pending_missing'])})" if p["pending_missing"] else "(ready)")
            if p["pending_version"]
            else ""
        )
        + (
            f" blocked-by-policy={','.join(p['blocked_by_policy'])}"
            if p["blocked_by_policy"]
            else ""
        )
        for p in plugins
    ]
    _emit(args, {"ok": True, "plugins": plugins}, "\n".join(lines) or "no plugins")
    return EXIT_OK


def _capabilities(grants: list[str]) -> list[str]:
    """The capabilities of a ``granted`` list (`list` counts the call grants instead)."""
    return [g for g in grants if not g.startswith(CALL_GRANT_PREFIX)]


def _show_lines(summary: dict[str, Any]) -> list[str]:
    """What `show` prints under the record: calls and the protocol policy, one line each."""
    calls, proto = summary["calls"], summary["protocol"]
    lines = []
    if calls["requested"] or calls["granted"]:
        lines.append(
            f"calls: requested {', '.join(calls['requested']) or '-'}; "
            f"granted {', '.join(calls['granted']) or '-'}; "
            f"missing {', '.join(calls['missing'] + calls['blocked']) or '-'}"
        )
    health = proto["health"]
    lines.append(
        f"functions: {', '.join(proto['functions']) or '-'}; activation {proto['activation']}"
        + (f" (idle {proto['idle_seconds']} s)" if proto["idle_seconds"] is not None else "")
        + f"; health every {health['interval_s']} s, timeout {health['timeout_s']} s, "
        f"{health['failures']} failures"
    )
    return lines


def _cmd_show(args: argparse.Namespace) -> int:
    registry = _registry(args)
    record = registry.get(args.id)
    if record is None:
        raise UnknownPlugin(args.id)
    summary = _summary(args.id, record, _policy_blocked(args))
    doc: dict[str, Any] = {"ok": True, **summary, "record": record}
    if args.verify:
        loader = PluginLoader(registry.plugins_dir)
        doc["problems"] = [p for v in record["versions"] for p in loader.verify(args.id, v)]
        doc["ok"] = not doc["problems"]
    text = "\n".join([json.dumps(record, indent=2, sort_keys=True), *_show_lines(summary)])
    if summary["missing"]:
        text += f"\nnot granted yet: {', '.join(summary['missing'])} (grant, then enable)"
    if summary["blocked"]:
        text += (
            f"\nblocked by the policy: {', '.join(summary['blocked'])} "
            "(grant is refused; `policy --clear` lifts the block)"
        )
    if args.verify:
        text += "\n" + ("\n".join(doc["problems"]) or "verified: every version matches its digest")
    code = EXIT_OK if doc["ok"] else EXIT_FAILED
    _emit(args, doc, text, code)
    return code


def _cmd_enable(args: argparse.Namespace) -> int:
    registry = _registry(args)
    if not registry.enable(args.id, args.version):
        raise UnknownPlugin(args.id)
    rec = registry.get(args.id) or {}
    _emit(
        args,
        {"ok": True, "id": args.id, "enabled": True, "active_version": rec.get("active_version")},
        f"enabled: {args.id} {rec.get('active_version')}",
    )
    return EXIT_OK


def _cmd_disable(args: argparse.Namespace) -> int:
    if not _registry(args).disable(args.id):
        raise UnknownPlugin(args.id)
    _emit(
        args,
        {"ok": True, "id": args.id, "enabled": False},
        f"disabled: {args.id}; {STOPPED_WITHIN}",
    )
    return EXIT_OK


def _cmd_remove(args: argparse.Namespace) -> int:
    loader = PluginLoader(_data_dir(args), actor=args.actor)
    if not loader.remove(args.id, args.version):
        record = loader.registry.get(args.id)
        raise UnknownPlugin(args.id, args.version, staged=record and record["versions"])
    what = f"{args.id} {args.version}" if args.version else args.id
    _emit(args, {"ok": True, "id": args.id, "version": args.version}, f"removed: {what}")
    return EXIT_OK


def _cmd_grant(args: argparse.Namespace) -> int:
    new = _registry(args).grant(args.id, args.capabilities)
    text = f"granted to {args.id}: {', '.join(new)}" if new else "nothing new to grant"
    _emit(args, {"ok": True, "id": args.id, "granted": new}, text)
    return EXIT_OK


def _cmd_revoke(args: argparse.Namespace) -> int:
    result = _registry(args).revoke(args.id, args.capabilities)
    text = f"revoked from {args.id}: {', '.join(result['revoked']) or 'nothing'}"
    if result["disabled"]:
        text += (
            f"\ndisabled: {args.id} (its active version needs a revoked grant); {STOPPED_WITHIN}"
        )
    _emit(args, {"ok": True, "id": args.id, **result}, text)
    return EXIT_OK


def _cmd_rollback(args: argparse.Namespace) -> int:
    active = _registry(args).rollback(args.id, args.version)
    _emit(
        args, {"ok": True, "id": args.id, "active_version": active}, f"{args.id}: {active} active"
    )
    return EXIT_OK


def _cmd_policy(args: argparse.Namespace) -> int:
    data = _data_dir(args)
    if args.allow or args.block or args.clear:
        policy = update_policy(
            data, allow=args.allow, block=args.block, clear=args.clear, actor=args.actor
        )
    else:
        policy = load_policy(data)
    caps = {
        name: {
            "description": c.description,
            "risk": c.risk,
            "policy": "blocked"
            if name in policy.blocked
            else "allowed"
            if name in policy.allowed
            else "ask",
        }
        for name, c in CAPABILITIES.items()
    }
    doc = {"ok": True, **policy.to_json(), "capabilities": caps}
    # call grants the policy names (call:<plugin id>/<function>), after the vocabulary
    doc["calls"] = {
        name: "blocked" if name in policy.blocked else "allowed"
        for name in sorted(policy.allowed | policy.blocked)
        if name.startswith(CALL_GRANT_PREFIX)
    }
    text = "\n".join(
        [f"{n:<9} {c['policy']:<8} risk={c['risk']:<7} {c['description']}" for n, c in caps.items()]
        + [f"{n} {state}" for n, state in doc["calls"].items()]
    )
    _emit(args, doc, text)
    return EXIT_OK


# -- parser and error handling -------------------------------------------------------------


def _common() -> _Parser:
    """Options every verb takes, before or after it (SUPPRESS: a later parse keeps the value)."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON document on stdout (messages on stderr)",
    )
    common.add_argument(
        "--data",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="plugins directory (default: $AURORA_PACK_DATA/plugins, else the pack's data "
        "in $AURORA_HOME when set, else <pack>/data/plugins)",
    )
    common.add_argument(
        "--actor",
        metavar="NAME",
        default=argparse.SUPPRESS,
        help="who to record in audit.log (default: the login name)",
    )
    return common


_EXAMPLES = {
    "validate": "examples/plugins/acme.portwatch",
    "stage": "examples/plugins/acme.portwatch",
    "list": "",
    "show": "acme.portwatch --verify",
    "enable": "acme.portwatch",
    "disable": "acme.portwatch",
    "remove": "acme.portwatch --version 0.1.0",
    "grant": "acme.portwatch network",
    "revoke": "acme.portwatch network",
    "rollback": "acme.portwatch",
    "policy": "--block gpu",
}
_VERBS = frozenset(_EXAMPLES)


def _parser() -> _Parser:
    prog = conventions.prog_name(PROG)
    parser = _Parser(
        prog=prog,
        description="Stage, inspect, permit, enable and remove Aurora plugins. Options go "
        "before or after the verb; `VERB --help` lists its own.",
        epilog=conventions.epilog(
            [f"{prog} stage examples/plugins/acme.heartbeat", f"{prog} list --json"]
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common()],
    )
    parser.set_defaults(json=False, data=None, actor=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    caps = f"capabilities: {', '.join(CAPABILITY_NAMES)}, or {CALL_GRANT_FORM}"

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_: str) -> _Parser:
        p: _Parser = sub.add_parser(
            name,
            help=help_,
            description=help_,
            parents=[_common()],
            epilog=conventions.epilog([f"{prog} {name} {_EXAMPLES[name]}".rstrip()]),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(handler=handler)
        return p

    p = add(
        "validate",
        _cmd_validate,
        "check a manifest file, or a package as stage would (writes nothing)",
    )
    p.add_argument("path")
    p = add("stage", _cmd_stage, "stage a package (directory, .zip or .tar.gz), disabled")
    p.add_argument("path")
    p.add_argument(
        "--replace",
        action="store_true",
        help="overwrite a staged version that has different content",
    )
    add("list", _cmd_list, "list staged plugins")
    p = add("show", _cmd_show, "show one plugin's record")
    p.add_argument("id")
    p.add_argument("--verify", action="store_true", help="re-hash the staged files")
    p = add("enable", _cmd_enable, "enable a plugin (its pending version, if any)")
    p.add_argument("id")
    p.add_argument("--version", help="enable this staged version")
    p = add("disable", _cmd_disable, "disable a plugin")
    p.add_argument("id")
    p = add("remove", _cmd_remove, "unregister a plugin (or one version) and delete its files")
    p.add_argument("id")
    p.add_argument("--version", help="remove only this version")
    p = add("grant", _cmd_grant, f"grant capabilities or calls to a plugin ({caps})")
    p.add_argument("id")
    p.add_argument("capabilities", nargs="+", metavar="CAPABILITY")
    p = add(
        "revoke",
        _cmd_revoke,
        "revoke capabilities or calls (disables the plugin if it needs them)",
    )
    p.add_argument("id")
    p.add_argument("capabilities", nargs="+", metavar="CAPABILITY")
    p = add("rollback", _cmd_rollback, "make an earlier staged version active")
    p.add_argument("id")
    p.add_argument("version", nargs="?", help="default: the newest version below the active one")
    p = add("policy", _cmd_policy, f"show or change the permission policy ({caps})")
    p.add_argument(
        "--allow",
        nargs="+",
        default=[],
        metavar="CAPABILITY",
        help="may be granted automatically when a plugin is staged",
    )
    p.add_argument(
        "--block", nargs="+", default=[], metavar="CAPABILITY", help="may never be granted"
    )
    p.add_argument(
        "--clear",
        nargs="+",
        default=[],
        metavar="CAPABILITY",
        help="back to the default: the operator grants it per plugin",
    )
    return parser


def _describe(exc: BaseException) -> str:
    """The message for an error; an OSError names the file first, without the errno."""
    if isinstance(exc, OSError) and exc.strerror:
        if exc.filename is not None and exc.filename2 is not None:
            return f"{exc.filename} -> {exc.filename2}: {exc.strerror}"
        if exc.filename is not None:
            return f"{exc.filename}: {exc.strerror}"
        return exc.strerror
    return str(exc)


def _error_doc(exc: BaseException, code: int, command: str | None) -> dict[str, Any]:
    details: dict[str, Any] = {}
    problems: list[str] = []
    if isinstance(exc, ManifestError):
        problems = list(exc.problems)
    if isinstance(exc, StagingError):
        details["reason"] = exc.reason
    if isinstance(exc, PermissionDenied):
        details["id"] = exc.plugin_id
        details["capabilities"] = exc.capabilities
    place = exc.filename if isinstance(exc, OSError) and exc.filename is not None else None
    error = conventions.error_object(
        _describe(exc),
        kind=type(exc).__name__,
        place=None if place is None else str(place),
        problems=problems,
        **details,
    )
    return conventions.envelope(command, code, None, error)


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, ManifestError | StagingError | CapabilityError | _UsageError):
        return EXIT_INVALID
    if isinstance(exc, UnknownPlugin | UnknownPath):
        return EXIT_NOT_FOUND
    if isinstance(exc, PermissionDenied):
        return EXIT_DENIED
    if isinstance(exc, LockBusy):
        return EXIT_BUSY
    return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code. Never a traceback for a user mistake."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="plugins: %(message)s", stream=sys.stderr)
    want_json, argv = conventions.pop_flag(argv, "--json")
    command = next((a for a in argv if a in _VERBS), None)
    try:
        args = _parser().parse_args(argv)
        args.json = want_json
        if args.data is not None and not args.data.strip():
            raise _UsageError("--data: expected a directory, found an empty string")
        if args.data is not None and os.path.exists(args.data) and not os.path.isdir(args.data):
            raise _UsageError(f"--data: {args.data} is not a directory")
        handler: Callable[[argparse.Namespace], int] = args.handler
        if args.command != "validate":
            _recover(args)
        return handler(args)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except (PluginError, _UsageError, OSError, LockBusy, paths.DataLocationError) as exc:
        code = _exit_code(exc)
        if want_json:
            conventions.emit_json(_error_doc(exc, code, command))
        line = conventions.error_line(conventions.prog_name(PROG), _describe(exc))
        conventions.emit(line, sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(conventions.run_main(main))
