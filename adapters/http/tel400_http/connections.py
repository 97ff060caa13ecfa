"""Slow, silent and too many connections: deadlines and limits around uvicorn.

uvicorn bounds only the wait *between* requests (``timeout_keep_alive``,
armed when a response ends) and answers 503 beyond ``limit_concurrency``
while still accepting.  A connection that never sends a byte, or sends its
head one byte a second, is held forever, and enough of them (4,200 slow or
5,000 idle were enough) made every switch's request a 503.  Here:

* :class:`TimedHttpToolsProtocol`, uvicorn's httptools protocol with two
  deadlines: the complete request head within ``header_s`` of the connection
  opening or the previous response ending, and the complete body within
  ``body_s`` of the head.  A connection past its deadline is closed (no
  answer: a client this slow is not reading one).  The idle timeout between
  requests stays uvicorn's keep-alive timer.
* :class:`LimitedServer`, a ``uvicorn.Server`` that accepts through
  :class:`tel400.listener.Listener`: a total, a share per client address,
  and a back-off when descriptors run out.  At the total it closes the
  connections that have waited longest for a request head, so that idle
  clients cannot keep a switch waiting until their deadline.

The deadlines cost the request path nothing: no callback of uvicorn's is
overridden (overriding the three per-request ones to move a float deadline
cost 2-3 µs a request, measured); a timer per connection looks at the state
uvicorn keeps eight times per deadline (4,096 connections with the default
10 s: ~3,300 short callbacks a second).
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable

import structlog
import uvicorn
from prometheus_client.core import CounterMetricFamily
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tel400.listener import Listener, ListenerCollector, listening_socket

_log = structlog.get_logger("tel400.http")

_REFUSED_BODY = b'{"error":"too_many_connections","message":"too many connections from your address"}'
#: what a connection refused for its address gets before it is closed
REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
           b"connection: close\r\n\r\n%s" % (len(_REFUSED_BODY), _REFUSED_BODY))


class Deadlines:
    """How long a client may take, and how many connections went over (shared by every connection).

    A connection is looked at every ``tick_s`` (an eighth of the shorter
    deadline), so it is closed between its deadline and a quarter later.
    """

    __slots__ = ("header_s", "body_s", "tick_s", "header_timeouts", "body_timeouts", "shed")

    def __init__(self, header_s: float, body_s: float) -> None:
        for name, value in (("header_s", header_s), ("body_s", body_s)):
            if not 0 < value < float("inf"):
                raise ValueError(f"{name}: expected a positive number of seconds, got {value!r}")
        self.header_s = header_s
        self.body_s = body_s
        self.tick_s = min(header_s, body_s) / 8
        self.header_timeouts = 0
        self.body_timeouts = 0
        self.shed = 0  # closed at the connection limit to make room (waiting for a request head)


_HEAD, _BODY = "head", "body"


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's head and body.

    The request path is not touched: a timer per connection looks, every
    ``tick_s``, at what the connection waits for, from the state uvicorn
    keeps anyway: the current request cycle (``None`` before the first
    request; replaced when a head is complete), whether its response is
    complete (then the next head is awaited) and whether its body is still
    coming.  A wait seen unchanged for longer than its deadline closes the
    connection (no answer: a client this slow is not reading one).  A wait
    is dated from the tick that first saw it (the connection's start for the
    first), so the deadline is never cut short.
    """

    def __init__(self, config, server_state, app_state, _loop=None, *, deadlines: Deadlines,
                 on_closed: Callable[[], None]) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._deadlines = deadlines
        self._on_closed = on_closed
        self._wait: tuple | None = None  # (_HEAD or _BODY, the cycle) seen at the last tick
        self._since = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._wait = (_HEAD, None)
        self._since = self.loop.time()
        self._timer = self.loop.call_at(self._since + self._deadlines.tick_s, self._tick)

    def connection_lost(self, exc) -> None:
        try:
            super().connection_lost(exc)
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._wait = None
            self._on_closed()

    def _waiting_for(self) -> tuple | None:
        """What the connection waits for from the client now; ``None`` while the application has the request."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return None if self.pipeline else (_HEAD, cycle)
        if cycle.more_body:
            return _BODY, cycle
        return None

    def head_wait_since(self) -> float | None:
        """When this connection began waiting for a request head (as the ticks know it); ``None`` if it is not."""
        wait = self._waiting_for()
        if wait is None or wait[0] is not _HEAD or self.transport.is_closing():
            return None
        if self._wait is not None and self._wait[0] is _HEAD and self._wait[1] is wait[1]:
            return self._since
        return self.loop.time()  # began since the last tick

    def _tick(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        wait = self._waiting_for()
        if wait is None or self._wait is None or wait[0] != self._wait[0] or wait[1] is not self._wait[1]:
            self._wait, self._since = wait, now  # something moved since the last look
        elif now - self._since >= (self._deadlines.header_s if wait[0] is _HEAD else self._deadlines.body_s):
            if wait[0] is _HEAD:
                self._deadlines.header_timeouts += 1
            else:
                self._deadlines.body_timeouts += 1
            self.transport.close()
            return
        self._timer = self.loop.call_at(now + self._deadlines.tick_s, self._tick)


class LimitedServer(uvicorn.Server):
    """``uvicorn.Server`` accepting through a :class:`~tel400.listener.Listener`, with request deadlines.

    Args:
        config: the uvicorn configuration (``host``, ``port``, ``backlog`` are used from it).
        deadlines: the head and body deadlines.
        max_connections, max_per_address: the listener's limits.
    """

    def __init__(self, config: uvicorn.Config, *, deadlines: Deadlines, max_connections: int,
                 max_per_address: int) -> None:
        super().__init__(config)
        self.deadlines = deadlines
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.listener: Listener | None = None

    async def startup(self, sockets=None) -> None:
        # uvicorn.Server.startup with the listener in place of loop.create_server
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            raise SystemExit(STARTUP_FAILURE)
        config = self.config
        try:
            sock = sockets[0] if sockets else listening_socket(config.host, config.port, backlog=config.backlog)
        except OSError as exc:
            _log.error("listen_failed", host=config.host, port=config.port, error=str(exc))
            await self.lifespan.shutdown()
            raise SystemExit(STARTUP_FAILURE) from None

        def protocol(on_closed):
            return TimedHttpToolsProtocol(config, self.server_state, self.lifespan.state,
                                          deadlines=self.deadlines, on_closed=on_closed)

        self.listener = Listener(sock, protocol, max_connections=self.max_connections,
                                 max_per_address=self.max_per_address, refusal=REFUSED, on_full=self.make_room,
                                 name="tel400-http").start()
        self.servers = [self.listener]
        self.started = True

    def make_room(self) -> None:
        """At the connection limit: close the connections that have waited longest for a request head.

        A sixteenth of the places at most, so that connections full of idle or
        slow clients take new ones at once instead of after the header
        timeout.  A client between two requests loses its kept-alive
        connection and opens another.  Cost: one pass over the connections.
        """
        waiting = []
        for connection in self.server_state.connections:
            since = connection.head_wait_since() if isinstance(connection, TimedHttpToolsProtocol) else None
            if since is not None:
                waiting.append((since, id(connection), connection))
        for _, _, connection in heapq.nsmallest(max(1, self.max_connections // 16), waiting):
            self.deadlines.shed += 1
            connection.transport.close()


class ConnectionCollector(ListenerCollector):
    """The listener's metrics (``tel400_http_connections_*``) and the deadlines' (``tel400_http_*_timeouts``)."""

    def __init__(self, server: LimitedServer) -> None:
        super().__init__(lambda: server.listener, "tel400_http")
        self._server = server

    def collect(self):
        yield from super().collect()
        d = self._server.deadlines
        yield CounterMetricFamily("tel400_http_header_timeouts",
                                  "Connections closed: no complete request head within --header-timeout.",
                                  value=d.header_timeouts)
        yield CounterMetricFamily("tel400_http_body_timeouts",
                                  "Connections closed: no complete request body within --body-timeout.",
                                  value=d.body_timeouts)
        yield CounterMetricFamily("tel400_http_connections_shed",
                                  "Connections waiting for a request head, closed at --max-connections to make room.",
                                  value=d.shed)
