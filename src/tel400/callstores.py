"""Calls in progress shared between processes: SQLite (one host) and Redis (any host).

Both keep the interface of :class:`tel400.calls.CallRegistry` (``remember``,
``get``, ``claim``, ``settle``, ``pop``, ``len``, ``in``, ``dropped``,
``refused``, ``max_calls``, ``max_age_s``, ``close``), so that a call routed
by one process may end in any other: its end charges it exactly once.

**One end, one charge.** A record is stored as its token
(:meth:`tel400.billing.CallRecord.to_token`).  :meth:`get` returns it with the
token it read (:class:`StoredRecord`); :meth:`claim` is a compare-and-set on
that token and on the claim it saw, so of two reports of one end, in two
processes, one claims and the other gets ``False``.  :meth:`settle` acts
only while the claim is still its own.

**A claim whose process died.**  A process that claimed an end and died
before settling it (SIGKILL, a crash) leaves a claim nobody will settle.
Refusing every later report would lose the charge; letting every later
report claim would charge twice.  The registry lets a later report take
the claim over once its holder is known dead (the same host and its pid no
longer exists: at once) or its lease (``claim_lease_s``, 30 s by default)
has run out: a dead worker's calls are charged by the report the switch
sends again.  The price: a process that died *after* adding some of the
charge and *before* settling, or a live one stalled past the lease between
claim and settle, has those counters charged twice for that one call.  The
window is the few counter adds of one end (microseconds with ``shm://``, a
round trip per cap with Redis); a lost charge, on the other hand, would be
every call a dead worker had claimed.  Counted nowhere else: the log line
``call_claim_taken_over`` names each.

**Clocks.** A record's age is wall-clock time (``time.time()`` for SQLite,
the Redis server's ``TIME`` for Redis) because processes must agree on it;
a clock stepped back keeps calls longer, one stepped forward forgets them
sooner (keep hosts on NTP).

**Bounds.** ``max_calls`` is the total over all processes: at it, the
expired records go first, then a new call is refused.  ``dropped`` and
``refused`` are counted by the process that dropped or refused (sum them
over workers for the deployment's).  A backend that fails while a call is
remembered refuses the call too (counted in ``refused`` and ``failed``);
:meth:`get`, :meth:`claim`, :meth:`settle` and :meth:`pop` raise
:class:`tel400.exceptions.BackendError`, which :meth:`tel400.Router.call_ended`
passes on: the call waits for the switch's retry.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import sqlite3
import threading
import time
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import structlog

from . import redis_clients
from .billing import CallRecord
from .calls import check_bounds, log_forgotten
from .exceptions import BackendError

_log = structlog.get_logger("tel400.calls")

#: After how long a claim may be taken over from a process that may still
#: live (another host, or a pid that exists): far beyond the longest charge
#: (a few counter adds bounded by their backend's timeout).
DEFAULT_CLAIM_LEASE_S = 30.0

#: Expired records dropped by one ``remember`` at most: a backlog (a host
#: that slept) is dropped over several calls rather than in one long write.
DROP_BATCH = 1000

_HOST = socket.gethostname()


class StoredRecord(CallRecord):
    """A :class:`CallRecord` read back from a shared registry, with what claiming it compares."""

    __slots__ = ("stored", "claimer", "claimed_at")


def _read(token: str, remembered_at, claimer, claimed_at) -> StoredRecord:
    record = StoredRecord.from_token(token)
    record.remembered_at = float(remembered_at)
    record.stored = token
    record.claimer = claimer or None
    record.claimed_at = float(claimed_at) if claimed_at else None
    return record


def _seen(record) -> tuple[str, str | None]:
    """The token and the claim ``record`` was read with; a record never read back
    (the very object remembered) compares by its own token, unclaimed."""
    if isinstance(record, StoredRecord):
        return record.stored, record.claimer
    return record.to_token(), None


def _new_claimer() -> str:
    return f"{_HOST}:{os.getpid()}:{secrets.token_hex(6)}"


def _holder_dead(claimer: str) -> bool:
    """The claim's process is on this host and no longer exists."""
    host, pid = _host_pid(claimer)
    if host != _HOST or pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: it exists, under another user
        return False
    return False


