"""TEST-ONLY passthrough "sandbox": applies NO confinement, only the CLI shape.

It accepts pack03's command line (``--policy P --report R -- ARGV``), records
the policy it was given in the report (so tests can check what the supervisor
asked for), and execs ARGV unconfined, as root: it checks that the policy names a
plugin uid/gid (refusing 0 and 65534 like pack03) but does not switch to it. Tests of
the supervisor's own logic use it; nothing here stands in for pack03's confinement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--policy", required=True)
    p.add_argument("--report")
    p.add_argument("--protocol-fd", type=int)
    p.add_argument("argv", nargs=argparse.REMAINDER)
    args = p.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    with open(args.policy) as fh:
        policy = json.load(fh)
    for key in ("uid", "gid"):  # pack03 never runs a plugin as root or as nobody
        if not isinstance(policy.get(key), int) or policy[key] in (0, 65534):
            print(f"passthrough: policy.{key}: {policy.get(key)!r} refused", file=sys.stderr)
            raise SystemExit(125)
    if policy.get("plugin_id") == "test.refused":
        print("passthrough: refusing as asked by the test", file=sys.stderr)
        raise SystemExit(125)
    # Plays a host that cannot enforce one denial: refused unless allow_degraded,
    # as pack03 does; the unenforced item is then listed in the report.
    gaps = ["network: test gap"] if policy.get("plugin_id") == "test.degraded" else []
    if gaps and not policy.get("allow_degraded"):
        print("passthrough: refused to start: network: test gap", file=sys.stderr)
        raise SystemExit(125)
    if args.report:
        with open(args.report, "w") as fh:
            json.dump(
                {
                    "status": "running",
                    "layers": ["test-passthrough"],
                    "policy": policy,
                    "degraded": gaps,
                },
                fh,
            )
    if args.protocol_fd is not None:  # as pack03 does: the connection is the plugin's fd 3
        if args.protocol_fd != 3:
            os.dup2(args.protocol_fd, 3)
            os.close(args.protocol_fd)
        os.environ["AURORA_PLUGIN_PROTOCOL_FD"] = "3"
    if policy.get("sdk_dir"):
        os.environ["AURORA_PLUGIN_SDK"] = policy["sdk_dir"]
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
