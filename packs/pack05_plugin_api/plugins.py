"""Operator command line of the Plugin API: stage, inspect, permit, enable and remove plugins."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

# Run as a script, Python puts this file's directory (where `core` lives) on sys.path.
from core import paths
from core.api import load_manifest, manifest_problems
from core.capabilities import CAPABILITIES, CAPABILITY_NAMES
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

# Exit codes: the one place they are defined (listed in README.md).
EXIT_OK = 0  # done
EXIT_FAILED = 1  # the operation failed (unreadable registry, I/O error)
EXIT_INVALID = 2  # bad usage or invalid input: manifest, package, capability name
EXIT_NOT_FOUND = 3  # unknown plugin, version or path
EXIT_DENIED = 4  # refused by the permission policy or missing grants


class _UsageError(Exception):
    pass


class UnknownPath(PluginError):
    """A path given on the command line does not exist (exit 3, like an unknown plugin)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f"{path}: no such file or directory")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: {message}")


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


def _emit(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    """One JSON document on stdout with --json, else the human text on stdout.

    Called once the command's work is done: an output that cannot be written (stdout on
    a full disk, a closed pipe) is a warning on stderr, never a failure of the command.
    """
    if args.json:
        _write_stdout(json.dumps(doc, indent=2, sort_keys=True), "the command was done")
    elif text:
        _write_stdout(text, "the command was done")


def _write_stdout(text: str, outcome: str) -> None:
    """Write ``text`` and a newline to stdout now; if it cannot be written, say so on stderr
    (with ``outcome``: what the exit status says) and send the rest of stdout nowhere, so
    that the exit status stays the command's, not Python's 120 for an unflushed stdout."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except (OSError, ValueError) as exc:  # ValueError: stdout closed
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        with contextlib.suppress(OSError, ValueError):
            print(
                f"plugins: warning: cannot write the output to stdout ({_describe(exc)}); "
                f"{outcome}",
                file=sys.stderr,
            )


def _policy_blocked(args: argparse.Namespace) -> frozenset[str]:
    """What the policy blocks, for display; an unreadable policy is a warning here."""
    try:
        return load_policy(_data_dir(args)).blocked
    except RegistryError as exc:
        print(f"plugins: warning: {exc}", file=sys.stderr)
        return frozenset()


def _summary(pid: str, rec: dict[str, Any], blocked: frozenset[str]) -> dict[str, Any]:
    active = rec.get("active_version")
    requested = (rec.get("manifest") or {}).get("permissions", [])
    pending = rec.get("pending_version")
    pending_requested = (
        rec["versions"][pending]["manifest"].get("permissions", []) if pending else []
    )
    return {
        "id": pid,
        "enabled": rec["enabled"],
        "active_version": active,
        "pending_version": rec.get("pending_version"),
        "versions": sorted(rec["versions"]),
        "requested": requested,
        "granted": rec["granted"],
        "missing": sorted(set(requested) - set(rec["granted"])),
        # what the operator must grant before `enable` switches to the pending version
        "pending_missing": sorted(set(pending_requested) - set(rec["granted"])),
        # granted, but blocked since (permissions.json edited by hand): `policy --block` withdraws
        "blocked_by_policy": sorted(set(rec["granted"]) & blocked),
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
    loader = PluginLoader(_data_dir(args), actor=args.actor)
    if not os.path.lexists(args.path):
        raise UnknownPath(Path(args.path))
    result = loader.stage_package(args.path, replace=args.replace)
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
        f"granted={','.join(p['granted']) or '-'}"
        + (f" missing={','.join(p['missing'])}" if p["missing"] else "")
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
    text = json.dumps(record, indent=2, sort_keys=True)
    if args.verify:
        text += "\n" + ("\n".join(doc["problems"]) or "verified: every version matches its digest")
    _emit(args, doc, text)
    return EXIT_OK if doc["ok"] else EXIT_FAILED


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
    _emit(args, {"ok": True, "id": args.id, "enabled": False}, f"disabled: {args.id}")
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
        text += f"\ndisabled: {args.id} (its active version needs a revoked capability)"
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
    text = "\n".join(
        f"{n:<9} {c['policy']:<8} risk={c['risk']:<7} {c['description']}" for n, c in caps.items()
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


def _parser() -> _Parser:
    parser = _Parser(
        prog="plugins.py",
        description="Stage, inspect, permit, enable and remove Aurora plugins.",
        epilog="exit codes: 0 ok, 1 failed, 2 invalid input or usage, 3 not found, "
        "4 refused by policy or missing grants",
        parents=[_common()],
    )
    parser.set_defaults(json=False, data=None, actor=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    caps = f"capabilities: {', '.join(CAPABILITY_NAMES)}"

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_: str) -> _Parser:
        p: _Parser = sub.add_parser(name, help=help_, description=help_, parents=[_common()])
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
    p = add("grant", _cmd_grant, f"grant capabilities to a plugin ({caps})")
    p.add_argument("id")
    p.add_argument("capabilities", nargs="+", metavar="CAPABILITY")
    p = add("revoke", _cmd_revoke, "revoke capabilities (disables the plugin if it needs them)")
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


def _error_doc(exc: BaseException, code: int) -> dict[str, Any]:
    error: dict[str, Any] = {"kind": type(exc).__name__, "message": _describe(exc)}
    if isinstance(exc, ManifestError):
        error["problems"] = exc.problems
    if isinstance(exc, StagingError):
        error["reason"] = exc.reason
    if isinstance(exc, PermissionDenied):
        error["id"] = exc.plugin_id
        error["capabilities"] = exc.capabilities
    return {"ok": False, "exit": code, "error": error}


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, ManifestError | StagingError | CapabilityError | _UsageError):
        return EXIT_INVALID
    if isinstance(exc, UnknownPlugin | UnknownPath):
        return EXIT_NOT_FOUND
    if isinstance(exc, PermissionDenied):
        return EXIT_DENIED
    return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code. Never a traceback for a user mistake."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="plugins: %(message)s", stream=sys.stderr)
    want_json = "--json" in argv
    try:
        args = _parser().parse_args(argv)
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
    except (PluginError, _UsageError, OSError, paths.DataLocationError) as exc:
        code = _exit_code(exc)
        if want_json:
            _write_stdout(json.dumps(_error_doc(exc, code), indent=2, sort_keys=True), "failed")
        with contextlib.suppress(OSError, ValueError):
            print(f"plugins: error: {_describe(exc)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