def _host_pid(claimer: str) -> tuple[str, int | None]:
    parts = claimer.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return "", None
    return parts[0], int(parts[1])


class _Counts:
    """Per-process counts and the rate-limited log line, like CallRegistry's."""

    #: shared with other processes: every operation is I/O (see CallRegistry.shared).
    shared = True

    def __init__(self, log_interval_s: float) -> None:
        self.dropped = 0
        self.refused = 0
        #: calls not remembered because the backend failed (also in ``refused``).
        self.failed = 0
        self._log_interval_s = log_interval_s
        self._logged_at: float | None = None
        self._unlogged = {"expired": 0, "refused": 0, "failed": 0}
        self._counts_lock = threading.Lock()

    def _count(self, *, expired: int = 0, refused: int = 0, failed: int = 0, number: str = "") -> None:
        with self._counts_lock:
            self.dropped += expired
            self.refused += refused + failed
            self.failed += failed
            unlogged = self._unlogged
            unlogged["expired"] += expired
            unlogged["refused"] += refused
            unlogged["failed"] += failed
            self._unlogged, self._logged_at = log_forgotten(
                unlogged, self._logged_at, time.monotonic(), self._log_interval_s, last_number=number,
                max_calls=self.max_calls, max_age_s=self.max_age_s, registry=self.url)


def _take_over_log(call_id: str, claimer: str, why: str) -> None:
    _log.warning("call_claim_taken_over", call_id=call_id, claimer=claimer, why=why)


# -- SQLite ------------------------------------------------------------------------

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS calls (id TEXT PRIMARY KEY, token TEXT NOT NULL, remembered_at REAL NOT NULL, "
    "claimer TEXT, claimed_at REAL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS calls_by_age ON calls (remembered_at)",
    # The number of rows, kept by triggers: counting 200,000 rows on every call would cost milliseconds.
    "CREATE TABLE IF NOT EXISTS calls_count (one INTEGER PRIMARY KEY CHECK (one = 1), n INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO calls_count VALUES (1, (SELECT count(*) FROM calls))",
    "CREATE TRIGGER IF NOT EXISTS calls_in AFTER INSERT ON calls BEGIN UPDATE calls_count SET n = n + 1; END",
    "CREATE TRIGGER IF NOT EXISTS calls_out AFTER DELETE ON calls BEGIN UPDATE calls_count SET n = n - 1; END",
)

#: Connections a forked child inherited: never used and never closed (closing
#: a SQLite connection in a child may act on its parent's locks and WAL).
_inherited: list = []


