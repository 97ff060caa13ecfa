"""``redis://``: counters shared by every router of a cluster of hosts.

All caps of a call are checked and counted by one server-side Lua script,
one round trip: the script reads every counter, refuses (returning the index
of the first cap at its limit) or increments them all, and gives each new
counter a time to live of its period's length, so old periods disappear by
themselves.  Keys carry the 400 number as a hash tag (``{4001012345}``), so
in a Redis Cluster all keys of one call live in one slot, and the script
runs on the node that serves it.

When Redis is slow or gone (docs/limits.md, "Redis counters when Redis is
slow or gone"):

* Every command has a time bound (``timeout_ms``, 20 by default): past it,
  or when Redis refuses the connection, the call gets
  :class:`~tel400.BackendError` and the plan's ``on_backend_error`` decides;
  the failure is counted.
* **A call that got BackendError is never counted.**  Redis runs a script
  it has received even when the client stopped waiting (a paused or
  overloaded server runs it when it resumes).  So the connection of a timed
  out acquire is not closed but kept aside (at most ``max_late``); when its
  late reply arrives and says the script counted, a give-back script takes
  exactly those increments back, once (a token makes a retried give-back
  change nothing twice; a counter never goes below zero and is never
  created).  Late replies are collected by later calls (at most one poll per
  ``timeout_ms``), by :meth:`RedisCounters.settle` and at :meth:`close`.
* A circuit breaker keeps an outage from costing every call a wait: after
  ``open_after`` failures in a row (3) calls fail at once for ``backoff_ms``
  (250); then one call at a time goes to Redis as a probe while the others
  still fail at once; the probe's success closes the breaker.  One slow
  reply on a loaded host does not open it, however many threads it hit
  (:class:`Breaker`).

The client (redis-py) keeps a connection pool per process and starts a
fresh one after a fork; connections kept aside for late replies belong to
the process that sent the script.

Redis Cluster and Sentinel (``redis+cluster://``, ``redis+sentinel://``,
read by :mod:`tel400.redis_clients`): the script of a call goes to the node
that serves its slot, found by the counters themselves, not by redis-py's
cluster client, whose retries would outlast the bound.  A node that answers
NOSCRIPT gets the script itself (``EVAL``) on the same connection; one that
answers MOVED (the script did not run) has the slot moved and the call sent
once to the node named; a node that fails makes the client re-read the
slots in a background thread, never on a call's path.  With Sentinel,
every new connection asks the sentinels where the master is.

URL: ``redis://[:password@]host:port/db`` or ``rediss://`` for TLS,
``redis+cluster://host:port,host:port/``,
``redis+sentinel://host:port,host:port/service/db``, with optional
``?timeout_ms=20&open_after=3&backoff_ms=250&max_late=16&max_connections=64``.
"""

from __future__ import annotations

import collections
import hashlib
import inspect
import math
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit

from .counters import CapCheck, CounterBackend
from .exceptions import BackendError
from .redis_clients import open_redis, url_kind

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

