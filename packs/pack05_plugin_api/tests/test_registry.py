#!/usr/bin/env python3
import tempfile, shutil
from pathlib import Path
from core.registry import PluginRegistry

def test_registry_register_and_get(tmp_path):
    # create fake manifest
    man = {"id":"acme.echo","name":"Echo","version":"0.0.1","entrypoint":"echo.py"}
    d = tmp_path / "pkg"
    d.mkdir()
    (d/"manifest.json").write_text(__import__("json").dumps(man))
    pr = PluginRegistry()
    assert pr.register(man, ["manifest.json"]) is True
    assert pr.get("acme.echo")["manifest"]["name"] == "Echo"
    # cleanup registry entry for tests
    pr.unregister("acme.echo")