class SqliteCallRegistry(_Counts):
    """Calls in progress in one SQLite file, shared by the processes of one host.

    Args:
        path: the database file (made if missing; its directory must exist).
        max_calls: the most calls remembered at once, over all processes.
        max_age_s: how long a call is remembered (wall clock).
        claim_lease_s: after how long a claim held by a live process may be
            taken over (module notes); a dead holder's at once.
        busy_timeout_ms: how long a statement waits for another process's
            write (SQLite's ``busy_timeout``); past it, a :class:`BackendError`.
        clock: the wall clock (tests).
        log_interval_s: at most one log line per this many seconds.

    WAL journal, ``synchronous=NORMAL`` (a power cut may lose the last calls
    remembered, never corrupt the file), one connection per process, opened
    again in a forked child.  Each operation is one short transaction:
    O(log n) in the calls held.
    """

    def __init__(self, path: str, *, max_calls: int = 200_000, max_age_s: float = 12 * 3600,
                 claim_lease_s: float = DEFAULT_CLAIM_LEASE_S, busy_timeout_ms: int = 5000,
                 clock=time.time, log_interval_s: float = 60.0) -> None:
        check_bounds(max_calls, max_age_s)
        if not path or not isinstance(path, str):
            raise ValueError(f"calls: sqlite:// needs a file path, e.g. sqlite:///var/lib/tel400/calls.db; got {path!r}")
        super().__init__(log_interval_s)
        self.path = path
        self.url = f"sqlite://{path}"
        self.max_calls = max_calls
        self.max_age_s = max_age_s
        self.claim_lease_s = claim_lease_s
        self._busy_timeout_ms = busy_timeout_ms
        self._clock = clock
        self._mine: dict[str, str] = {}  # call id -> the claim this process holds on it
        self._pid = None
        self._conn = None
        self._lock = threading.Lock()
        self._connection()  # fail here, not at the first call, on a path that cannot be opened

    def _connection(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            if self._conn is not None:
                _inherited.append(self._conn)
            self._lock = threading.Lock()  # the parent's may have been held by a thread the fork left behind
            self._mine = {}
            try:
                conn = sqlite3.connect(self.path, timeout=self._busy_timeout_ms / 1000, isolation_level=None,
                                       check_same_thread=False)
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                with _transaction(conn):
                    for statement in _SCHEMA:
                        conn.execute(statement)
            except sqlite3.Error as exc:
                raise BackendError(f"calls: cannot open {self.path!r}: {exc}") from exc
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def _run(self, work):
        """``work(conn)`` under this process's lock; SQLite's errors as :class:`BackendError`."""
        conn = self._connection()
        try:
            with self._lock:
                return work(conn)
        except sqlite3.Error as exc:
            raise BackendError(f"calls: {self.path}: {exc}") from exc

    def remember(self, record) -> bool:
        """Keep ``record`` until its end; ``False`` if full (counted, logged) or SQLite failed (counted)."""
        now = self._clock()
        record.remembered_at = now
        token = record.to_token()
        call_id = record.call_id

        def work(conn):
            with _transaction(conn):
                expired = conn.execute(
                    "DELETE FROM calls WHERE id IN (SELECT id FROM calls WHERE remembered_at <= ? LIMIT ?)",
                    (now - self.max_age_s, DROP_BATCH)).rowcount
                # the same id routed again (a PIN round): the latest wins, unclaimed, with a new age
                if conn.execute("UPDATE calls SET token = ?, remembered_at = ?, claimer = NULL, claimed_at = NULL "
                                "WHERE id = ?", (token, now, call_id)).rowcount:
                    return True, expired
                if conn.execute("SELECT n FROM calls_count").fetchone()[0] >= self.max_calls:
                    return False, expired
                conn.execute("INSERT INTO calls (id, token, remembered_at) VALUES (?, ?, ?)", (call_id, token, now))
                return True, expired

        try:
            stored, expired = self._run(work)
        except BackendError as exc:
            _log.warning("call_not_remembered", call_id=call_id, error=str(exc))
            self._count(failed=1, number=record.number)
            return False
        if expired or not stored:
            self._count(expired=expired, refused=0 if stored else 1, number=record.number)
        return stored

    def get(self, call_id) -> StoredRecord | None:
        """The record of ``call_id`` as stored, with its claim; ``None`` if unknown or older than ``max_age_s``."""
        key = str(call_id)
        row = self._run(lambda conn: conn.execute(
            "SELECT token, remembered_at, claimer, claimed_at FROM calls WHERE id = ? AND remembered_at > ?",
            (key, self._clock() - self.max_age_s)).fetchone())
        return None if row is None else _read(*row)

    def claim(self, call_id, record) -> bool:
        """Reserve the end of ``call_id`` for this report if the call still holds ``record``.

        ``False`` if it was routed again, ended, or another report holds a
        claim that is neither dead nor past its lease (module notes).
        """
        key = str(call_id)
        token, seen = _seen(record)
        now = self._clock()
        if seen is not None and not self._stale(seen, record.claimed_at, now):
            return False
        claimer = _new_claimer()

        def work(conn):
            if conn.execute("UPDATE calls SET claimer = ?, claimed_at = ? WHERE id = ? AND token = ? AND claimer IS ?",
                            (claimer, now, key, token, seen)).rowcount != 1:
                return False
            self._mine[key] = claimer
            return True

        claimed = self._run(work)
        if claimed and seen is not None:
            _take_over_log(key, seen, "dead" if _holder_dead(seen) else "lease")
        return claimed

    def _stale(self, claimer: str, claimed_at: float | None, now: float) -> bool:
        return claimed_at is None or now - claimed_at >= self.claim_lease_s or _holder_dead(claimer)

    def settle(self, call_id, record, rest=None) -> None:
        """End this process's claim: forget the call, or keep ``rest`` (of the same age) for a retry.

        Nothing changes if the claim was taken over or the call routed again meanwhile.
        """
        key = str(call_id)

        def work(conn):
            claimer = self._mine.pop(key, None)
            if claimer is None:
                return
            if rest is None:
                conn.execute("DELETE FROM calls WHERE id = ? AND claimer = ?", (key, claimer))
            else:
                conn.execute("UPDATE calls SET token = ?, claimer = NULL, claimed_at = NULL WHERE id = ? AND claimer = ?",
                             (rest.to_token(), key, claimer))

        self._run(work)

    def pop(self, call_id) -> StoredRecord | None:
        """Take the call out (:meth:`tel400.Router.export_call`); ``None`` if unknown or expired."""
        key = str(call_id)
        row = self._run(lambda conn: conn.execute(
            "DELETE FROM calls WHERE id = ? AND remembered_at > ? RETURNING token, remembered_at, claimer, claimed_at",
            (key, self._clock() - self.max_age_s)).fetchone())
        return None if row is None else _read(*row)

    def __len__(self) -> int:
        """Calls held by all processes (expired ones included until a ``remember`` drops them)."""
        return self._run(lambda conn: conn.execute("SELECT n FROM calls_count").fetchone()[0])

    def __contains__(self, call_id) -> bool:
        return self.get(call_id) is not None

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = self._pid = None


class _transaction:
    """``BEGIN IMMEDIATE`` .. ``COMMIT`` (rolled back on an error): the write lock from the start,
    so that two processes never both read the count and both insert past ``max_calls``."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind, exc, tb):
        if kind is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:  # not when BEGIN itself failed (busy): the original error stands
            self.conn.execute("ROLLBACK")
        return False


# -- Redis -------------------------------------------------------------------------

# Every script reads the server's clock (Redis >= 5 replicates scripts by
# their effects), so that processes on hosts whose clocks differ agree on ages.
_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1000000 "

# KEYS: age index, the call's key.  ARGV: id, token, max_age_s, max_calls, ttl_ms, batch, key prefix.
# Returns {stored (1/0), expired, now}.
_REMEMBER = _NOW + """
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]), 'LIMIT', 0, tonumber(ARGV[6]))
for _, id in ipairs(old) do redis.call('DEL', ARGV[7] .. id) end
if #old > 0 then redis.call('ZREM', KEYS[1], unpack(old)) end
if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return {0, #old, tostring(now)}
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 't', ARGV[2], 'a', tostring(now))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[5]))
redis.call('ZADD', KEYS[1], now, ARGV[1])
return {1, #old, tostring(now)}
"""

# KEYS: the call's key.  ARGV: token read, claim read ('' for none), new claim, lease_s, holder dead (1/0).
_CLAIM = _NOW + """
local v = redis.call('HMGET', KEYS[1], 't', 'c', 'ca')
if v[1] ~= ARGV[1] then return 0 end
local c = v[2] or ''
if c ~= ARGV[2] then return 0 end
if c ~= '' and ARGV[5] ~= '1' and now - tonumber(v[3]) < tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], 'c', ARGV[3], 'ca', tostring(now))
return 1
"""

# KEYS: age index, the call's key.  ARGV: own claim, rest's token ('' to forget), id.
_SETTLE = """
if redis.call('HGET', KEYS[2], 'c') ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], ARGV[3])
else
  redis.call('HSET', KEYS[2], 't', ARGV[2])
  redis.call('HDEL', KEYS[2], 'c', 'ca')
