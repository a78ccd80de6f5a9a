"""The protocol examples as real processes against the supervisor's channel: the SDK
example and the bare one (no Aurora code) both serve their declared functions."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "packs" / "pack01_common"))
from launcher.channel import Channel, FunctionSpec, Outcome  # noqa: E402

EXAMPLES = REPO / "examples" / "plugins"


def pump(channel: Channel, until: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < end, f"not reached; channel {channel.state}: {channel.reason}"
        channel.tick(time.monotonic())
        if channel.state == "closed":
            continue
        wr = [channel] if channel.wants_write else []
        readable, writable, _ = select.select([channel], wr, [], 0.05)
        if readable:
            channel.on_readable(time.monotonic())
        if writable:
            channel.on_writable()


def run_example(name: str) -> Iterator[Channel]:
    manifest = json.loads((EXAMPLES / name / "manifest.json").read_text())
    specs = {
        fn: FunctionSpec(spec.get("parameters"), spec.get("result"))
        for fn, spec in manifest["functions"].items()
    }
    ours, theirs = socket.socketpair()
    env = {
        "PATH": "/usr/bin:/bin",
        "AURORA_PLUGIN_PROTOCOL_FD": str(theirs.fileno()),
        "AURORA_PLUGIN_SDK": str(REPO / "packs" / "pack01_common"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-I", str(EXAMPLES / name / manifest["entrypoint"])],
        env=env,
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    channel = Channel(name, ours, specs)
    try:
        pump(channel, lambda: channel.state == "ready")
        yield channel
    finally:
        channel.close("test over")
        try:
            proc.wait(5)
        finally:
            proc.kill()


@pytest.fixture
def greeter() -> Iterator[Channel]:
    yield from run_example("acme.greeter")


@pytest.fixture
def bare() -> Iterator[Channel]:
    yield from run_example("acme.bare")


def call(channel: Channel, function: str, args: Any) -> Outcome:
    got: list[Outcome] = []
    channel.call(function, args, 5, time.monotonic(), got.append)
    pump(channel, lambda: bool(got))
    return got[0]


def test_the_sdk_example_greets_and_checks_its_arguments(greeter: Channel) -> None:
    assert greeter.offered == ["greet"]
    first = call(greeter, "greet", {"name": "Ada"})
    assert (first.kind, first.value) == ("result", {"greeting": "Hello, Ada!", "count": 1})
    assert call(greeter, "greet", {"nom": "Ada"}).kind == "invalid"
    greeter.check_health(time.monotonic(), 2)
    pump(greeter, lambda: greeter.health_status != "starting")
    assert (greeter.health_status, greeter.health_message) == ("healthy", "1 greeted")


def test_the_bare_example_speaks_the_protocol_without_our_code(bare: Channel) -> None:
    assert call(bare, "add", {"a": 2, "b": 40}).value == 42
    assert call(bare, "add", {"a": "2", "b": 40}).kind == "invalid"
    bare.check_health(time.monotonic(), 2)
    pump(bare, lambda: bare.health_status != "starting")
    assert bare.health_status == "healthy"


def test_the_bare_example_imports_nothing_of_aurora() -> None:
    source = (EXAMPLES / "acme.bare" / "main.py").read_text()
    assert "aurora_common" not in source and "AURORA_PLUGIN_SDK" not in source
    assert os.path.getsize(EXAMPLES / "acme.bare" / "main.py") < 4000
