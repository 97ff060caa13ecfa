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
  and a back-off when descriptors run out.

The deadline costs the route fast path no timer: the protocol keeps one
timer per connection and moves a deadline (a float) as requests go by; the
timer, when it fires, re-arms itself for the current deadline or closes the
connection.  Per request that is one ``loop.time()`` at the end of the head
and one at the end of the response.
"""

from __future__ import annotations

import asyncio
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
    """How long a client may take, and how many connections went over (shared by every connection)."""

    __slots__ = ("header_s", "body_s", "header_timeouts", "body_timeouts")

    def __init__(self, header_s: float, body_s: float) -> None:
        for name, value in (("header_s", header_s), ("body_s", body_s)):
            if not 0 < value < float("inf"):
                raise ValueError(f"{name}: expected a positive number of seconds, got {value!r}")
        self.header_s = header_s
        self.body_s = body_s
        self.header_timeouts = 0
        self.body_timeouts = 0


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's head and body.

    ``_deadline`` is when the connection is closed unless the part of the
    request it waits for (``_waiting``: head or body) has arrived; ``None``
    while the application has the request.  One timer per connection checks
    it lazily, so moving the deadline costs no timer operation.
    """

    def __init__(self, config, server_state, app_state, _loop=None, *, deadlines: Deadlines,
                 on_closed: Callable[[], None]) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._deadlines = deadlines
        self._on_closed = on_closed
        self._deadline: float | None = None
        self._waiting = "head"
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._expect("head", self.loop.time() + self._deadlines.header_s)

    def connection_lost(self, exc) -> None:
        try:
            super().connection_lost(exc)
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._timer_at = float("inf")
            self._deadline = None
            self._on_closed()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # the body's clock starts now; on_message_complete stops it (at once for a request without a body)
        self._expect("body", self.loop.time() + self._deadlines.body_s)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._deadline = None

    def on_response_complete(self) -> None:
        if not self.pipeline:  # a pipelined request's head is in already
            self._expect("head", self.loop.time() + self._deadlines.header_s)
        super().on_response_complete()

    def _expect(self, part: str, deadline: float) -> None:
        """Wait for ``part`` until ``deadline``; the timer moves only if it would fire too late."""
        self._waiting = part
        self._deadline = deadline
        if self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._arm(deadline)

    def _arm(self, when: float) -> None:
        self._timer = self.loop.call_at(when, self._check_deadline)
        self._timer_at = when

    def _check_deadline(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        deadline = self._deadline
        if deadline is None or self.transport.is_closing():
            return
        if self.loop.time() < deadline:  # moved since the timer was set: wait for the new one
            self._arm(deadline)
            return
        if self._waiting == "head":
            self._deadlines.header_timeouts += 1
        else:
            self._deadlines.body_timeouts += 1
        self.transport.close()


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
            sock = listening_socket(config.host, config.port, backlog=config.backlog)
        except OSError as exc:
            _log.error("listen_failed", host=config.host, port=config.port, error=str(exc))
            await self.lifespan.shutdown()
            raise SystemExit(STARTUP_FAILURE) from None

        def protocol(on_closed):
            return TimedHttpToolsProtocol(config, self.server_state, self.lifespan.state,
                                          deadlines=self.deadlines, on_closed=on_closed)

        self.listener = Listener(sock, protocol, max_connections=self.max_connections,
                                 max_per_address=self.max_per_address, refusal=REFUSED,
                                 name="tel400-http").start()
        self.servers = [self.listener]
        self.started = True


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
