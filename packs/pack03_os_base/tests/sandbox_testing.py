"""Constants the sandbox tests share (conftest imports them too; importlib mode)."""

from __future__ import annotations

import os

#: Host ids the test plugins run as: one per test session (a pid-derived block, so
#: concurrent sessions of other engineers do not share RLIMIT_NPROC/inotify counts).
PLUGIN_UID = 200000 + (os.getpid() % 100000)
PLUGIN_GID = PLUGIN_UID