end
return 1
"""

# KEYS: age index, the call's key.  ARGV: id.
_POP = """
local v = redis.call('HMGET', KEYS[2], 't', 'a', 'c', 'ca')
if not v[1] then return false end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return v
"""


class RedisCallRegistry(_Counts):
    """Calls in progress in Redis, shared by processes on any host.

    Args:
        url: a Redis URL (:mod:`tel400.redis_clients`), without tel400's
            query parameters (:func:`open_url` takes those off).
        max_calls: the most calls remembered at once, over all processes.
        max_age_s: how long a call is remembered: each call's key expires
            then (``PEXPIRE``), and its entry in the age index is dropped
            by the next ``remember``.
        claim_lease_s: after how long another process's claim may be taken over.
        timeout_ms: the bound on every command; past it a call is not
            remembered (``refused``, ``failed``) or an end raises
            :class:`BackendError`.
        prefix: the keys' prefix; all keys of one registry share the hash
            tag ``{prefix}``, so a Redis Cluster keeps them on one node.

    Keys: one hash per call (token, age, claim), one sorted set of call ids
    by age (the bound: ``ZCARD``; ~100 bytes a call besides the token).
    Each operation is one round trip running one script: O(log n).
    """

    def __init__(self, url: str, *, max_calls: int = 200_000, max_age_s: float = 12 * 3600,
                 claim_lease_s: float = DEFAULT_CLAIM_LEASE_S, timeout_ms: float = 250.0,
                 prefix: str = "tel400:calls", log_interval_s: float = 60.0) -> None:
        check_bounds(max_calls, max_age_s)
        super().__init__(log_interval_s)
        self.url = redis_clients._redacted(url)
        self.max_calls = max_calls
        self.max_age_s = max_age_s
        self.claim_lease_s = claim_lease_s
        self._client = redis_clients.open_redis(url, timeout_s=timeout_ms / 1000, decode_responses=True)
        import redis

        self._errors = (redis.exceptions.RedisError, OSError)
        self._tag = "{" + prefix + "}"
        self._age_key = self._tag + ":age"
        self._call_prefix = self._tag + ":call:"
        self._ttl_ms = int(math.ceil(max_age_s * 1000))
        self._scripts = {name: self._client.register_script(text) for name, text in
                         (("remember", _REMEMBER), ("claim", _CLAIM), ("settle", _SETTLE), ("pop", _POP))}
        self._mine: dict[str, str] = {}
        self._mine_pid = os.getpid()

    def _key(self, call_id: str) -> str:
        return self._call_prefix + call_id

    def _script(self, name: str, keys, args):
        try:
            return self._scripts[name](keys=keys, args=args)
        except self._errors as exc:
            raise BackendError(f"calls: redis {self.url}: {exc}") from exc

    def _claims(self) -> dict[str, str]:
        if self._mine_pid != os.getpid():  # a forked child holds none of its parent's claims
            self._mine, self._mine_pid = {}, os.getpid()
        return self._mine

    def remember(self, record) -> bool:
        """Keep ``record`` until its end; ``False`` if full (counted, logged) or Redis failed (counted)."""
        call_id = record.call_id
        try:
            stored, expired, now = self._script(
                "remember", [self._age_key, self._key(call_id)],
                [call_id, record.to_token(), self.max_age_s, self.max_calls, self._ttl_ms, DROP_BATCH,
                 self._call_prefix])
        except BackendError as exc:
            _log.warning("call_not_remembered", call_id=call_id, error=str(exc))
            self._count(failed=1, number=record.number)
            return False
        record.remembered_at = float(now)
        if expired or not stored:
            self._count(expired=int(expired), refused=0 if stored else 1, number=record.number)
        return bool(stored)

    def get(self, call_id) -> StoredRecord | None:
        try:
            token, at, claimer, claimed_at = self._client.hmget(self._key(str(call_id)), "t", "a", "c", "ca")
        except self._errors as exc:
            raise BackendError(f"calls: redis {self.url}: {exc}") from exc
        return None if token is None else _read(token, at, claimer, claimed_at)

    def claim(self, call_id, record) -> bool:
        """As :meth:`SqliteCallRegistry.claim`; the lease is measured by the Redis server's clock."""
        key = str(call_id)
        token, seen = _seen(record)
        claimer = _new_claimer()
        dead = seen is not None and _holder_dead(seen)
        claimed = self._script("claim", [self._key(key)],
                               [token, seen or "", claimer, self.claim_lease_s, 1 if dead else 0]) == 1
        if claimed:
            self._claims()[key] = claimer
            if seen is not None:
                _take_over_log(key, seen, "dead" if dead else "lease")
        return claimed

    def settle(self, call_id, record, rest=None) -> None:
        key = str(call_id)
        claimer = self._claims().pop(key, None)
        if claimer is None:
            return
        self._script("settle", [self._age_key, self._key(key)],
                     [claimer, "" if rest is None else rest.to_token(), key])

    def pop(self, call_id) -> StoredRecord | None:
        key = str(call_id)
        found = self._script("pop", [self._age_key, self._key(key)], [key])
        return None if not found else _read(*found)

    def __len__(self) -> int:
        """Calls held by all processes (expired ones included until a ``remember`` drops them)."""
        try:
            return self._client.zcard(self._age_key)
        except self._errors as exc:
            raise BackendError(f"calls: redis {self.url}: {exc}") from exc

    def __contains__(self, call_id) -> bool:
        return self.get(call_id) is not None

    def close(self) -> None:
        self._client.close()


