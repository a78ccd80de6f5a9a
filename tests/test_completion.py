"""`aurora completion bash|zsh`, run in the shell it is for: what each position completes to."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
AURORA = REPO / "aurora"


def _script(shell: str) -> str:
    out = subprocess.run(
        [sys.executable, str(AURORA), "completion", shell],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return out.stdout


def _bash(script: str, words: list[str]) -> list[str]:
    """What bash offers for the last of ``words`` (the word being completed)."""
    quoted = " ".join(f"'{w}'" for w in words)
    program = (
        f"{script}\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
        '_aurora; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    out = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def _zsh(script: str, words: list[str]) -> list[str]:
    """What zsh's completion function offers for the last of ``words``: compadd and
    _files stubbed to print their candidates (a completion widget needs a terminal)."""
    quoted = " ".join(f"'{w}'" for w in words)
    program = (
        "autoload -Uz compinit && compinit -u -D\n"
        f"{script}\n"
        "(( ${+_comps[aurora]} )) || { print registration-missing; exit 3 }\n"
        'compadd() { [[ $1 == -- ]] && shift; print -rl -- "$@" | grep -- "^$PREFIX" }\n'
        "_files() { print FILES }\n"
        f"words=({quoted}); CURRENT={len(words)}; PREFIX=${{words[CURRENT]}}\n"
        "_aurora\n"
    )
    out = subprocess.run(["zsh", "-f", "-c", program], capture_output=True, text=True,
                         timeout=30, cwd=REPO)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.split()


SHELLS = {"bash": _bash, "zsh": _zsh}


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_completion_offers_groups_verbs_and_skips_the_home(shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed (.ci/sysdeps installs it as root)")
    complete = SHELLS[shell]
    script = _script(shell)
    assert "plugin" in complete(script, ["aurora", "pl"])
    assert "launcher" in complete(script, ["aurora", "--json", "la"])
    verbs = complete(script, ["aurora", "plugin", ""])
    assert {"stage", "enable", "grant", "call"} <= set(verbs), verbs
    # --home DIR before the group: the group is still found.
    assert "call" in complete(script, ["aurora", "--home", "/tmp", "launcher", "c"])
