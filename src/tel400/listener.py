"""Accepting TCP connections under limits, for tel400-http and tel400-esl.

A :class:`Listener` runs one accept loop on a listening socket and enforces,
before a connection costs more than its file descriptor:

* an allow-list of client addresses (``allow``, a
  :class:`tel400.addresses.AllowList`): a connection from anywhere else is
  closed at once, before the protocol sees a byte of it;
* a total (``max_connections``): at the limit it stops accepting, so new
  connections wait in the kernel's listen backlog until one closes, instead
  of being accepted only to be refused;
* a share per client address (``max_per_address``): a connection over it is
  closed at once (after ``refusal``, if given: a 503 for HTTP), so that one
  host cannot take every slot while the others are still served;
* a back-off when ``accept()`` fails for want of resources (``EMFILE``,
  ``ENFILE``, ``ENOBUFS``, ``ENOMEM``): accepting pauses for ``backoff_s``
  and the failure is logged at most once per ``log_interval_s``, with how
  many there were.  asyncio's own accept loop (CPython 3.11) logs every
  failed ``accept()`` of a burst with its traceback, up to the backlog's
  1,024 a time, and schedules as many retries: 1,100 connections over a
  1,024-descriptor limit wrote 209 MB of log in 40 s.  (uvloop's libuv
  accepts and closes such connections silently.)

Every refusal and failure is counted in :attr:`Listener.stats` (and, through
:class:`ListenerCollector`, in Prometheus).  The accept loop costs one await
per connection; requests on an open connection never pass through here.

The protocol factory receives a callable to call once from the protocol's
``connection_lost``; that is how the listener learns a slot is free.
"""

from __future__ import annotations

import asyncio
import errno
import resource
import socket
import time
from collections.abc import Callable

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .addresses import AllowList

_log = structlog.get_logger("tel400.listener")

#: accept() errors about one connection that went away before it was accepted: skip it.
_CONNECTION_GONE = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.ECONNRESET, errno.EPERM})
#: connections taken in one go when several are waiting (asyncio takes up to the backlog)
_BURST = 64


class ListenerStats:
    """What a listener did: connections open and accepted, refused and failed accepts."""

    __slots__ = ("open", "accepted", "refused_address", "refused_per_address", "accept_errors", "at_limit")

    def __init__(self) -> None:
        self.open = 0
        self.accepted = 0
        self.refused_address = 0  # from an address the allow-list does not name
        self.refused_per_address = 0
        self.accept_errors = 0  # accept() out of descriptors or memory
        self.at_limit = 0  # times the listener stopped accepting at max_connections


class RareLog:
    """A warning logged at most once per interval, with how many occurrences it stands for.

    For events a stranger can cause at will (a refused connection, a failed
    accept): the log grows with time, not with the attack.  Occurrences held
    back are told at the end of their interval (with the last one's fields),
    so none goes unreported.
    """

    def __init__(self, event: str, interval_s: float = 10.0, logger=None) -> None:
        self.event = event
        self.interval_s = interval_s
        self._logger = logger or _log
        self._last = -float("inf")
        self._held = 0
        self._fields: dict = {}

    def __call__(self, **fields) -> None:
        self._held += 1
        self._fields = fields
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._emit(now)
        elif self._held == 1:  # the first held back: tell it when the interval ends
            try:
                asyncio.get_running_loop().call_later(self._last + self.interval_s - now, self._flush)
            except RuntimeError:  # no loop: told with the next occurrence after the interval
                pass

    def _flush(self) -> None:
        if self._held:
            self._emit(time.monotonic())

    def _emit(self, now: float) -> None:
        self._logger.warning(self.event, occurrences=self._held, interval_s=self.interval_s, **self._fields)
        self._last = now
        self._held = 0