# -- URLs --------------------------------------------------------------------------

_SQLITE_OPTIONS = {"claim_lease_s": float, "busy_timeout_ms": int}
_REDIS_OPTIONS = {"claim_lease_s": float, "timeout_ms": float, "prefix": str}


def open_url(url: str, *, max_calls: int, max_age_s: float):
    """The registry a URL names (see :func:`tel400.calls.open_calls`)."""
    from .calls import CallRegistry

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory" and not parts.netloc.strip("/") and not parts.path.strip("/") and not parts.query:
        return CallRegistry(max_calls=max_calls, max_age_s=max_age_s)
    if scheme == "sqlite":
        if parts.netloc:
            raise ValueError(f"calls: sqlite:// takes a path and no host (sqlite:///path/calls.db); got {url!r}")
        path = unquote(parts.path)
        if not path or path.endswith("/"):
            raise ValueError(f"calls: sqlite:// needs a file path, e.g. sqlite:///var/lib/tel400/calls.db; got {url!r}")
        options = _options(parts, _SQLITE_OPTIONS, url)
        return SqliteCallRegistry(path, max_calls=max_calls, max_age_s=max_age_s, **options)
    if scheme in redis_clients.SCHEMES:
        options = _options(parts, _REDIS_OPTIONS, url, keep_others=True)
        ours = set(_REDIS_OPTIONS)
        rest = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ours]
        bare = urlunsplit(parts._replace(query="&".join(f"{k}={v}" for k, v in rest)))
        redis_clients.parse_url(bare)  # a malformed cluster or sentinel URL: its ValueError now
        return RedisCallRegistry(bare, max_calls=max_calls, max_age_s=max_age_s, **options)
    raise ValueError(f"calls: unsupported URL {redis_clients._redacted(url)!r}; expected memory://, "
                     "sqlite:///path/calls.db, redis://host:port/db, redis+cluster://host:port,host:port/ "
                     "or redis+sentinel://host:port/service/db")


def _options(parts, known: dict, url: str, keep_others: bool = False) -> dict:
    out = {}
    for name, raw in parse_qsl(parts.query, keep_blank_values=True):
        kind = known.get(name)
        if kind is None:
            if keep_others:
                continue
            raise ValueError(f"calls: unknown parameter {name!r} in {redis_clients._redacted(url)!r}; "
                             f"expected {', '.join(sorted(known))}")
        if kind is str:
            if not raw:
                raise ValueError(f"calls: {name} must not be empty in {redis_clients._redacted(url)!r}")
            out[name] = raw
            continue
        try:
            value = kind(raw)
        except ValueError:
            value = None
        if value is None or not (0 < value < math.inf):
            raise ValueError(f"calls: {name} must be a positive number, got {raw!r} in {redis_clients._redacted(url)!r}")
        out[name] = value
    return out