# Takes back what an acquire counted after the client had stopped waiting.
# KEYS: the counters it incremented, then a token naming this give-back.
# ARGV: the increments, in KEYS order.
# Once only: a token that exists means it was given back already (a retry).
# Never below zero and never creating a key (a DECRBY on a missing key would
# make one without a lifetime).  The token lives as long as the longest
# lived of the counters (at least a minute): once it is gone, so are they,
# and a give-back that arrives even later finds nothing to take.
_GIVE_BACK = """
local n = #ARGV
if redis.call('EXISTS', KEYS[n + 1]) == 1 then
  return 0
end
local ttl = 60
for i = 1, n do
  local value = tonumber(redis.call('GET', KEYS[i]) or '0')
  local amount = math.min(value, tonumber(ARGV[i]))
  if amount > 0 then
    redis.call('DECRBY', KEYS[i], amount)
  end
  local left = redis.call('TTL', KEYS[i])
  if left > ttl then
    ttl = left
  end
end
redis.call('SET', KEYS[n + 1], '1', 'EX', ttl)
return 1
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


class _Lua(NamedTuple):
    """A Lua script and its SHA1, by which servers that have seen it run it (EVALSHA)."""

    text: str
    sha: str


def _lua(text: str) -> _Lua:
    return _Lua(text, hashlib.sha1(text.encode()).hexdigest())


_HASH_TAG = re.compile(r"\{[^}]*\}")

#: URL options and their defaults (see the module docstring).
DEFAULTS = {"timeout_ms": 20.0, "open_after": 3, "backoff_ms": 250.0, "max_late": 16, "max_connections": 64}


class Breaker:
    """When to ask Redis: a circuit breaker whose open state probes.

    Closed, every call goes to Redis.  ``open_after`` failures in a row open
    it: for ``backoff_s`` :meth:`admit` says no at once (an outage costs no
    waiting).  Then it is half-open: one caller at a time is admitted as a
    probe, the others are not; the probe's :meth:`succeeded` closes it, its
    :meth:`failed` opens it for another ``backoff_s``.

    What makes a run of failures: any success ends it, so isolated slow
    replies never open the breaker; and calls that were already waiting
    when a failure was seen fail with it as one (they met the same stall),
    so one stall on a busy router counts once however many threads it hit.
    Callers read :attr:`generation` before going to Redis and hand it to
    :meth:`failed`.

    Thread-safe; while closed without failures, :meth:`admit` and
    :meth:`succeeded` take no lock.
    """

    def __init__(self, open_after: int, backoff_s: float, clock=time.monotonic) -> None:
        self.open_after = open_after
        self.backoff_s = backoff_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0  # in a row
        self._open_until: float | None = None  # None: closed
        self._probing = False
        self._probe_failed = False  # since the breaker opened
        #: bumped by every failure that counts: a call that began before the
        #: latest one failed with it.
        self.generation = 0

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"`` (probing or ready to)."""
        if self._open_until is None:
            return "closed"
        return "half-open" if self._probing or self._clock() >= self._open_until else "open"

    def admit(self) -> bool:
        """Whether this caller may go to Redis now (when open: as the one probe)."""
        if self._open_until is None:
            return True
        with self._lock:
            if self._open_until is None:
                return True
            if self._probing or self._clock() < self._open_until:
                return False
            self._probing = True
            return True

    def probe_now(self) -> None:
        """Redis showed a sign of life (a late reply): let the next caller probe at once.

        Only until a probe has failed since the breaker opened: a Redis that
        answers every command, but late, is then probed every ``backoff_s``,
        not after each of its late replies.
        """
        with self._lock:
            if self._open_until is not None and not self._probe_failed:
                self._open_until = min(self._open_until, self._clock())

    def succeeded(self) -> None:
        """Redis answered: close."""
        if self._failures:
            with self._lock:
                self._failures = 0
                self._open_until = None
                self._probing = False
                self._probe_failed = False

    def failed(self, generation: int | None = None) -> None:
        """Redis failed or did not answer in time.

        Args:
            generation: :attr:`generation` when the call began; a call that
                began before the latest counted failure adds nothing to the
                run (``None``: count it).
        """
        with self._lock:
            if self._probing:
                self._probing = False
                self._probe_failed = True
            elif generation is not None and generation != self.generation:
                return  # the same stall as a failure already counted
            self._failures += 1
            self.generation += 1
            if self._open_until is not None or self._failures >= self.open_after:
                self._open_until = self._clock() + self.backoff_s


class _Late:
    """A connection whose acquire timed out, kept until its reply arrives."""

    __slots__ = ("pool", "conn", "keys", "increments")

    def __init__(self, pool, conn, keys: list[str], increments: list[int]) -> None:
        self.pool = pool  # the pool it came from (in a cluster, its node's)
        self.conn = conn
        self.keys = keys
        self.increments = increments


