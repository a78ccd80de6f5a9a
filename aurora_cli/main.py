"""`aurora`: argument handling and dispatch to the installer and the installed packs' CLIs."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from aurora_common import cli as conventions
from aurora_common.cli import Exit

from aurora_cli import settle
from aurora_cli.completion import ROUTED, VERBS
from aurora_cli.completion import script as completion_script
from aurora_cli.delegate import installer_argv, installer_env, pack_cli_env, run_child
from aurora_cli.home import REPO, HomeError, installed, resolve_home
from aurora_cli.status import collect, show

PROG = "aurora"

# group -> (pack id, the CLI inside the installed pack, the example its help shows)
PACK_CLIS = {
    "plugin": ("pack05_plugin_api", "plugins.py"),
    "launcher": ("pack04_launcher", "launcher_cli.py"),
}

CALL_EXAMPLE = """aurora plugin call acme.greeter greet --args '{"name": "Ada"}'"""

HELP = f"""\
usage: aurora [--home DIR] [--json] COMMAND ...

One front door for Aurora operators. Options go before or after the command.

commands:
  pack VERB ...      the installer: {", ".join(VERBS["pack"])}
  plugin VERB ...    pack05's plugins (installed copy): {", ".join(VERBS["plugin"])}
  launcher VERB ...  pack04's launcher (installed copy): {", ".join(VERBS["launcher"])}
  status             packs and their health, plugins, their state and grants, the launcher
  completion SHELL   print a completion script (bash or zsh)

options:
  --home DIR   the home (default: $AURORA_HOME, else <repo>/.aurora)
  --json       one JSON document on stdout ({{"ok", "exit", "command", "result", "error"}})
  -h, --help   this help; `aurora COMMAND --help` for a command's own

{
    conventions.epilog(
        [
            "aurora pack install --pack pack05_plugin_api --with-deps --approve",
            "aurora plugin stage examples/plugins/acme.heartbeat",
            "aurora launcher list",
            CALL_EXAMPLE,
            "aurora status --json",
            'eval "$(aurora completion bash)"',
        ]
    )
}"""


class _Usage(Exception):
    pass


def _split_home(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Take ``--home DIR`` / ``--home=DIR`` out of ``argv`` (anywhere before ``--``)."""
    home: str | None = None
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg == "--home":
            if i + 1 >= len(args):
                raise _Usage("--home: expected a directory")
            home = args[i + 1]
            i += 2
            continue
        if arg.startswith("--home="):
            home = arg.partition("=")[2]
        else:
            rest.append(arg)
        i += 1
    if home is not None and not home.strip():
        raise _Usage("--home: expected a directory, found an empty string")
    return home, rest


def _fail(command: str | None, code: int, message: str, as_json: bool) -> int:
    conventions.emit(conventions.error_line(PROG, message), sys.stderr)
    if as_json:
        error = conventions.error_object(message)
        conventions.emit_json(conventions.envelope(command, code, None, error))
    return code


def _pack_cli(
    group: str,
    home: Path,
    given_home: str | None,
    args: list[str],
    as_json: bool,
    served_by: str | None = None,
) -> int:
    pack_id, script = PACK_CLIS[served_by or group]
    pack = installed(home, pack_id)
    prog = f"aurora {group}"
    if pack is None:
        if any(a in ("-h", "--help") for a in args):  # help needs no home: the source's text
            cli = REPO / "packs" / pack_id / script
            return run_child([sys.executable, str(cli), *args], {"AURORA_PROG": prog})
        where = f" --home {given_home}" if given_home else ""
        return _fail(
            f"{group} {args[0]}".strip() if args else group,
            Exit.NOT_FOUND,
            f"{pack_id} is not installed in {home}: run "
            f"`aurora{where} pack install --pack {pack_id} --with-deps --approve`",
            as_json,
        )
    code = run_child([sys.executable, str(pack.root / script), *args], pack_cli_env(pack, prog))
    if code == Exit.OK and group == "plugin" and (plugin_id := settle.plugin_of(args)):
        settle.wait_until_stopped(home, plugin_id)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `aurora` command; returns its exit status (the shared table)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    as_json = conventions.pop_flag(arguments, "--json")[0]
    try:
        given_home, rest = _split_home(arguments)
    except _Usage as exc:
        return _fail(None, Exit.USAGE, str(exc), as_json)
    group = next((a for a in rest if not a.startswith("-")), None)
    if group is None:
        if any(a in ("-h", "--help") for a in rest):
            conventions.emit(HELP)
            return Exit.OK
        conventions.emit(HELP, sys.stderr)
        return _fail(None, Exit.USAGE, "a command is required", as_json)
    if group not in VERBS:
        known = ", ".join(VERBS)
        return _fail(None, Exit.USAGE, f"unknown command {group!r} (known: {known})", as_json)
    # Everything but the group word goes to the command: `--json pack list` == `pack list --json`.
    position = rest.index(group)
    args = rest[:position] + rest[position + 1 :]
    home = resolve_home(given_home)
    try:
        if group == "pack":
            return run_child(installer_argv(home, args), installer_env(home))
        if group in PACK_CLIS:
            verb = next((a for a in args if not a.startswith("-")), None)
            served_by = ROUTED.get((group, verb or ""))
            return _pack_cli(group, home, given_home, args, as_json, served_by)
        if group == "completion":
            return _completion(args, as_json)
        return _status(home, args, as_json)
    except HomeError as exc:
        return _fail(group, Exit.FAILED, str(exc), as_json)


def _completion(args: list[str], as_json: bool) -> int:
    if any(a in ("-h", "--help") for a in args):
        conventions.emit(
            "usage: aurora completion {bash,zsh}\n\nPrint a shell completion script.\n\n"
            + conventions.epilog(['eval "$(aurora completion bash)"'])
        )
        return Exit.OK
    shells = [a for a in args if a != "--json"]
    if len(shells) != 1 or shells[0] not in VERBS["completion"]:
        return _fail("completion", Exit.USAGE, "expected one shell: bash or zsh", as_json)
    conventions.emit(completion_script(shells[0]), end="")
    return Exit.OK


def _status(home: Path, args: list[str], as_json: bool) -> int:
    if any(a in ("-h", "--help") for a in args):
        conventions.emit(
            "usage: aurora status [--home DIR] [--json]\n\n"
            "Everything at a glance: packs and their health, plugins with their state and "
            "grants, the launcher and what it runs.\n\n" + conventions.epilog(["aurora status"])
        )
        return Exit.OK
    extra = [a for a in args if a != "--json"]
    if extra:
        return _fail("status", Exit.USAGE, f"unexpected argument {extra[0]!r}", as_json)
    result, problem = collect(home)
    code = Exit.OK if problem is None else problem[0]
    if problem is not None:
        conventions.emit(conventions.error_line(PROG, problem[1]), sys.stderr)
    if as_json:
        error = None if problem is None else conventions.error_object(problem[1])
        conventions.emit_json(conventions.envelope("status", code, result, error))
    else:
        for line in show(result):
            conventions.emit(line)
    return code


def run() -> int:
    """The console script's entry point (`aurora`)."""
    return conventions.run_main(main)
