"""Every running plugin's protocol channel, as the supervisor sees them together.

The supervisor ``attach``es a channel when it starts a plugin with a protocol
connection and ``detach``es it when the run ends. In between this module routes
calls (from the operator's socket, from Aurora, and from other plugins — only as
granted), keeps the calls that arrive while a plugin is (re)starting until it is
ready or their deadline passes, asks each plugin for its health on its policy and
says which plugins turned unhealthy. Nothing a plugin sends raises out of here.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from launcher.channel import Channel, FunctionSpec, Limits, Outcome, Reply
from launcher.registry import call_grant  # the spelling of a grant: `call:<id>/<fn>`

log = logging.getLogger(__name__)

MAX_WAITING_CALLS = 64  # per plugin, while it is not ready
#: Who calls: the operator (root on the call socket), ``uid N`` (another caller the
#: operator allowed) or the id of a plugin. Callers other than the operator may hold at
#: most a quarter of a plugin's calls in flight each (4 of 16: the SDK serves 8 at
#: once), and together all but ``RESERVED``: no caller can take a plugin away from the
#: operator or from the others.
OPERATOR = "operator"
RESERVED = 4


@dataclass(frozen=True)
class HealthPolicy:
    """The manifest's ``health``: ask every ``interval_s``, wait ``timeout_s``, and
    ``failures`` unanswered or failed checks in a row make the plugin unhealthy."""

    interval_s: float = 10.0
    timeout_s: float = 2.0
    failures: int = 3


@dataclass
class _Waiting:
    function: str
    args: Any
    deadline: float
    reply: Reply


@dataclass
class _Plugin:
    channel: Channel | None = None
    functions: Mapping[str, FunctionSpec] = field(default_factory=dict)
    health: HealthPolicy | None = None
    next_health: float = 0.0
    waiting: list[_Waiting] = field(default_factory=list)
    last_call: float = 0.0
    reason: str | None = None  # why the last channel closed
    restarting: bool = False  # the supervisor will start it again: calls wait
    reported: bool = False  # this run was reported unhealthy already
    closed_at: float | None = None  # its connection closed while it promised health


class ProtocolHost:
    """The protocol side of the supervisor; driven by its loop like the channels."""

    def __init__(
        self,
        grants: Callable[[str], Iterable[str]],
        *,
        limits: Limits | None = None,
        on_log: Callable[[str, str, str, dict[str, Any]], None] | None = None,
        will_run: Callable[[str], str | None] | None = None,
    ) -> None:
        """``will_run(plugin_id)``: None when the supervisor is (re)starting, or will start
        on demand, the plugin; else why it will not run (a call then fails at once)."""
        self._grants = grants
        self._limits = limits or Limits()
        self._on_log = on_log
        self._will_run = will_run
        self._plugins: dict[str, _Plugin] = {}
        self._held: dict[tuple[str, str], int] = {}  # (plugin, caller) -> calls not ended

    # -- runs ------------------------------------------------------------------

    def attach(
        self,
        plugin_id: str,
        sock: socket.socket,
        functions: Mapping[str, FunctionSpec],
        health: HealthPolicy | None,
        now: float,
    ) -> None:
        """A run of ``plugin_id`` started with ``sock`` as the supervisor's end."""
        entry = self._plugins.setdefault(plugin_id, _Plugin())
        if entry.channel is not None:
            entry.channel.close("replaced by a new run")
        entry.functions, entry.health, entry.reason = functions, health, None
        entry.restarting, entry.reported, entry.closed_at = False, False, None
        entry.channel = Channel(
            plugin_id,
            sock,
            functions,
            now=now,
            limits=self._limits,
            on_log=lambda level, text, fields: self._log(plugin_id, level, text, fields),
            on_call_out=lambda target, fn, args, timeout, reply: self._call_out(
                plugin_id, target, fn, args, timeout, reply
            ),
        )

    def detach(self, plugin_id: str, reason: str, *, restarting: bool = False) -> None:
        """The run ended. Calls in flight fail with ``reason``; waiting calls are kept
        for the next run when ``restarting``, else they fail too."""
        entry = self._plugins.get(plugin_id)
        if entry is None:
            return
        if entry.channel is not None:
            entry.channel.close(reason)
            entry.channel = None
            entry.reason = reason
        # else the channel closed first and its own reason (a protocol breach) stays
        entry.restarting, entry.closed_at = restarting, None  # the run is over
        if not restarting:
            self._fail_waiting(entry, Outcome("not-running", message=f"{plugin_id}: {reason}"))

    def forget(self, plugin_id: str, reason: str) -> None:
        """The plugin is gone from the registry or disabled: nothing waits for it."""
        self.detach(plugin_id, reason)
        self._plugins.pop(plugin_id, None)

    # -- calls ---------------------------------------------------------------

    def call(
        self,
        plugin_id: str,
        function: str,
        args: Any,
        timeout: float,
        now: float,
        reply: Reply,
        *,
        may_wait: bool = False,
        caller: str = OPERATOR,
    ) -> None:
        """Call ``function`` of ``plugin_id``; ``reply`` gets the one outcome.

        A plugin that is starting (or restarting, or ``may_wait``: an on-call plugin
        the supervisor is about to start) gets the call once it is ready.
        """
        if caller != OPERATOR:
            limit = max(1, self._limits.max_in_flight // 4)
            others = sum(n for (pid, c), n in self._held.items() if pid == plugin_id
                         and c != OPERATOR)  # fmt: skip
            if self._held.get((plugin_id, caller), 0) >= limit or others >= max(
                1, self._limits.max_in_flight - RESERVED
            ):
                reply(Outcome("refused", message=f"{plugin_id}: too many calls in flight "
                                                 f"from {caller}"))  # fmt: skip
                return
            key = (plugin_id, caller)
            self._held[key] = self._held.get(key, 0) + 1
            reply = self._releasing(key, reply)
        entry = self._plugins.get(plugin_id)
        why_not = self._will_run(plugin_id) if self._will_run is not None else None
        if why_not is not None:  # disabled, held, failed...: even with a connection still open
            reply(Outcome("not-running", message=f"{plugin_id}: {why_not}"))
            return
        may_wait = may_wait or self._will_run is not None
        if entry is None and may_wait:
            entry = self._plugins.setdefault(plugin_id, _Plugin())
        if entry is None:
            reply(Outcome("not-running", message=f"{plugin_id}: {why_not or 'not running'}"))
            return
        entry.last_call = now
        channel = entry.channel
        if channel is not None and channel.state == "ready":
            channel.call(function, args, timeout, now, reply)
        elif (
            (channel is not None and channel.state == "handshake")
            or may_wait
            or (entry.restarting and self._will_run is None)
            or entry.waiting
        ):
            if len(entry.waiting) >= MAX_WAITING_CALLS:
                reply(Outcome("refused", message=f"{plugin_id}: too many calls waiting"))
                return
            entry.waiting.append(_Waiting(function, args, now + timeout, reply))
        else:
            why = why_not or entry.reason or "it does not speak the plugin protocol"
            reply(Outcome("not-running", message=f"{plugin_id}: {why}"))

    def _releasing(self, key: tuple[str, str], reply: Reply) -> Reply:
        done = False

        def once(outcome: Outcome) -> None:
            nonlocal done
            if not done:
                done = True
                left = self._held.get(key, 1) - 1
                if left > 0:
                    self._held[key] = left
                else:
                    self._held.pop(key, None)
            reply(outcome)

        return once

    def waiting_for(self) -> list[str]:
        """Plugins that calls are waiting for and that have no connection (to start)."""
        return [pid for pid, e in self._plugins.items() if e.waiting and e.channel is None]

    def closed_reason(self, plugin_id: str) -> str | None:
        """Why the plugin's connection closed, while it has none (None: it has one)."""
        entry = self._plugins.get(plugin_id)
        if entry is None or entry.channel is not None:
            return None
        return entry.reason or "closed"

    def any_waiting(self) -> bool:
        """Calls wait for some plugin to be ready (its next protocol pass hands them on)."""
        return any(e.waiting for e in self._plugins.values())

    def has_waiting(self, plugin_id: str) -> bool:
        entry = self._plugins.get(plugin_id)
        return entry is not None and bool(entry.waiting)

    def busy(self, plugin_id: str) -> bool:
        """Calls in flight or waiting: an on-call plugin is not idle."""
        entry = self._plugins.get(plugin_id)
        if entry is None:
            return False
        return bool(entry.waiting) or (entry.channel is not None and entry.channel.in_flight > 0)

    def idle_since(self, plugin_id: str) -> float:
        entry = self._plugins.get(plugin_id)
        return entry.last_call if entry is not None else 0.0

    def fail_waiting(self, plugin_id: str, reason: str) -> None:
        """The plugin will not run (failed, disabled, held...): waiting calls end now."""
        entry = self._plugins.get(plugin_id)
        if entry is not None and entry.waiting:
            self._fail_waiting(entry, Outcome("not-running", message=f"{plugin_id}: {reason}"))

    def _call_out(
        self, source: str, target: str, function: str, args: Any, timeout: float, reply: Reply
    ) -> None:
        if call_grant(target, function) not in set(self._grants(source)):
            reply(Outcome("refused", message=f"{source} is not granted {target}/{function}"))
            return
        self.call(target, function, args, timeout, time.monotonic(), reply, caller=source)

    # -- the loop --------------------------------------------------------------

    def channels(self) -> list[Channel]:
        """The open channels (one that closed since the last tick is left out)."""
        return [
            e.channel
            for e in self._plugins.values()
            if e.channel is not None and e.channel.state != "closed"
        ]

    def tick(self, now: float) -> list[tuple[str, str]]:
        """Deadlines, health checks, hand-over of waiting calls; returns the plugins that
        turned unhealthy (or broke the protocol) with why, for the supervisor to restart."""
        restart: list[tuple[str, str]] = []
        for plugin_id, entry in self._plugins.items():
            for expired in [w for w in entry.waiting if now >= w.deadline]:
                entry.waiting.remove(expired)
                expired.reply(Outcome("timeout", message=f"{plugin_id} was not ready in time"))
            channel = entry.channel
            if channel is None:
                # It promised health checks and runs on without its connection: as
                # unhealthy as a plugin that stopped answering, once an interval passed.
                policy = entry.health
                if (
                    policy
                    and entry.closed_at is not None
                    and now >= entry.closed_at + policy.interval_s
                ):
                    entry.closed_at = None
                    restart.append((plugin_id, f"unhealthy: {entry.reason}"))
                continue
            channel.tick(now)
            if channel.state == "closed":
                entry.reason = channel.reason
                entry.channel = None
                self._fail_waiting(
                    entry, Outcome("not-running", message=f"{plugin_id}: {channel.reason}")
                )
                if channel.reason and (
                    channel.reason.startswith("protocol")
                    # a plugin that promised health and never said hello is stuck
                    or (entry.health is not None and "handshake" in channel.reason)
                ):
                    restart.append((plugin_id, channel.reason))
                elif entry.health is not None:
                    entry.closed_at = now
                continue
            if channel.state == "ready":
                ready, entry.waiting = entry.waiting, []
                for w in ready:
                    channel.call(w.function, w.args, max(0.0, w.deadline - now), now, w.reply)
                policy = entry.health
                if policy is not None:
                    if now >= entry.next_health:
                        entry.next_health = now + policy.interval_s
                        channel.check_health(now, policy.timeout_s)
                    # Failed answers count as much as missing ones (counted as they come).
                    if channel.health_failures >= policy.failures and not entry.reported:
                        entry.reported = True
                        message = channel.health_message or "no answer"
                        restart.append((plugin_id, f"unhealthy: {message}"))
        return restart

    def next_wakeup(self, now: float) -> float:
        """Seconds until the next deadline this module keeps (at most 1 s)."""
        soonest = now + 1.0
        for entry in self._plugins.values():
            for w in entry.waiting:
                soonest = min(soonest, w.deadline)
            if entry.channel is not None and entry.health is not None:
                soonest = min(soonest, entry.next_health)
        return max(0.0, soonest - now)

    def states(self) -> dict[str, tuple[str, str | None]]:
        """(protocol state, health) of every open channel: cheap, to notice a change."""
        return {
            pid: (e.channel.state, e.channel.health_status if e.health is not None else None)
            for pid, e in self._plugins.items()
            if e.channel is not None
        }

    def status(self, plugin_id: str) -> dict[str, Any]:
        """What ``list``/``status`` show: protocol state, health and the plugin's message."""
        entry = self._plugins.get(plugin_id)
        if entry is None or (entry.channel is None and entry.reason is None):
            return {"protocol": None}
        channel = entry.channel
        if channel is None:
            return {"protocol": "closed", "reason": entry.reason}
        return {
            "protocol": channel.state,
            "health": channel.health_status if entry.health is not None else None,
            "message": channel.health_message,
            "functions": channel.offered,
        }

    def close(self, reason: str) -> None:
        for plugin_id in list(self._plugins):
            self.forget(plugin_id, reason)

    def _fail_waiting(self, entry: _Plugin, outcome: Outcome) -> None:
        waiting, entry.waiting = entry.waiting, []
        for w in waiting:
            w.reply(outcome)

    def _log(self, plugin_id: str, level: str, text: str, fields: dict[str, Any]) -> None:
        if self._on_log is None:
            return
        try:
            self._on_log(plugin_id, level, text, fields)
        except Exception:  # a log that cannot be written must not end the channel
            log.exception("%s: could not record a log record", plugin_id)