class _Slot:
    """One accepted connection's place in the counts, given back exactly once."""

    __slots__ = ("_listener", "address")

    def __init__(self, listener: Listener, address: str) -> None:
        self._listener = listener
        self.address = address

    def release(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener._release(self.address)


class Listener:
    """Accepts connections on ``sock`` and hands each to a protocol, within limits.

    Args:
        sock: a bound, listening TCP socket (made non-blocking here).
        protocol_factory: ``factory(on_closed) -> asyncio.Protocol``; the
            protocol must call ``on_closed()`` from ``connection_lost``.
        max_connections: connections open at once at most; at the limit the
            listener stops accepting until one closes.
        max_per_address: connections from one client address at most; more
            are closed at once.
        allow: the client addresses served (``None``: any); a connection
            from another is closed at once, nothing written, and not counted
            as accepted.
        refusal: bytes written (best effort) to a connection refused for its
            address's share before it is closed.
        backoff_s: how long accepting pauses after an out-of-resources error.
        log_interval_s: at most one log line per interval for each kind of
            refusal or failure.
        on_full: called when ``max_connections`` are open, and every
            ``backoff_s`` while they stay open or ``accept()`` fails: it may
            close connections that are cheap to lose (tel400-http closes those
            waiting longest for a request).
        name: the server's name in log lines and metrics.

    Cost: a task and two dict operations per accepted connection (one await
    per burst of waiting connections).
    """

    def __init__(self, sock: socket.socket, protocol_factory: Callable[[Callable[[], None]], asyncio.Protocol], *,
                 max_connections: int, max_per_address: int, allow: AllowList | None = None,
                 refusal: bytes = b"", backoff_s: float = 0.1,
                 log_interval_s: float = 10.0, on_full: Callable[[], None] | None = None,
                 name: str = "tcp") -> None:
        if max_connections < 1 or max_per_address < 1:
            raise ValueError("max_connections and max_per_address: expected at least 1")
        sock.setblocking(False)
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.allow = allow
        self.refusal = refusal
        self.backoff_s = backoff_s
        self.on_full = on_full
        self.name = name
        self.stats = ListenerStats()
        self._per_address: dict[str, int] = {}
        self._room = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._opening: set[asyncio.Task] = set()
        self._closed = asyncio.Event()
        self._log_failed = RareLog("accept_failed", log_interval_s)
        self._log_refused = RareLog("connection_refused_per_address", log_interval_s)
        self._log_stranger = RareLog("connection_refused_address", log_interval_s)
        self._log_full = RareLog("connections_at_limit", log_interval_s)

    @property
    def sockets(self) -> list[socket.socket]:
        return [self.sock]

    def connections_from(self, address: str) -> int:
        """Connections open from one client address."""
        return self._per_address.get(address, 0)

    def start(self) -> Listener:
        self._task = asyncio.get_running_loop().create_task(self._keep_serving(), name=f"{self.name}-accept")
        return self

    def close(self) -> None:
        """Stop accepting and close the listening socket (open connections are not touched)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.sock.fileno() != -1:
            self.sock.close()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # -- the accept loop ---------------------------------------------------------------------

    async def _keep_serving(self) -> None:
        """The accept loop, restarted if anything in it fails: a server that stops accepting is a dead server."""
        while self.sock.fileno() != -1:
            try:
                await self._serve()
            except Exception:
                _log.exception("accept_loop_failed", server=self.name)
                await asyncio.sleep(self.backoff_s)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.stats.open >= self.max_connections:
                await self._wait_for_room()
                continue
            try:
                self._take(loop, *await loop.sock_accept(self.sock))
                # a burst: take what else is waiting without a trip through the loop for each
                for _ in range(_BURST):
                    if self.stats.open >= self.max_connections:
                        break
                    self._take(loop, *self.sock.accept())
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                if self.sock.fileno() == -1:
                    return  # closed
                if exc.errno in _CONNECTION_GONE:
                    continue
                # out of descriptors or memory (or anything else accept() may say): pause, never spin or stop
                self.stats.accept_errors += 1
                self._log_failed(server=self.name, error=exc.strerror or str(exc), errno=exc.errno,
                                 accept_errors=self.stats.accept_errors, open=self.stats.open)
                if self.on_full is not None:
                    self.on_full()  # out of descriptors is full too
                await asyncio.sleep(self.backoff_s)

    def _take(self, loop: asyncio.AbstractEventLoop, conn: socket.socket, peer) -> None:
        address = peer[0] if isinstance(peer, tuple) else str(peer)
        if self.allow is not None and not self.allow.allows(address):
            self._refuse_stranger(conn, address)
            return
        if self._per_address.get(address, 0) >= self.max_per_address:
            self._refuse(conn, address)
            return
        try:
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # answers go out whole: no Nagle delay
        except OSError:  # reset already
            conn.close()
            return
        self._per_address[address] = self._per_address.get(address, 0) + 1
        self.stats.open += 1
        self.stats.accepted += 1
        task = loop.create_task(self._open(loop, conn, _Slot(self, address)))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    async def _wait_for_room(self) -> None:
        self.stats.at_limit += 1
        self._log_full(server=self.name, max_connections=self.max_connections)
        self._room.clear()
        if self.on_full is None:
            await self._room.wait()
            return
        while not self._room.is_set():
            # again every backoff_s: connections just accepted may not be set up (nor sheddable) yet
            self.on_full()
            try:
                async with asyncio.timeout(self.backoff_s):
                    await self._room.wait()
            except TimeoutError:
                pass

    def _refuse_stranger(self, conn: socket.socket, address: str) -> None:
        """Close a connection from an address the allow-list does not name, without a word."""
        self.stats.refused_address += 1
        self._log_stranger(server=self.name, address=address, allow=str(self.allow),
                           refused_address=self.stats.refused_address)
        conn.close()

    def _refuse(self, conn: socket.socket, address: str) -> None:
        self.stats.refused_per_address += 1
        self._log_refused(server=self.name, address=address, max_per_address=self.max_per_address)
        try:
            if self.refusal:
                conn.send(self.refusal)  # non-blocking; a few bytes fit in any send buffer
        except OSError:
            pass
        conn.close()

    async def _open(self, loop: asyncio.AbstractEventLoop, conn: socket.socket, slot: _Slot) -> None:
        try:
            await loop.connect_accepted_socket(lambda: self.protocol_factory(slot.release), conn)
        except Exception as exc:  # the connection died on the way in: give its place back
            _log.warning("connection_setup_failed", server=self.name, address=slot.address,
                         error=f"{type(exc).__name__}: {exc}")
            slot.release()
            conn.close()

    def _release(self, address: str) -> None:
        left = self._per_address[address] - 1
        if left:
            self._per_address[address] = left
        else:
            del self._per_address[address]
        self.stats.open -= 1
        self._room.set()


#: Listening sockets a supervisor bound before forking (:func:`hand_over`), by the (host, port) asked for.
_handed_over: dict[tuple[str, int], socket.socket] = {}


def hand_over(host: str, port: int, sock: socket.socket) -> None:
    """Make the next ``listening_socket(host, port)`` in this process return ``sock`` instead of binding.

    For worker processes (:mod:`tel400.workers`): the parent binds once and
    each worker serves the inherited socket, whatever server code asks for it.
    """
    _handed_over[(host, port)] = sock


def listening_socket(host: str, port: int, backlog: int = 1024, *, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to ``host:port`` (the first address ``host`` resolves to, ``SO_REUSEADDR``), listening.

    A socket given to :func:`hand_over` for ``(host, port)`` is returned
    instead (once), as it is.  ``reuse_port``: ``SO_REUSEPORT`` too, so that
    other sockets of this user may listen on the same port (the kernel
    spreads the connections over them).

    Raises:
        OSError: the name does not resolve, or the address cannot be bound.
    """
    handed = _handed_over.pop((host, port), None)
    if handed is not None:
        return handed
    family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def raise_descriptor_limit(wanted: int, *, name: str) -> int:
    """Raise this process's soft limit on open files towards ``wanted`` (up to the hard limit).

    Servers need a descriptor per connection plus a few dozen for the
    process; the usual soft limit of 1,024 is lower than the default
    connection limits.  Logs a warning when the hard limit is too low.

    Returns:
        The soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < wanted:
        _log.warning("descriptor_limit_low", server=name, limit=soft, wanted=wanted,
                     hint="raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower --max-connections")
    return soft


class ListenerCollector:
    """Prometheus metrics of one listener (``tel400_<name>_connections*``)."""

    def __init__(self, get_listener: Callable[[], Listener | None], prefix: str) -> None:
        self._get = get_listener
        self._prefix = prefix

    def collect(self):
        listener = self._get()
        if listener is None:
            return
        s, p = listener.stats, self._prefix
        yield GaugeMetricFamily(f"{p}_connections_open", "Connections open now.", value=s.open)
        yield CounterMetricFamily(f"{p}_connections_accepted", "Connections accepted.", value=s.accepted)
        if listener.allow is not None:  # tel400-http checks addresses per endpoint instead: no such refusals
            yield CounterMetricFamily(f"{p}_connections_refused_address",
                                      "Connections closed at once: their address is not in the allow-list.",
                                      value=s.refused_address)
        yield CounterMetricFamily(f"{p}_connections_refused_per_address",
                                  "Connections closed at once: their address had its share open.",
                                  value=s.refused_per_address)
        yield CounterMetricFamily(f"{p}_accept_errors",
                                  "accept() failures for want of descriptors or memory (each pauses accepting).",
                                  value=s.accept_errors)
        yield CounterMetricFamily(f"{p}_connections_at_limit",
                                  "Times accepting stopped because max_connections were open.", value=s.at_limit)
