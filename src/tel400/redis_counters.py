"""``redis://``: counters shared by every router of a cluster of hosts.

All caps of a call are checked and counted by one server-side Lua script,
one round trip: the script reads every counter, refuses (returning the index
of the first cap at its limit) or increments them all, and gives each new
counter a time to live of its period's length, so old periods disappear by
themselves.  Keys carry the 400 number as a hash tag (``{4001012345}``), so
in a Redis Cluster all keys of one call live in one slot.

Every command has a time bound (``timeout_ms``, 20 by default): past it, or
when Redis refuses the connection, the call gets :class:`~tel400.BackendError`
and the plan's ``on_backend_error`` decides; the failure is counted.  After a
failure the backend does not try Redis again for ``backoff_ms`` (1000), so
that during an outage decisions cost no waiting at all; then it reconnects by
itself.  The client (redis-py) keeps a connection pool per process and
starts a fresh one after a fork.

URL: ``redis://[:password@]host:port/db`` or ``rediss://`` for TLS, with
optional ``?timeout_ms=20&backoff_ms=1000&max_connections=64``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .counters import CapCheck, CounterBackend
from .exceptions import BackendError

# KEYS: one counter key per cap (key:period).
# ARGV: n, then per cap: limit, increment, ttl; then dry_run (0/1).
# Returns -1 when all caps had room (and were counted), else the 0-based
# index of the first cap at its limit (nothing counted).
_ACQUIRE = """
local n = tonumber(ARGV[1])
for i = 1, n do
  local value = tonumber(redis.call('GET', KEYS[i]) or '0')
  if value >= tonumber(ARGV[1 + 3 * i - 2]) then
    return i - 1
  end
end
if ARGV[2 + 3 * n] == '1' then
  return -1
end
for i = 1, n do
  local increment = tonumber(ARGV[1 + 3 * i - 1])
  if increment > 0 then
    local value = redis.call('INCRBY', KEYS[i], increment)
    if value == increment then
      redis.call('EXPIRE', KEYS[i], tonumber(ARGV[1 + 3 * i]))
    end
  end
end
return -1
"""

# KEYS[1]: counter; ARGV: amount, ttl.
_ADD = """
local value = redis.call('INCRBY', KEYS[1], tonumber(ARGV[1]))
if value == tonumber(ARGV[1]) then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return value
"""

# KEYS[1]: the caller's failure count; the window opens with the first
# failure and is the key's time to live.
_PIN_FAILURE = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
end
return count
"""


class RedisCounters(CounterBackend):
    """Counters in Redis, exact across every router that uses the same server."""

    def __init__(self, url: str, *, timeout_ms: float | None = None, backoff_ms: float | None = None,
                 max_connections: int | None = None, clock=time.monotonic) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        parts = urlsplit(url)
        options = dict(parse_qsl(parts.query))
        timeout_ms = float(options.pop("timeout_ms", timeout_ms if timeout_ms is not None else 20))
        backoff_ms = float(options.pop("backoff_ms", backoff_ms if backoff_ms is not None else 1000))
        max_connections = int(options.pop("max_connections", max_connections or 64))
        client_url = urlunsplit(parts._replace(query=urlencode(options)))
        self.url = url
        self.timeout_s = timeout_ms / 1000
        self.backoff_s = backoff_ms / 1000
        self._redis_error = redis.RedisError
        self._client = redis.Redis.from_url(
            client_url,
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 0),  # one attempt: the time bound is the bound
            retry_on_timeout=False,
            max_connections=max_connections,
            health_check_interval=0,
        )
        self._acquire = self._client.register_script(_ACQUIRE)
        self._add = self._client.register_script(_ADD)
        self._pin_failure = self._client.register_script(_PIN_FAILURE)
        self._clock = clock
        self._down_until = 0.0
        self._lock = threading.Lock()
        #: failures by kind ("timeout", "connection", "error", "backoff"), for metrics.
        self.failures: Counter[str] = Counter()

    # -- plumbing -------------------------------------------------------------

    def _call(self, what: str, fn, *args, **kwargs):
        if self._down_until and self._clock() < self._down_until:
            self.failures["backoff"] += 1
            raise BackendError(f"redis counters: unavailable, retrying in under {self.backoff_s:g} s")
        try:
            result = fn(*args, **kwargs)
        except self._redis_error as exc:
            import redis

            kind = (
                "timeout" if isinstance(exc, redis.TimeoutError)
                else "connection" if isinstance(exc, redis.ConnectionError)
                else "error"
            )
            self.failures[kind] += 1
            with self._lock:
                self._down_until = self._clock() + self.backoff_s
            raise BackendError(f"redis counters: {what} failed ({kind}: {exc})") from None
        if self._down_until:
            self._down_until = 0.0
        return result

    @staticmethod
    def _counter(key: str, period: int) -> str:
        return f"{key}:{period}"

    # -- the interface --------------------------------------------------------

    def acquire(self, checks: Sequence[CapCheck], *, dry_run: bool = False) -> int:
        keys = [self._counter(c.key, c.period) for c in checks]
        args: list = [len(checks)]
        for c in checks:
            args += [c.limit, c.increment, c.ttl_s]
        args.append(1 if dry_run else 0)
        return int(self._call("acquire", self._acquire, keys=keys, args=args))

    def add(self, key: str, period: int, amount: int, ttl_s: int) -> int:
        return int(self._call("add", self._add, keys=[self._counter(key, period)], args=[amount, ttl_s]))

    def value(self, key: str, period: int) -> int:
        raw = self._call("value", self._client.get, self._counter(key, period))
        return int(raw or 0)

    def pin_failures(self, key: str, now: float, window_s: int) -> int:
        # The window is the key's time to live, measured by the server's clock.
        raw = self._call("pin_failures", self._client.get, key)
        return int(raw or 0)

    def add_pin_failure(self, key: str, now: float, window_s: int) -> int:
        return int(self._call("add_pin_failure", self._pin_failure, keys=[key], args=[window_s]))

    def clear_pin_failures(self, key: str) -> None:
        self._call("clear_pin_failures", self._client.delete, key)

    def close(self) -> None:
        self._client.close()

    def ping(self) -> bool:
        """Whether Redis answers now (ignores the backoff)."""
        try:
            return bool(self._client.ping())
        except self._redis_error:
            return False
