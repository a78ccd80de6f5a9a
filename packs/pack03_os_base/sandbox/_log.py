"""Logging for the library, importing `logging` only when a message is actually logged.

`import logging` costs milliseconds the launcher's start-up cannot spare (the
benchmark compares it with a bare interpreter); messages are rare.
"""

from __future__ import annotations


def debug(name: str, msg: str, *args: object) -> None:
    import logging

    logging.getLogger(name).debug(msg, *args)


def info(name: str, msg: str, *args: object) -> None:
    import logging

    logging.getLogger(name).info(msg, *args)


def warning(name: str, msg: str, *args: object) -> None:
    import logging

    logging.getLogger(name).warning(msg, *args)
