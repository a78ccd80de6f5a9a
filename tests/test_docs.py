"""Documentation that runs: every shell block of the READMEs, in order, on a copy of the repo.

A fenced block tagged ``sh`` or ``bash`` is run; each command in it must exit 0,
or the status its comment names (``# ... exit 4 ...``). A block preceded by the
line ``*Illustration, not run by the documentation test:*`` (visible to a reader)
is shown, not run. A ``text`` block preceded by ``<!-- doc: output -->`` is what
the last command of the shell block before it prints: its stdout and stderr, as a
terminal shows them, are compared with it, line by line, numbers, paths and digests
aside (pids, times and homes differ from run to run). Every fenced block carries a
language tag (``text`` for output and diagrams), so a command cannot hide in an
untagged block. Each document runs in one bash session (variables carry from one
block to the next) on a throw-away copy of the tracked files and its own home.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [
    "README.md",
    "packs/pack03_os_base/README.md",
    "packs/pack04_launcher/README.md",
    "packs/pack05_plugin_api/README.md",
    "examples/plugins/README.md",
]
SHELLS = {"sh", "bash"}
ILLUSTRATION = "*Illustration, not run by the documentation test:*"  # visible to a reader
OUTPUT = "<!-- doc: output -->"
DOC_TIMEOUT = 240

_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_EXIT = re.compile(r"\bexit (\d+)\b")


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    illustration: bool
    output: bool = False  # a text block: what the command before it prints


def blocks(doc: str) -> list[Block]:
    """The fenced blocks of ``doc`` (a path relative to the repository)."""
    lines = (REPO / doc).read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, lang = match.groups()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent) :])
            i += 1
        before = next((x.strip() for x in reversed(lines[:start]) if x.strip()), "")
        found.append(Block(doc, start + 1, lang, "\n".join(body), before == ILLUSTRATION,
                           before == OUTPUT and lang == "text"))  # fmt: skip
        i += 1
    return found


def _comment_start(line: str) -> int | None:
    """Index of a shell comment's '#' (outside quotes, after a blank), or None."""
    quote: str | None = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return i
    return None


def commands(block: Block) -> Iterator[tuple[int, str, int]]:
    """(line number, command, expected exit status) for each command of a shell block;
    a line ending in a backslash continues on the next."""
    pending: list[str] = []
    first = 0
    for offset, raw in enumerate(block.text.splitlines(), start=block.line + 1):
        if not pending:
            first = offset
        pending.append(raw)
        if raw.rstrip().endswith("\\"):
            continue
        text = "\n".join(pending)
        pending = []
        cut = _comment_start(text.splitlines()[-1])
        comment = text.splitlines()[-1][cut:] if cut is not None else ""
        command = text if cut is None else text[: len(text) - len(text.splitlines()[-1]) + cut]
        if not command.strip():
            continue
        expected = _EXIT.search(comment)
        yield first, command.rstrip(), int(expected[1]) if expected else 0


def session_script(doc: str) -> str:
    """One bash script running every shell block of ``doc``, checking each status; what
    a command whose output the document shows prints (stdout and stderr) goes to
    ``$DOC_OUTPUTS/<line of that output block>`` too."""
    out = ["set -u", 'echo "doc-test: start"']
    found = blocks(doc)
    for i, block in enumerate(found):
        if block.lang not in SHELLS or block.illustration:
            continue
        shown = found[i + 1] if i + 1 < len(found) and found[i + 1].output else None
        listed = list(commands(block))
        for n, (line, command, expected) in enumerate(listed):
            where = f"{doc}:{line}"
            out.append(f"echo {shlex_quote('$ ' + command.splitlines()[0])} >&2")
            if shown is not None and n == len(listed) - 1:
                capture = f'"$DOC_OUTPUTS/{shown.line}"'
                shown_run = f"{{ {command}\n}} > {capture} 2>&1; __rc=$?"
                out.append(f"{shown_run}; cat {capture}; (exit $__rc)")
            else:
                out.append(command)
            out.append(
                f'__rc=$?; if [ "$__rc" -ne {expected} ]; then '
                f'echo "doc-test: {where}: exit $__rc, expected {expected}" >&2; exit 99; fi'
            )
    out.append('echo "doc-test: done"')
    return "\n".join(out) + "\n"


