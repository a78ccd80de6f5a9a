"""The shared command-line conventions (aurora_common.cli), and every CLI keeping them."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO / "packs" / "pack01_common", REPO / "installer", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import aurora_installer  # noqa: E402
from aurora.exitcodes import ExitCode  # noqa: E402
from aurora_common import cli as conventions  # noqa: E402
from aurora_common.cli import Exit  # noqa: E402

from aurora_cli.completion import ROUTED, VERBS  # noqa: E402

ENVELOPE_KEYS = {"ok", "exit", "command", "result", "error"}


def _load(name: str, path: Path) -> Any:
    """Import a pack's CLI module from its source tree (packs never import each other;
    the test does, to run each CLI in-process)."""
    root = str(path.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    return __import__(name, fromlist=["main"])


plugins = _load("plugins", REPO / "packs" / "pack05_plugin_api" / "plugins.py")
launcher_cli = _load("launcher.cli", REPO / "packs" / "pack04_launcher" / "launcher_cli.py")


@pytest.mark.parametrize(
    ("argv", "found", "rest"),
    [
        pytest.param(["--json", "list"], True, ["list"], id="before"),
        pytest.param(["list", "--json"], True, ["list"], id="after"),
        pytest.param(["list"], False, ["list"], id="absent"),
        pytest.param(["run", "--", "x", "--json"], False, ["run", "--", "x", "--json"], id="dash"),
    ],
)
def test_json_flag_anywhere_before_a_double_dash(
    argv: list[str], found: bool, rest: list[str]
) -> None:
    assert conventions.pop_flag(argv, "--json") == (found, rest)


def test_one_envelope_for_success_and_failure() -> None:
    ok = conventions.envelope("list", Exit.OK, [1])
    assert ok == {"ok": True, "exit": 0, "command": "list", "result": [1], "error": None}
    error = conventions.error_object("no such pack", kind="NotFoundError", place="--pack")
    failed = conventions.envelope("show", Exit.NOT_FOUND, None, error)
    assert set(failed) == ENVELOPE_KEYS and failed["ok"] is False and failed["exit"] == 3
    assert failed["error"] == {
        "message": "no such pack",
        "kind": "NotFoundError",
        "place": "--pack",
        "problems": [],
    }


def test_error_line_names_the_program_and_the_place_once() -> None:
    assert conventions.error_line("aurora", "unknown pack 'x'") == "aurora: error: unknown pack 'x'"
    assert conventions.error_line("p", "not JSON", "/a/r.json") == "p: error: not JSON: /a/r.json"
    assert conventions.error_line("p", "/a/r.json: not JSON", "/a/r.json").count("/a/r.json") == 1


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal_and_never_with_json() -> None:
    for stream, as_json, shown in (
        (_Tty(), False, True),
        (_Tty(), True, False),
        (io.StringIO(), False, False),
    ):
        progress = conventions.Progress(as_json=as_json, stream=stream)
        progress.update("staging 3/10 files")
        progress.done()
        assert ("staging 3/10 files" in stream.getvalue()) is shown


def test_a_closed_reader_is_not_an_error(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = os.fdopen(write_end, "w")
    try:
        conventions.emit("first", stream)  # EPIPE: silenced, the stream now goes to /dev/null
        conventions.emit("second", stream)
        assert os.readlink(f"/proc/self/fd/{stream.fileno()}") == os.devnull
    finally:
        stream.close()


def test_every_tool_uses_the_one_exit_table() -> None:
    table = {int(c): c.name for c in Exit}
    for code in ExitCode:  # the installer's names (LOCKED is the table's BUSY)
        assert int(code) in table, code
    for module in (plugins, launcher_cli):
        codes = {name: value for name, value in vars(module).items() if name.startswith("EXIT_")}
        assert codes and all(int(v) in table for v in codes.values()), module.__name__
    assert (plugins.EXIT_NOT_FOUND, launcher_cli.EXIT_NOT_FOUND) == (Exit.NOT_FOUND,) * 2
    assert launcher_cli.EXIT_NOT_RUNNING == Exit.NOT_RUNNING


@pytest.mark.parametrize("position", ["before", "after"])
def test_each_cli_prints_the_envelope_with_json_before_or_after_the_verb(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    position: str,
) -> None:
    monkeypatch.setenv("AURORA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AURORA_PACK_DATA", raising=False)
    monkeypatch.delenv("AURORA_PLUGIN_REGISTRY", raising=False)
    data = ["--data", str(tmp_path / "plugins")]  # a home without pack05: its data is named
    for main, expected, extra in (
        (aurora_installer.main, Exit.OK, []),
        (plugins.main, Exit.OK, data),
        (launcher_cli.main, Exit.NOT_RUNNING, []),  # nothing runs in this home
    ):
        argv = ["--json", "list"] if position == "before" else ["list", "--json"]
        assert main(argv + extra) == expected
        doc = json.loads(capsys.readouterr().out)
        assert set(doc) >= ENVELOPE_KEYS and (doc["exit"], doc["command"]) == (expected, "list")


def _verbs(parser: argparse.ArgumentParser) -> list[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


PARSERS = {
    "pack": aurora_installer.build_parser,
    "plugin": plugins._parser,
    "launcher": launcher_cli._parser,
}


@pytest.mark.parametrize(
    ("name", "main", "group"),
    [
        pytest.param("aurora_installer.py", aurora_installer.main, "pack", id="installer"),
        pytest.param("plugins.py", plugins.main, "plugin", id="plugins"),
        pytest.param("launcher_cli.py", launcher_cli.main, "launcher", id="launcher"),
    ],
)
def test_every_verb_has_an_example_in_its_help(
    capsys: pytest.CaptureFixture[str], name: str, main: Any, group: str
) -> None:
    verbs = _verbs(PARSERS[group]())
    assert len(verbs) >= 6
    for verb in verbs:
        assert main([verb, "--help"]) == 0, verb
        text = capsys.readouterr().out
        assert "example" in text and f"{name} {verb}" in text.split("example")[1], verb
        assert "exit codes: 0 ok" in text
    # `aurora completion` offers exactly these verbs, and those another CLI serves
    offered = set(VERBS[group])
    routed = {verb for (g, verb) in ROUTED if g == group}
    assert set(verbs) <= offered and offered - set(verbs) == routed


def test_staging_shows_progress_on_a_terminal_and_never_with_json(
    env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for pack, as_json, shown in (("alpha", False, True), ("beta", True, False)):
        env.make_pack(pack, files={f"data{i}.txt": "x\n" for i in range(20)})
        terminal = _Tty()
        monkeypatch.setattr(sys, "stderr", terminal)
        argv = ["stage", "--pack", pack, *(["--json"] if as_json else [])]
        assert aurora_installer.main(env.args(*argv)) == 0
        text = terminal.getvalue()
        assert (f"\rstaging {pack}: 1/" in text.replace("\x1b[K", "")) is shown, text
        assert not shown or text.endswith("\r\x1b[K")  # the line is cleared at the end


def test_staging_a_plugin_archive_shows_progress_on_a_terminal_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tarfile

    pkg = tmp_path / "acme.big"
    pkg.mkdir()
    manifest = {"id": "acme.big", "name": "Big", "version": "1.0.0", "entrypoint": "main.py"}
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    (pkg / "main.py").write_text("pass\n")
    for i in range(30):
        (pkg / f"data{i}.txt").write_text("x\n")
    archive = tmp_path / "acme.big-1.0.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(pkg, arcname="acme.big")
    for n, (as_json, shown) in enumerate(((False, True), (True, False))):
        terminal = _Tty()
        monkeypatch.setattr(sys, "stderr", terminal)
        data = ["--data", str(tmp_path / f"plugins{n}")]
        argv = ["stage", str(archive), *data, *(["--json"] if as_json else [])]
        assert plugins.main(argv) == 0
        text = terminal.getvalue().replace("\x1b[K", "")
        assert ("\rreading " in text and "members" in text) is shown, text
        assert not shown or terminal.getvalue().endswith("\r\x1b[K")


def test_an_escaped_exception_is_one_error_line_naming_where(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(conventions.DEBUG_ENV, raising=False)
    monkeypatch.setenv("AURORA_PROG", "aurora plugin")

    def broken() -> int:
        raise KeyError("boom")

    assert conventions.run_main(broken) == Exit.FAILED
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("aurora plugin: error: internal error: KeyError: 'boom' at ")
    assert "test_conventions.py:" in err and "AURORA_DEBUG=1" in err
    monkeypatch.setenv(conventions.DEBUG_ENV, "1")
    assert conventions.run_main(broken) == Exit.FAILED
    assert "Traceback" in capsys.readouterr().err  # asked for
