"""Shell completion for `aurora` (bash and zsh): the script `aurora completion SHELL` prints."""

from __future__ import annotations

# Verbs of each group, as their command lines define them (a test checks them against
# every CLI's --help).
VERBS: dict[str, list[str]] = {
    "pack": [
        "list", "validate", "stage", "seal", "dry-run", "install",
        "uninstall", "verify", "status", "start", "stop", "health",
    ],
    "plugin": [
        "validate", "stage", "list", "show", "enable", "disable",
        "remove", "grant", "revoke", "rollback", "policy", "call",
    ],
    "launcher": ["list", "logs", "start", "stop", "run", "call", "degraded", "limits"],
    "status": [],
    "completion": ["bash", "zsh"],
}  # fmt: skip
GLOBAL_OPTIONS = ["--home", "--json", "--help"]
#: Verbs of a group that another pack's CLI serves: `aurora plugin call` is pack04's
#: `call` (calls go through the launcher that runs the plugin).
ROUTED: dict[tuple[str, str], str] = {("plugin", "call"): "launcher"}

_BASH = """\
# bash completion for aurora: eval "$(aurora completion bash)"
_aurora() {
    local cur group words
    cur="${COMP_WORDS[COMP_CWORD]}"
    group=""
    local i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            --home) ((i++)) ;;
            -*) ;;
            *) group="${COMP_WORDS[i]}"; break ;;
        esac
    done
    if [[ "${COMP_WORDS[COMP_CWORD-1]}" == "--home" ]]; then
        mapfile -t COMPREPLY < <(compgen -d -- "$cur")
        return 0
    fi
    if [[ -z "$group" ]]; then
        words="@GROUPS@ @GLOBAL@"
    else
        case "$group" in
@CASES@
            *) words="" ;;
        esac
        if ((i + 1 < COMP_CWORD)); then
            words="@GLOBAL@"
        fi
    fi
    mapfile -t COMPREPLY < <(compgen -W "$words" -- "$cur")
    return 0
}
complete -o default -F _aurora aurora
"""

_ZSH = """\
#compdef aurora
# zsh completion for aurora: eval "$(aurora completion zsh)" (after compinit)
_aurora() {
    local -a groups verbs
    groups=(@GROUPS@)
    local group="" i=2
    while (( i < CURRENT )); do
        case ${words[i]} in
            --home) (( i++ )) ;;
            -*) ;;
            *) group=${words[i]}; break ;;
        esac
        (( i++ ))
    done
    if [[ ${words[CURRENT-1]} == --home ]]; then
        _files -/
        return
    fi
    if [[ -z $group ]]; then
        compadd -- $groups @GLOBAL@
        return
    fi
    case $group in
@CASES@
    esac
    if (( CURRENT == i + 1 )); then
        compadd -- $verbs --help
    else
        _files
    fi
}
if (( $+functions[compdef] )); then
    compdef _aurora aurora
fi
"""


def script(shell: str) -> str:
    """The completion script for ``shell`` ('bash' or 'zsh')."""
    groups = " ".join(VERBS)
    options = " ".join(GLOBAL_OPTIONS)
    if shell == "bash":
        cases = "\n".join(
            f'            {g}) words="{" ".join(v)} --help" ;;' for g, v in VERBS.items()
        )
        template = _BASH
    elif shell == "zsh":
        cases = "\n".join(f"        {g}) verbs=({' '.join(v)}) ;;" for g, v in VERBS.items())
        template = _ZSH
    else:
        raise ValueError(f"unknown shell {shell!r} (known: bash, zsh)")
    return (
        template.replace("@GROUPS@", groups).replace("@GLOBAL@", options).replace("@CASES@", cases)
    )