def shlex_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _processes_with(needle: str) -> list[int]:
    """Live processes whose environment or command line carries ``needle``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle.encode() in blob:
            found.append(int(entry.name))
    return found


def fresh_copy(root: Path) -> Path:
    """The tracked files of the repository (as in the working tree) under ``root``, with
    the project's venv beside them: a fresh clone after `make venv`."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        rel = name.decode()
        src = REPO / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst, follow_symlinks=False)
    (root / ".venv").symlink_to(Path(sys.executable).resolve().parents[1])
    return root


_COMMAND = re.compile(
    r"^ {4,}(\$ |\./|\.venv/|python3? |make |export |aurora |[A-Z_]+=\S* |\S+\.(py|sh) )"
)


def indented_commands(doc: str) -> list[str]:
    """Commands in indented (unfenced) code blocks: they would not be run."""
    found: list[str] = []
    fenced = False
    previous_blank = True
    for number, line in enumerate((REPO / doc).read_text(encoding="utf-8").splitlines(), 1):
        if _FENCE.match(line) or line.strip() == "```":
            fenced = not fenced
        elif not fenced and previous_blank and _COMMAND.match(line):
            found.append(f"{doc}:{number}: {line.strip()}")
        previous_blank = not line.strip()
    return found


def test_no_command_hides_in_an_indented_block() -> None:
    hidden = [c for doc in DOCS for c in indented_commands(doc)]
    assert not hidden, f"fence these (```sh, or ```text for a synopsis): {hidden}"


def test_every_fenced_block_says_what_it_is() -> None:
    untagged = [f"{b.doc}:{b.line}" for d in DOCS for b in blocks(d) if not b.lang]
    assert not untagged, f"fenced blocks without a language tag (text, sh, yaml, ...): {untagged}"


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS)
def test_the_shell_blocks_run_as_documented(doc: str, tmp_path: Path) -> None:
    """The document's commands as a reader types them, from the root of a fresh copy,
    with no AURORA_* set (the default home is the copy's .aurora)."""
    copy = fresh_copy(tmp_path / "repo")
    venv_bin = copy / ".venv" / "bin"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AURORA_", "PYTHON", "VIRTUAL"))
    }
    env.update(
        {
            "PATH": f"{copy}:{venv_bin}:{env.get('PATH', '/usr/bin:/bin')}",
            "TMPDIR": str(tmp_path),
            "HOME": str(tmp_path),
            # the one AURORA_* kept: plugin uids are claimed in tmp, not in /var/lib
            "AURORA_UID_CLAIMS": str(tmp_path / "uid-claims"),
        }
    )
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    env["DOC_OUTPUTS"] = str(outputs)
    script = tmp_path / "doc.sh"
    script.write_text(session_script(doc))
    started = time.monotonic()
    try:
        proc = subprocess.run(
            ["bash", str(script)],
            cwd=copy,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=DOC_TIMEOUT,
        )
    finally:
        left = _processes_with(str(tmp_path))  # a document should stop what it starts
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        mounts = _unmount_below(tmp_path)  # a failed document must not leave its data images
    took = time.monotonic() - started
    report = f"{doc} ({took:.1f} s)\nstdout:\n{proc.stdout[-6000:]}\nstderr:\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0 and "doc-test: done" in proc.stdout, report
    assert not left, f"{doc} left processes running: {left}"
    assert not mounts, f"{doc} left mounts: {mounts}"
    for block in blocks(doc):
        if block.output:
            printed = (outputs / str(block.line)).read_text()
            assert comparable(printed) == comparable(block.text), (
                f"{doc}:{block.line}: the documented output differs from what was printed:\n"
                f"{printed}"
            )


def comparable(text: str) -> list[str]:
    """Lines of output as a reader compares them: paths, digests and numbers aside."""
    lines = []
    for line in text.splitlines():
        line = re.sub(r"/[^\s,)]+", "<path>", line)
        line = re.sub(r"\b[0-9a-f]{12,}\b", "<hex>", line)
        line = re.sub(r"\d+(\.\d+)*", "N", line)
        if line.strip():
            lines.append(" ".join(line.split()))
    return lines


def _unmount_below(root: Path) -> list[str]:
    """Unmount (lazily) every mount below ``root`` and free its loop devices; return them."""
    prefix = str(root) + "/"
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        points = [line.split()[4] for line in fh]
    below = sorted((p for p in points if p.startswith(prefix)), reverse=True)
    for point in below:
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    loops = subprocess.run(["losetup", "-a"], check=False, capture_output=True, text=True)
    for line in loops.stdout.splitlines():
        if prefix in line:
            subprocess.run(["losetup", "-d", line.split(":", 1)[0]], check=False)
    return below
