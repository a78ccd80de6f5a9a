"""acme.greeter: greet(name) over aurora-plugin-protocol-v1, in a few lines with the SDK.

The launcher hands the SDK's directory in AURORA_PLUGIN_SDK (read-only in the
sandbox) and the protocol connection in AURORA_PLUGIN_PROTOCOL_FD.
"""

import os
import sys

sys.path.insert(0, os.environ["AURORA_PLUGIN_SDK"])

from aurora_common.sdk import Context, Plugin

plugin = Plugin()
greeted = 0


@plugin.function("greet")
def greet(args: dict, ctx: Context) -> dict:
    global greeted
    greeted += 1
    plugin.log("info", "greeting", name=args["name"], count=greeted)
    return {"greeting": f"Hello, {args['name']}!", "count": greeted}


@plugin.health
def health() -> tuple[bool, str]:
    return True, f"{greeted} greeted"


if __name__ == "__main__":
    plugin.serve()
