"""`aurora status`: packs, health, plugins, grants and the launcher of one home, at a glance."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from aurora_cli.delegate import capture_child, installer_argv, installer_env, pack_cli_env
from aurora_cli.home import installed

Problem = tuple[int, str]


def _document(code: int, out: str, err: str, what: str) -> tuple[dict[str, Any], Problem | None]:
    """The envelope a child printed; a child that printed none is a problem naming it."""
    try:
        doc = json.loads(out)
    except ValueError:
        tail = err.strip().splitlines()[-1:] or ["no output"]
        return {}, (code or 1, f"{what}: no JSON document ({tail[0]})")
    if not isinstance(doc, dict):
        return {}, (code or 1, f"{what}: not a JSON object")
    return doc, None


def _pack_doc(home: Path, pack_id: str, script: str, prog: str) -> dict[str, Any] | None:
    """``<pack CLI> list --json`` of the installed pack (None if not installed)."""
    pack = installed(home, pack_id)
    if pack is None:
        return None
    argv = [sys.executable, str(pack.root / script), "list", "--json"]
    code, out, err = capture_child(argv, pack_cli_env(pack, prog))
    doc, problem = _document(code, out, err, f"{prog} list")
    return {
        "pack": pack_id,
        "version": pack.version,
        "exit": code,
        "result": doc.get("result"),
        "error": (doc.get("error") or {}).get("message") if problem is None else problem[1],
    }


def collect(home: Path) -> tuple[dict[str, Any], Problem | None]:
    """Everything ``aurora status`` shows, and the first problem met (exit code, message)."""
    code, out, err = capture_child(installer_argv(home, ["status", "--json"]), installer_env(home))
    doc, problem = _document(code, out, err, "aurora pack status")
    if problem is None and not doc.get("ok"):
        problem = (code, (doc.get("error") or {}).get("message") or "aurora pack status failed")
    packs = (doc.get("result") or {}).get("packs", []) if problem is None else []
    plugins = _pack_doc(home, "pack05_plugin_api", "plugins.py", "aurora plugin")
    launcher = _pack_doc(home, "pack04_launcher", "launcher_cli.py", "aurora launcher")
    # The launcher's view of each plugin (state, pid) beside the registry's.
    running = ((launcher or {}).get("result") or {}).get("plugins") or {}
    for row in ((plugins or {}).get("result") or {}).get("plugins", []):
        seen = running.get(row["id"]) or {}
        row["launcher_state"] = seen.get("state")
        row["launcher_pid"] = seen.get("pid")
        # From the plugin's own health checks (protocol plugins): starting/healthy/unhealthy.
        row["health"] = seen.get("health")
        row["health_message"] = seen.get("health_message")
    return {"home": str(home), "packs": packs, "plugins": plugins, "launcher": launcher}, problem


def _pack_line(p: dict[str, Any]) -> str:
    version = p.get("active_version") or "-"
    line = f"  {p['pack']:<20} {version:<8} {p['state']}"
    rt = p.get("runtime") or {}
    if rt.get("pid"):
        line += f" (pid {rt['pid']})"
    health = (rt.get("health") or {}).get("status")
    return line + (f", health {health}" if health else "")


def _plugin_line(p: dict[str, Any]) -> str:
    line = (
        f"  {p['id']:<24} {p.get('active_version') or '-':<8} "
        f"{'enabled' if p['enabled'] else 'disabled':<9} "
        f"granted={','.join(p['granted']) or '-'}"
    )
    if p.get("missing"):
        line += f" missing={','.join(p['missing'])}"
    if p.get("blocked"):
        line += f" blocked={','.join(p['blocked'])} (policy)"
    if p.get("launcher_state"):
        line += f"  launcher: {p['launcher_state']}"
        if p.get("launcher_pid"):
            line += f" (pid {p['launcher_pid']})"
    if p.get("health"):
        message = "".join(c if c.isprintable() else "?" for c in str(p.get("health_message") or ""))
        line += f", {p['health']}" + (f": {message[:80]}" if message else "")
    return line


def show(result: dict[str, Any]) -> list[str]:
    """The human text of ``aurora status``."""
    lines = [f"home {result['home']}", "packs:"]
    lines += [_pack_line(p) for p in result["packs"]] or ["  nothing staged or installed yet"]
    plugins = result["plugins"]
    if plugins is None:
        lines.append("plugins: pack05_plugin_api not installed")
    else:
        lines.append(f"plugins ({plugins['pack']} {plugins['version']}):")
        rows = (plugins["result"] or {}).get("plugins", [])
        unknown = plugins["result"] is None  # the pack's command failed: nothing is known
        lines += [_plugin_line(p) for p in rows] or ["  unknown" if unknown else "  none staged"]
        if plugins["error"]:
            lines.append(f"  error: {plugins['error']}")
    launcher = result["launcher"]
    if launcher is None:
        lines.append("launcher: pack04_launcher not installed")
    else:
        service = (launcher["result"] or {}).get("service") or {}
        state = f"running (pid {service['pid']})" if service.get("running") else "not running"
        lines.append(f"launcher ({launcher['pack']} {launcher['version']}): service {state}")
    return lines
