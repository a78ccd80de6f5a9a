"""pack03 sandbox: confine one plugin process to the capabilities it was granted.

The command line is ``sandbox/launch.py``; the modules are its library. Nothing
here is imported by other packs (they call the command line).
"""

__all__ = ["CAPABILITIES"]

#: The closed capability vocabulary shared with pack05 and pack04.
CAPABILITIES = ("fs-read", "fs-write", "gpu", "io", "network")
