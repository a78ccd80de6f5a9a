"""The Python SDK for plugin authors: serve functions and a health check over the protocol.

A plugin declares its functions (they must also be in its manifest) and serves::

    from aurora_common.sdk import Plugin

    plugin = Plugin()

    @plugin.function("echo")
    def echo(args, ctx):
        return args

    plugin.serve()

Standard library only. Calls run on a few threads that take turns reading the
connection (``_Workers``, through epoll), so several may be in flight; ``ctx.cancelled`` is set
when the host cancels a call (its deadline passed) and ``ctx.remaining()`` tells
the time left. The wire format is docs/plugin-protocol-v1.md; nothing here is
needed to speak it.

Every plugin built on it imports it at start, so it imports little: ``_socket``
rather than ``socket`` (no ``enum``), its own threads rather than ``concurrent.futures``
(no ``logging``), no ``typing`` at run time (bench_protocol.py, "first call").
"""

from __future__ import annotations

import _socket
import os
import select
import threading
import time

from aurora_common import protocol as p

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

LEVELS = ("debug", "info", "warning", "error")
_MAKING = threading.Lock()  # a Context's event, made by its function or by a cancel


class NotConnected(RuntimeError):
    """The plugin was not started by Aurora with a protocol connection."""


class CallFailed(RuntimeError):
    """A call out to another plugin (or the handshake) was answered with an error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message


class Context:
    """What a function gets besides its arguments: its deadline and cancellation."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self._cancelled: threading.Event | None = None

    @property
    def cancelled(self) -> threading.Event:
        """Set when the host cancels the call; made at first use (most calls never ask)."""
        event = self._cancelled
        if event is None:
            with _MAKING:
                if self._cancelled is None:
                    self._cancelled = threading.Event()
                event = self._cancelled
        return event

    def remaining(self) -> float:
        """Seconds left before the caller gives up (never negative)."""
        return max(0.0, self.deadline - time.monotonic())


if TYPE_CHECKING:
    Function = Callable[[Any, Context], Any]
    Health = Callable[[], bool | tuple[bool, str]]


_ONCE = select.EPOLLIN | select.EPOLLONESHOT


