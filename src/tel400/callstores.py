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
the claim over once its holder is known dead (the same host and pid
namespace, and its pid no longer exists or is a zombie: at once) or its lease
(``claim_lease_s``, 30 s by default) has run out: a dead worker's calls are charged by the report the switch
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

The SQLite registry is in :mod:`tel400.callstore_sqlite`, the Redis one in
:mod:`tel400.callstore_redis`; this module holds what they share (records
read back, claims, counts) and :func:`open_url`.
"""

from __future__ import annotations

import math
import os
import pathlib
import secrets
import socket
import threading
import time
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import structlog

from . import redis_clients
from .billing import CallRecord
from .calls import log_forgotten

_log = structlog.get_logger("tel400.calls")

#: After how long a claim may be taken over from a process that may still
#: live (another host, or a pid that exists): far beyond the longest charge
#: (a few counter adds bounded by their backend's timeout).
DEFAULT_CLAIM_LEASE_S = 30.0

#: Expired records dropped by one ``remember`` at most: a backlog (a host
#: that slept) is dropped over several calls rather than in one long write.
DROP_BATCH = 1000



def _place() -> str:
    """Where this process's pid means something: the host name and, on Linux, the pid namespace and boot.

    Containers that share a host name (``--network host``) but not their
    pids must not take each other's pids for dead processes; nor may two
    machines cloned from one image (the same name, and the initial pid
    namespace's inode is a kernel constant): the boot id differs.
    """
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = ""
    try:
        boot = pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{namespace}/{boot}"


_PLACE = _place()


class StoredRecord(CallRecord):
    """A :class:`CallRecord` read back from a shared registry, with what claiming it compares."""

    __slots__ = ("stored", "claimer", "claimed_at")


def read_record(token: str, remembered_at, claimer, claimed_at) -> StoredRecord:
    record = StoredRecord.from_token(token)
    record.remembered_at = float(remembered_at)
    record.stored = token
    record.claimer = claimer or None
    record.claimed_at = float(claimed_at) if claimed_at else None
    return record


def seen_as(record) -> tuple[str, str | None]:
    """The token and the claim ``record`` was read with; a record never read back
    (the very object remembered) compares by its own token, unclaimed."""
    if isinstance(record, StoredRecord):
        return record.stored, record.claimer
    return record.to_token(), None


def new_claimer() -> str:
    return f"{_PLACE}:{os.getpid()}:{secrets.token_hex(6)}"


def holder_dead(claimer: str) -> bool:
    """The claim's process ran where this one runs (host and pid namespace) and no longer exists."""
    place, pid = _place_pid(claimer)
    if place != _PLACE or pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: it exists, under another user
        return False
    return _zombie(pid)


def _zombie(pid: int) -> bool:
    """``pid`` has exited and waits to be reaped: ``kill(pid, 0)`` still finds it.

    A worker killed by SIGKILL stays a zombie until its supervisor reaps it,
    which on a busy host can be after the switch has retried the end it was
    charging: that retry must take the claim over, not see a live holder.
    """
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False  # no /proc (not Linux), or it was reaped meanwhile: kill() said it existed
    return stat.rsplit(b")", 1)[-1].split()[:1] in ([b"Z"], [b"X"])


def _place_pid(claimer: str) -> tuple[str, int | None]:
    parts = claimer.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return "", None
    return parts[0], int(parts[1])


class Counts:
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


def take_over_log(call_id: str, claimer: str, why: str) -> None:
    _log.warning("call_claim_taken_over", call_id=call_id, claimer=claimer, why=why)


# -- URLs --------------------------------------------------------------------------

_SQLITE_OPTIONS = {"claim_lease_s": float, "busy_timeout_ms": int}
_REDIS_OPTIONS = {"claim_lease_s": float, "timeout_ms": float, "prefix": str}
#: What each number option may be.  A lease much shorter than a charge takes live claims over (a
#: double charge); SQLite reads a busy timeout past 2**31 ms back as 0; a huge socket timeout overflows.
_RANGES = {"claim_lease_s": (0.1, 86400), "busy_timeout_ms": (1, 60000), "timeout_ms": (1, 60000)}


def open_url(url: str, *, max_calls: int, max_age_s: float):
    """The registry a URL names (see :func:`tel400.calls.open_calls`)."""
    from .calls import CallRegistry

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory" and not parts.netloc.strip("/") and not parts.path.strip("/") and not parts.query:
        return CallRegistry(max_calls=max_calls, max_age_s=max_age_s)
    if scheme == "sqlite":
        if parts.netloc:
            raise ValueError(f"calls: sqlite:// takes a path and no host (sqlite:///path/calls.db); "
                             f"got {url!r}")
        path = unquote(parts.path)
        if not path or path.endswith("/"):
            raise ValueError(f"calls: sqlite:// needs a file path, e.g. sqlite:///var/lib/tel400/calls.db; "
                             f"got {url!r}")
        options = _options(parts, _SQLITE_OPTIONS, url)
        return SqliteCallRegistry(path, max_calls=max_calls, max_age_s=max_age_s, **options)
    if scheme in redis_clients.SCHEMES:
        options = _options(parts, _REDIS_OPTIONS, url, keep_others=True)
        ours = set(_REDIS_OPTIONS)
        rest = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ours]
        bare = urlunsplit(parts._replace(query=urlencode(rest)))
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
            raise ValueError(f"calls: {name} must be a positive number, got {raw!r} "
                             f"in {redis_clients._redacted(url)!r}")
        low, high = _RANGES[name]
        if not low <= value <= high:
            raise ValueError(f"calls: {name}: from {low:g} to {high:g}, got {raw!r} in {redis_clients._redacted(url)!r}")
        out[name] = value
    return out


from .callstore_redis import RedisCallRegistry  # noqa: E402  (they import this module's helpers)
from .callstore_sqlite import SqliteCallRegistry  # noqa: E402

__all__ = ["DEFAULT_CLAIM_LEASE_S", "RedisCallRegistry", "SqliteCallRegistry", "StoredRecord", "open_url"]
