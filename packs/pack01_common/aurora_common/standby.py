"""Standby: an on-call plugin's interpreter, started and confined ahead of its first call.

The launcher runs ``python -I <sdk>/aurora_common/standby.py <entrypoint>`` in the
plugin's own sandbox (its uid, namespaces, limits: a run like any other) when the
plugin is idle. This imports the SDK, then waits: no plugin code runs. At the first
call the launcher writes one byte, ``\\0``, on the protocol connection; this reads
exactly that byte and runs the entrypoint as ``python -I <entrypoint>`` would, so
the plugin says hello on a clean connection. EOF instead (the launcher stopped the
standby) ends it quietly. The first call then costs the plugin's own start, not an
interpreter's and the SDK's (bench_protocol.py, "first call").
"""

import os
import sys

_SDK = os.environ.get("AURORA_PLUGIN_SDK", "")
if _SDK:
    sys.path.insert(0, _SDK)

import _socket  # noqa: E402
import runpy  # noqa: E402

import aurora_common.sdk  # noqa: E402, F401 - imported ahead: this is what standby saves

WAKE = b"\0"


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: standby.py ENTRYPOINT", file=sys.stderr)
        return 2
    entrypoint = sys.argv[1]
    raw = os.environ.get("AURORA_PLUGIN_PROTOCOL_FD", "")
    if not raw.isdigit():
        print("standby: no protocol connection (AURORA_PLUGIN_PROTOCOL_FD)", file=sys.stderr)
        return 2
    # A duplicate, so closing ours leaves the plugin's fd as the SDK expects it.
    wake = _socket.socket(fileno=os.dup(int(raw)))
    try:
        got = wake.recv(1)  # exactly one byte: what follows is the plugin's protocol
    except OSError:
        got = b""
    finally:
        wake.close()
    if got != WAKE:
        return 0  # the launcher stopped the standby before any call
    if _SDK and sys.path and sys.path[0] == _SDK:
        del sys.path[0]  # the plugin sees sys.path as `python -I entrypoint` gives it
    sys.argv = [entrypoint]
    runpy.run_path(entrypoint, run_name="__main__")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