class _Workers:
    """Threads that read the connection in turns and run the calls they read.

    Every idle thread waits in ``epoll_wait`` on one epoll set that holds the
    connection with ``EPOLLONESHOT``: the kernel wakes exactly one of them per
    arrival, and no other until that one has read and re-armed it. The thread that
    read a call runs it itself: nothing is handed between threads between a call's
    arrival and its answer, and no lock is waited on (a condition variable's
    hand-over costs several futex calls per call). While calls run, one more thread
    than those running is kept, to read (a cancel, a health check, the next call).
    At most ``workers`` calls run at once; beyond that calls queue, and a doorbell
    (an eventfd, also one-shot) wakes one idle thread per queued call that may run.
    """

    def __init__(self, plugin: Plugin, decoder: p.Decoder, workers: int) -> None:
        self._plugin = plugin
        self._decoder = decoder
        self._workers = workers
        self._lock = threading.Lock()  # held for bookkeeping only, never while waiting
        self._threads: list[threading.Thread] = []
        self._jobs: list[Callable[[], None]] = []  # calls read, not running yet
        self._running = 0
        self._ended = False
        self.ended = threading.Event()  # the host closed the connection (or broke framing)
        self._epoll = select.epoll()
        self._bell = os.eventfd(1)  # always readable: armed, it wakes one waiter
        self._stop = os.eventfd(0)  # readable once ended, level-triggered: wakes them all
        self._epoll.register(self._bell, select.EPOLLONESHOT)  # disarmed until rung
        self._epoll.register(self._stop, select.EPOLLIN)

    def start(self) -> None:
        assert self._plugin._sock is not None
        self._epoll.register(self._plugin._sock.fileno(), _ONCE)
        with self._lock:
            self._spawn(2)  # one to read the next message while another runs a call

    def _spawn(self, count: int) -> None:
        """Start up to ``count`` threads, at most ``workers`` + 1 in all (called locked)."""
        for _ in range(min(count, self._workers + 1 - len(self._threads))):
            thread = threading.Thread(target=self._work, name="aurora-call", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _work(self) -> None:
        sock = self._plugin._sock
        assert sock is not None
        while True:
            with self._lock:
                job = self._take()
                if job is None and self._ended:
                    return
            if job is None:
                try:
                    ready = [fd for fd, _ in self._epoll.poll()]
                except InterruptedError:
                    continue
                except (OSError, ValueError):  # the epoll set is closed: serve() returned
                    return
                if self._stop in ready:
                    return
                if sock.fileno() in ready:
                    job = self._read(sock)
                else:  # the doorbell: a queued call may run
                    with self._lock:
                        job = self._take()
            while job is not None:
                try:
                    job()  # never raises: _run_call catches what it must
                finally:
                    with self._lock:
                        self._running -= 1
                        job = self._take()

    def _take(self) -> Callable[[], None] | None:
        """A queued call for this thread to run, if the workers allow one (called locked).
        Keeps one thread free to read, and rings for the next queued call that may run."""
        if self._ended or not self._jobs or self._running >= self._workers:
            return None
        self._running += 1
        job = self._jobs.pop(0)
        if len(self._threads) - self._running < 1:
            self._spawn(1)
        if self._jobs and self._running < self._workers:
            self._epoll.modify(self._bell, _ONCE)
        return job

    def _read(self, sock: _socket.socket) -> Callable[[], None] | None:
        """Read once (this thread alone: the connection stays disarmed until re-armed
        here, after every message read is dispatched, so they are handled in order);
        return a call for this thread to run, the others queued."""
        plugin = self._plugin
        jobs: list[Callable[[], None]] = []
        ended = True  # also after a bug of ours below: the plugin ends, it does not hang
        try:
            chunk = sock.recv(65536)
            if chunk:
                for obj in self._decoder.feed(chunk):
                    job = plugin._dispatch(obj)
                    if job is not None:
                        jobs.append(job)
                with self._lock:
                    self._jobs += jobs  # queued in arrival order, before the next read
                self._epoll.modify(sock.fileno(), _ONCE)  # the next arrival: another thread
            ended = not chunk
        except (OSError, p.FramingError):
            pass  # the host went away or broke the framing: nothing more to answer
        finally:
            if ended:
                self._end()
        if ended:
            return None
        with self._lock:
            return self._take()

    def _end(self) -> None:
        """No more reading: idle threads end, queued requests get no answer."""
        with self._lock:
            self._ended = True
            self._jobs.clear()
        self._plugin._ended()
        self.ended.set()
        os.eventfd_write(self._stop, 1)

    def close(self, grace: float = 1.0) -> None:
        """Wait for the calls already read to end, at most ``grace`` seconds (a stuck
        function must not keep the plugin from exiting)."""
        deadline = time.monotonic() + grace
        with self._lock:
            self._ended, threads = True, list(self._threads)
        os.eventfd_write(self._stop, 1)  # idle threads leave (serve() may end unended)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        if not any(thread.is_alive() for thread in threads):
            # Only then: a thread still in a stuck call would write to a closed (or,
            # worse, reused) fd; the process is about to exit and frees them anyway.
            self._epoll.close()
            for fd in (self._bell, self._stop):
                os.close(fd)


class Plugin:
    """Declare functions and a health check, then ``serve()`` until the host hangs up."""

    def __init__(self, *, workers: int = 8) -> None:
        self._functions: dict[str, Function] = {}
        self._health: Health | None = None
        self._workers = workers
        self._sock: _socket.socket | None = None
        self._send_lock = threading.Lock()
        self._pending: dict[int, tuple[threading.Event, list[p.Response]]] = {}
        self._pending_lock = threading.Lock()
        self._next_id = 1
        self._calls: dict[int | str, Context] = {}
        self.protocol: str | None = None
        self.limits: dict[str, Any] = {}

    def function(self, name: str) -> Callable[[Function], Function]:
        def register(fn: Function) -> Function:
            self._functions[name] = fn
            return fn

        return register

    def health(self, fn: Health) -> Health:
        self._health = fn
        return fn

    # -- talking to the host ------------------------------------------------

    def serve(self, fd: int | None = None) -> None:
        """Handshake, then answer the host until it closes the connection."""
        self._sock = _connection(fd)
        workers = _Workers(self, p.Decoder(), self._workers)
        try:
            workers.start()
            answer = self._request(
                "aurora.hello",
                {
                    "protocols": list(p.SUPPORTED),
                    "functions": sorted(self._functions),
                    "health": self._health is not None,
                },
                timeout=None,
            )
            self.protocol = answer.get("protocol") if isinstance(answer, dict) else None
            if isinstance(answer, dict) and isinstance(answer.get("limits"), dict):
                self.limits = answer["limits"]
            workers.ended.wait()
        finally:
            workers.close()

    def log(self, level: str, message: str, **fields: Any) -> None:
        """Send a log record; it lands in the plugin's log with its level."""
        if level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}")
        self._send(
            p.notification("aurora.log", {"level": level, "message": message, "fields": fields})
        )

    def call(self, plugin: str, function: str, args: Any = None, timeout: float = 10.0) -> Any:
        """Call another plugin's function (only if granted); its value or ``CallFailed``."""
        params = {
            "plugin": plugin,
            "function": function,
            "args": args,
            "timeout_ms": int(timeout * 1000),
        }
        answer = self._request("aurora.call", params, timeout=timeout + 1.0)
        return answer.get("value") if isinstance(answer, dict) else None

    def _request(self, method: str, params: dict[str, Any], timeout: float | None) -> Any:
        with self._pending_lock:
            msg_id = self._next_id
            self._next_id += 1
            done: tuple[threading.Event, list[p.Response]] = (threading.Event(), [])
            self._pending[msg_id] = done
        try:
            self._send(p.request(msg_id, method, params))
            if not done[0].wait(timeout):
                raise CallFailed(p.DEADLINE_EXCEEDED, f"{method}: no answer in {timeout} s")
        finally:
            with self._pending_lock:
                self._pending.pop(msg_id, None)
        if not done[1]:
            raise CallFailed(p.NOT_RUNNING, f"{method}: the host closed the connection")
        response = done[1][0]
        if response.error is not None:
            raise CallFailed(response.error["code"], response.error["message"])
        return response.result

    def _send(self, message: dict[str, Any]) -> None:
        if self._sock is None:
            raise NotConnected("serve() has not been called")
        data = p.encode(message)
        with self._send_lock:
            self._sock.sendall(data)

    def _ended(self) -> None:
        with self._pending_lock:
            waiting = list(self._pending.values())
        for event, _ in waiting:
            event.set()  # no response: callers see "closed the connection"

    def _dispatch(self, obj: Any) -> Callable[[], None] | None:
        """Handle one message as it is read; a call comes back as the job that runs it."""
        try:
            message = p.classify(obj)
        except p.ProtocolError as exc:
            msg_id = obj.get("id") if isinstance(obj, dict) else None
            self._send(
                p.error(msg_id if isinstance(msg_id, int | str) else None, exc.code, exc.message)
            )
            return None
        if isinstance(message, p.Response):
            with self._pending_lock:
                waiter = self._pending.get(message.id) if isinstance(message.id, int) else None
            if waiter is not None:
                waiter[1].append(message)
                waiter[0].set()
        elif isinstance(message, p.Notification):
            if message.method == "aurora.cancel":
                ctx = self._calls.get(message.params.get("id"))  # type: ignore[arg-type]
                if ctx is not None:
                    ctx.cancelled.set()
        elif message.method == "aurora.call":
            deadline_ms = message.params.get("deadline_ms", 60_000)
            seconds = deadline_ms / 1000 if isinstance(deadline_ms, int | float) else 60.0
            ctx = Context(time.monotonic() + seconds)
            self._calls[message.id] = ctx  # before any cancel read after it
            return lambda: self._run_call(message, ctx)
        elif message.method == "aurora.health":
            # On a thread of its own: calls that fill the workers (slow ones, or a caller
            # holding many) must not make a plugin that is fine look unhealthy.
            threading.Thread(
                target=self._run_health, args=(message,), name="aurora-health", daemon=True
            ).start()
        else:
            self._send(p.error(message.id, p.METHOD_NOT_FOUND, f"unknown method {message.method}"))
        return None

    def _run_call(self, message: p.Request, ctx: Context) -> None:
        name = message.params.get("function")
        fn = self._functions.get(name) if isinstance(name, str) else None
        try:
            if fn is None:
                reply = p.error(message.id, p.METHOD_NOT_FOUND, f"no function {name!r}")
            else:
                try:
                    reply = p.result(message.id, {"value": fn(message.params.get("args"), ctx)})
                except Exception as exc:  # the plugin's own failure, reported to its caller
                    reply = p.error(message.id, p.PLUGIN_ERROR, f"{type(exc).__name__}: {exc}")
            try:
                self._send(reply)
            except (TypeError, ValueError, RecursionError) as exc:  # a value that is not JSON
                self._send(p.error(message.id, p.PLUGIN_ERROR, f"result is not JSON: {exc}"))
        except OSError:
            pass  # the host is gone
        finally:
            self._calls.pop(message.id, None)

    def _run_health(self, message: p.Request) -> None:
        status, text = "serving", ""
        if self._health is not None:
            try:
                outcome = self._health()
                ok, text = outcome if isinstance(outcome, tuple) else (bool(outcome), "")
                status = "serving" if ok else "not-serving"
            except Exception as exc:
                status, text = "not-serving", f"{type(exc).__name__}: {exc}"
        try:  # noqa: SIM105 - contextlib costs every plugin's start 5 ms
            self._send(p.result(message.id, {"status": status, "message": str(text)[:1000]}))
        except OSError:
            pass  # the host is gone


def _connection(fd: int | None) -> _socket.socket:
    if fd is None:
        raw = os.environ.get(p.FD_VARIABLE)
        if raw is None or not raw.isdigit():
            raise NotConnected(
                f"{p.FD_VARIABLE} is not set: this plugin was not started by Aurora's launcher"
            )
        fd = int(raw)
    return _socket.socket(fileno=fd)