class RedisCounters(CounterBackend):
    """Counters in Redis, exact across every router that uses the same server.

    Every operation is a round trip (:attr:`waits_on_io`).

    Args:
        url: ``redis://[:password@]host:port/db`` (``rediss://``, ``unix://``),
            ``redis+cluster://host:port,host:port/`` or
            ``redis+sentinel://host:port,host:port/service/db``
            (:mod:`tel400.redis_clients`), optionally with the options below
            as query parameters, which take precedence over the keyword
            arguments.
        timeout_ms: the bound on every command (20).
        open_after: failures in a row that open the circuit breaker (3).
        backoff_ms: how long the open breaker refuses calls before one
            probe goes to Redis (250).
        max_late: timed-out acquires whose late reply is awaited at once
            (16); beyond it the oldest is given up (counted as ``lost``).
        max_connections: the connection pool's size (64), per node of a
            cluster; must exceed ``max_late``.

    Raises:
        ValueError: an option is not a number in its range.
    """

    waits_on_io = True

    def __init__(self, url: str, *, timeout_ms: float | None = None, backoff_ms: float | None = None,
                 open_after: int | None = None, max_late: int | None = None, max_connections: int | None = None,
                 clock=time.monotonic) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        given = {"timeout_ms": timeout_ms, "backoff_ms": backoff_ms, "open_after": open_after,
                 "max_late": max_late, "max_connections": max_connections}
        ours, client_url = _split_url(url)
        options = _options(ours, given)
        self.url = url
        self.timeout_s = options["timeout_ms"] / 1000
        self.backoff_s = options["backoff_ms"] / 1000
        self.max_late = options["max_late"]
        self._errors = redis.exceptions
        # What a failure of Redis may raise: RedisCluster's own errors
        # (SlotNotCoveredError, say) are not RedisErrors.
        self._failure_types = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)
        self._cluster = url_kind(url) == "cluster"
        self._client_url = client_url
        self._client_options = dict(
            retry=Retry(NoBackoff(), 0),  # one attempt: the time bound is the bound
            max_connections=options["max_connections"],
            health_check_interval=0,
        )
        if not self._cluster:  # (a cluster's node connections never retry; it warns about the option)
            self._client_options["retry_on_timeout"] = False
        self._clock = clock
        # redis-py < 5.3 wants a command name, later versions warn about one
        # (every pool here is a ConnectionPool: one server, a node, Sentinel's).
        parameter = inspect.signature(redis.ConnectionPool.get_connection).parameters.get("command_name")
        wants_name = parameter is not None and parameter.default is parameter.empty
        self._connection_args = ("EVALSHA",) if wants_name else ()
        self._client = None
        self._client_pid = os.getpid()
        self._pool = None  # one server or a Sentinel master: the one pool (a cluster has one per node)
        self._refreshing_in: int | None = None  # the pid whose thread is re-reading the cluster's slots
        self._next_refresh = 0.0
        self._refresh_lock = threading.Lock()
        self._open_error: Exception | None = None
        try:
            self._open_client()
        except self._failure_types as exc:
            if not self._cluster:
                raise
            self._open_error = exc
            # No seed answered: calls fail (on_backend_error decides) until a
            # refresh in the background reaches the cluster (_refresh_soon).
        self._acquire = _lua(_ACQUIRE)
        self._give_back_script = _lua(_GIVE_BACK)
        self._add = _lua(_ADD)
        self._pin_failure = _lua(_PIN_FAILURE)
        self.breaker = Breaker(options["open_after"], self.backoff_s, clock)
        #: failures by kind ("timeout", "connection", "error", "backoff"), for metrics.
        self.failures: Counter[str] = Counter()
        #: timed-out acquires by what became of them: "given_back" (the script
        #: ran late and its count was taken back), "not_counted" (it counted
        #: nothing), "lost" (no reply ever came: the connection broke, or too
        #: many were waiting; if the script ran, its count stays).
        self.late_replies: Counter[str] = Counter()
        self._late_lock = threading.Lock()
        self._late: collections.deque[_Late] = collections.deque()
        # Give-backs to run, oldest first, while the breaker is not open: (keys, increments, token).
        self._give_backs: collections.deque[tuple] = collections.deque()
        self._late_pid = os.getpid()
        self._next_collect = 0.0

    # -- plumbing -------------------------------------------------------------

    def _open_client(self) -> None:
        """Make the client (for a cluster: learn its slots from the first seed that answers)."""
        client = open_redis(self._client_url, timeout_s=self.timeout_s, **self._client_options)
        if not self._cluster:
            self._pool = client.connection_pool
        self._client_pid = os.getpid()
        self._client = client

    def _pool_for(self, key: str):
        """The connection pool of the server that holds ``key``: O(1).

        One server and a Sentinel master have one pool (a Sentinel pool asks
        the sentinels where the master is whenever it opens a connection).
        In a cluster, the pool of the node that serves the key's slot, as
        the client last learnt it.
        """
        if self._pool is not None:
            return self._pool
        client = self._client  # a cluster
        if client is None:
            raise self._errors.ConnectionError(f"no seed node of the cluster has answered yet ({self._open_error})")
        return client.get_redis_connection(client.get_node_from_key(key)).connection_pool

    def _refresh_soon(self) -> None:
        """A cluster node failed: re-read which node serves which slot, in the background.

        Never on a call's path, so a failover costs calls no more than their
        own time bound; at most one refresh at a time, at most one per
        ``backoff_ms``.  (After MOVED, the slot is moved at once: :meth:`_call`.)
        """
        if not self._cluster:
            return
        with self._refresh_lock:
            now = self._clock()
            if self._refreshing_in == os.getpid() or now < self._next_refresh:
                return
            self._refreshing_in = os.getpid()
            self._next_refresh = now + self.backoff_s
        threading.Thread(target=self._refresh, name="tel400-redis-cluster-slots", daemon=True).start()

    def _refresh(self) -> None:
        try:
            if self._client is None or self._client_pid != os.getpid():
                # A forked child makes a client of its own: its parent's may
                # have been refreshing, and a lock held then stays held here.
                self._open_client()
            else:
                self._client.nodes_manager.initialize()
        except Exception as exc:  # noqa: BLE001 - the next failure asks again; calls already got BackendError
            self._open_error = exc
        finally:
            self._refreshing_in = None

    def _moved(self, exc) -> None:
        """MOVED: the slot lives on another node now (a failover, a resharding); remember where."""
        manager = self._client.nodes_manager
        move = getattr(manager, "move_slot", None) or manager.update_moved_exception  # redis-py >= 6 / 5
        move(exc)

    def _call(self, what: str, fn, *args, **kwargs):
        """Run one Redis operation through the breaker; failures become BackendError.

        In a cluster, a MOVED reply (the script did not run) moves the slot
        and the operation is sent once more, to the node named; a failed node
        makes the client re-read the slots in the background.
        """
        if self._late or self._give_backs:
            self._collect_late()
        breaker = self.breaker
        generation = breaker.generation
        if not breaker.admit():
            self.failures["backoff"] += 1
            raise BackendError(
                f"redis counters: unavailable after {breaker.open_after} failures in a row; "
                f"one call probes every {self.backoff_s:g} s"
            )
        try:
            try:
                result = fn(*args, **kwargs)
            except self._errors.MovedError as moved:
                if not self._cluster:
                    raise
                self._moved(moved)
                result = fn(*args, **kwargs)
        except self._failure_types as exc:
            kind = (
                "timeout" if isinstance(exc, self._errors.TimeoutError)
                else "connection" if isinstance(exc, (self._errors.ConnectionError, self._errors.RedisClusterException))
                else "error"
            )
            self.failures[kind] += 1
            breaker.failed(generation)
            if kind != "error" or isinstance(exc, (self._errors.MovedError, self._errors.ClusterDownError)):
                self._refresh_soon()
            raise BackendError(f"redis counters: {what} failed ({kind}: {exc})") from None
        except BaseException:
            breaker.failed(generation)  # never leave a probe outstanding
            raise
        breaker.succeeded()
        return result

    def _command(self, key: str, *command):
        """One plain command about ``key``, one round trip, on the server that holds it."""
        pool = self._pool or self._pool_for(key)
        conn = pool.get_connection(*self._connection_args)
        try:
            conn.send_command(*command)
            reply = conn.read_response(disconnect_on_error=False)
        except self._errors.ResponseError:
            pool.release(conn)  # an error reply: the connection is in step
            raise
        except BaseException:
            conn.disconnect()
            pool.release(conn)
            raise
        pool.release(conn)
        return reply

    def _script(self, script: _Lua, keys: list[str], args: list, *, counts: Sequence[CapCheck] | None = None):
        """One script, one round trip (two the first time its server sees it), on a connection of our own.

        Every key of one call shares the number's hash tag, so in a cluster
        the script runs on the one node that serves that slot.  A server
        that does not know the script (NOSCRIPT: it restarted, it was
        promoted from replica, it was flushed, it is another node) gets it
        whole with EVAL, which also caches it there.

        redis-py would close a connection whose reply timed out; here, when
        the script ``counts`` caps, a connection whose request was sent whole
        is kept for its reply instead (:meth:`_park`).  Any other failure
        closes it, so no reply is ever read by the wrong command.
        """
        pool = self._pool or self._pool_for(keys[0])
        conn = pool.get_connection(*self._connection_args)
        command = (len(keys), *keys, *args)
        sent = False
        try:
            conn.send_command("EVALSHA", script.sha, *command)
            sent = True
            try:
                reply = conn.read_response(disconnect_on_error=False)
            except self._errors.NoScriptError:
                sent = False
                conn.send_command("EVAL", script.text, *command)  # also caches it
                sent = True
                reply = conn.read_response(disconnect_on_error=False)
        except self._errors.TimeoutError:
            if counts is not None and sent:
                self._park(pool, conn, keys, counts)
                raise
            conn.disconnect()
            pool.release(conn)
            raise
        except self._errors.ResponseError:
            pool.release(conn)  # an error reply: the connection is in step
            raise
        except BaseException:
            conn.disconnect()
            pool.release(conn)
            raise
        pool.release(conn)
        return reply

    @staticmethod
    def _counter(key: str, period: int) -> str:
        return f"{key}:{period}"

    # -- late replies ---------------------------------------------------------

    def _park(self, pool, conn, keys: list[str], checks: Sequence[CapCheck]) -> None:
        """Keep a timed-out acquire's connection until its reply says what to give back."""
        counted = [(key, c.increment) for key, c in zip(keys, checks) if c.increment > 0]
        if not counted:
            conn.disconnect()  # it can count nothing: nothing to wait for
            pool.release(conn)
            return
        self._keep(_Late(pool, conn, [k for k, _ in counted], [i for _, i in counted]))

    def _keep(self, late: _Late) -> None:
        with self._late_lock:
            self._forget_after_fork()
            self._late.append(late)
            while len(self._late) > self.max_late:
                self._lose(self._late.popleft())

    def _lose(self, late: _Late) -> None:
        late.conn.disconnect()
        late.pool.release(late.conn)
        self.late_replies["lost"] += 1

    def _forget_after_fork(self) -> None:
        # A child must not read its parent's replies (the parent will); its
        # pool has started afresh and does not know these connections.
        if self._late_pid != os.getpid():
            self._late_pid = os.getpid()
            self._late.clear()
            self._give_backs.clear()

    def _collect_late(self, *, force: bool = False) -> None:
        """Read the late replies that have arrived and give back what their scripts counted.

        Polls at most once per ``timeout_ms`` unless ``force``d: a late
        reply costs the calls that happen to meet it one non-blocking read
        per waiting connection, and the one that reads it a give-back.  A
        call waits here for at most one ``timeout_ms`` (a reply that came in
        pieces, or a give-back that timed out: the rest waits for later).
        """
        now = self._clock()
        ready = []
        with self._late_lock:
            self._forget_after_fork()
            if not force and now < self._next_collect:
                return
            self._next_collect = now + self.timeout_s
            waiting = collections.deque()
            for late in self._late:
                try:
                    arrived = late.conn.can_read(timeout=0)
                except (self._errors.RedisError, OSError):
                    self._lose(late)
                    continue
                (ready if arrived else waiting).append(late)
            self._late = waiting
        for i, late in enumerate(ready):
            if not self._read_late(late):
                for rest in ready[i + 1:]:
                    self._keep(rest)  # one read that had to wait is this call's share
                return
        self._run_give_backs()

    def _read_late(self, late: _Late) -> bool:
        """Read a late reply that has (begun to) arrive; False if the rest of it kept us waiting."""
        conn = late.conn
        try:
            reply = conn.read_response(disconnect_on_error=False)
        except self._errors.TimeoutError:
            self._keep(late)  # only part of it yet
            return False
        except self._errors.ResponseError:
            reply = None  # the script did not run (NOSCRIPT) or failed: nothing counted
        except (self._errors.RedisError, OSError):
            self._lose(late)
            return True
        self.breaker.probe_now()  # Redis answers again
        late.pool.release(conn)  # in step again
        if reply != -1:
            self.late_replies["not_counted"] += 1
            return True
        token = f"tel400:{_tag(late.keys[0])}:given-back:{os.urandom(8).hex()}"
        with self._late_lock:
            self._give_backs.append((late.keys, late.increments, token))
            while len(self._give_backs) > self.max_late:
                self._give_backs.popleft()
                self.late_replies["lost"] += 1
        return True

    def _run_give_backs(self) -> None:
        """Run the waiting give-backs, oldest first, until one fails (unless the breaker is open).

        A failed one stays first in line; its token makes running it again
        harmless.  Stopping at the first failure keeps what one call can be
        made to wait for give-backs to one ``timeout_ms``.
        """
        while self._give_backs and self.breaker.state != "open":
            with self._late_lock:
                if not self._give_backs:
                    return
                keys, increments, token = self._give_backs.popleft()
            if not self._give_back(keys, increments, token):
                with self._late_lock:
                    self._give_backs.appendleft((keys, increments, token))
                return

    def _give_back(self, keys: list[str], increments: list[int], token: str) -> bool:
        """Run the give-back script once; whether it answered."""
        try:
            self._script(self._give_back_script, [*keys, token], increments)
        except self._errors.ResponseError:
            self.late_replies["lost"] += 1  # the script itself failed: running it again would too
            return True
        except (self._errors.RedisError, OSError):
            return False
        self.late_replies["given_back"] += 1  # by this run or by an earlier one whose reply was lost
        return True

    def settle(self, timeout_s: float = 1.0) -> int:
        """Wait up to ``timeout_s`` for the late replies of timed-out acquires and give back what they counted.

        Returns:
            How many are still awaited (0: every count is where it belongs).

        Cost: one non-blocking read per awaited reply every 10 ms.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            self._collect_late(force=True)
            pending = len(self._late) + len(self._give_backs)
            if not pending or time.monotonic() >= deadline:
                return pending
            time.sleep(0.01)

    # -- the interface --------------------------------------------------------

    def acquire(self, checks: Sequence[CapCheck], *, dry_run: bool = False) -> int:
        keys = [self._counter(c.key, c.period) for c in checks]
        args: list = [len(checks)]
        for c in checks:
            args += [c.limit, c.increment, c.ttl_s]
        args.append(1 if dry_run else 0)
        counts = None if dry_run else checks
        return int(self._call("acquire", self._script, self._acquire, keys, args, counts=counts))

    def add(self, key: str, period: int, amount: int, ttl_s: int) -> int:
        return int(self._call("add", self._script, self._add, [self._counter(key, period)], [amount, ttl_s]))

    def value(self, key: str, period: int) -> int:
        counter = self._counter(key, period)
        raw = self._call("value", self._command, counter, "GET", counter)
        return int(raw or 0)

    def pin_failures(self, key: str, now: float, window_s: int) -> int:
        # The window is the key's time to live, measured by the server's clock.
        raw = self._call("pin_failures", self._command, key, "GET", key)
        return int(raw or 0)

    def add_pin_failure(self, key: str, now: float, window_s: int) -> int:
        return int(self._call("add_pin_failure", self._script, self._pin_failure, [key], [window_s]))

    def clear_pin_failures(self, key: str) -> None:
        self._call("clear_pin_failures", self._command, key, "DEL", key)

    def close(self) -> None:
        """Collect the late replies that have arrived, give up the others, and close the connections."""
        self._collect_late(force=True)
        with self._late_lock:
            self._forget_after_fork()
            while self._late:
                self._lose(self._late.popleft())
            self.late_replies["lost"] += len(self._give_backs)
            self._give_backs.clear()
        if self._client is not None:
            self._client.close()

    def ping(self) -> bool:
        """Whether Redis answers now (ignores the breaker)."""
        try:
            return self._client is not None and bool(self._client.ping())
        except self._failure_types:
            return False


def _tag(key: str) -> str:
    """The hash tag of a key (``{4001012345}``), so that a give-back's token lives in its counters' slot."""
    found = _HASH_TAG.search(key)
    return found.group(0) if found else "{}"


def connection_url(url: str) -> str:
    """``url`` without the counters' own options (``timeout_ms``, ``max_connections``, ...).

    What is left names the server and how redis-py reaches it (``rediss://``
    certificates, say), for another client of the same Redis: tel400-http's
    call registry with ``--workers``.
    """
    return _split_url(url)[1]


def _split_url(url: str) -> tuple[dict, str]:
    """The counters' own options in ``url``'s query, and ``url`` without them (the rest is redis-py's)."""
    query = dict(parse_qsl(urlsplit(url).query))
    ours = {name: query.pop(name) for name in DEFAULTS if name in query}
    # the rest of the URL as it was written: urlunsplit would write unix:///path.sock as unix:/path.sock
    rest = url.split("?", 1)[0]
    return ours, f"{rest}?{urlencode(query)}" if query else rest


def _options(query: dict, given: dict) -> dict:
    """Our options from the URL's query (removed from it), else the arguments, else the defaults; checked."""
    options = {}
    for name, default in DEFAULTS.items():
        raw = query.pop(name, None)
        if raw is None:
            raw = default if given[name] is None else given[name]
        options[name] = _number(name, raw, whole=isinstance(default, int))
    if options["timeout_ms"] <= 0:
        raise ValueError("redis counters: timeout_ms must be more than 0")
    if options["max_late"] >= options["max_connections"]:
        raise ValueError(
            f"redis counters: max_late ({options['max_late']}) must be less than max_connections "
            f"({options['max_connections']}): connections awaiting late replies stay taken from the pool"
        )
    return options


def _number(name: str, raw, *, whole: bool) -> int | float:
    try:
        value = int(raw) if whole else float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"redis counters: {name} must be a {'whole ' if whole else ''}number, got {raw!r}") from None
    smallest = 1 if name in ("open_after", "max_connections") else 0
    if not math.isfinite(value) or value < smallest:
        raise ValueError(f"redis counters: {name} must be a finite number of at least {smallest}, got {raw!r}")
    return value
