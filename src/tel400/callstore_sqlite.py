"""Calls in progress in one SQLite file, shared by the processes of one host.

The semantics common to shared registries (one end, one charge; claims of
dead processes; wall-clock ages; per-process counts) are in
:mod:`tel400.callstores`.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time

import structlog

from .calls import check_bounds
from .callstores import (DEFAULT_CLAIM_LEASE_S, DROP_BATCH, Counts, StoredRecord, holder_dead, new_claimer,
                         read_record, seen_as, take_over_log)
from .exceptions import BackendError

_log = structlog.get_logger("tel400.calls")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS calls (id TEXT PRIMARY KEY, token TEXT NOT NULL, "
    "remembered_at REAL NOT NULL, "
    "claimer TEXT, claimed_at REAL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS calls_by_age ON calls (remembered_at)",
    # The number of rows, kept by triggers: counting 200,000 rows on every call would cost milliseconds.
    "CREATE TABLE IF NOT EXISTS calls_count (one INTEGER PRIMARY KEY CHECK (one = 1), n INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO calls_count VALUES (1, (SELECT count(*) FROM calls))",
    "CREATE TRIGGER IF NOT EXISTS calls_in AFTER INSERT ON calls BEGIN UPDATE calls_count SET n = n + 1; END",
    "CREATE TRIGGER IF NOT EXISTS calls_out AFTER DELETE ON calls "
    "BEGIN UPDATE calls_count SET n = n - 1; END",
)

#: Connections a forked child inherited: never used and never closed (closing
#: a SQLite connection in a child may act on its parent's locks and WAL).
_inherited: list = []


class SqliteCallRegistry(Counts):
    """Calls in progress in one SQLite file, shared by the processes of one host.

    Args:
        path: the database file (made if missing; its directory must exist).
        max_calls: the most calls remembered at once, over all processes.
        max_age_s: how long a call is remembered (wall clock).
        claim_lease_s: after how long a claim held by a live process may be
            taken over (:mod:`tel400.callstores`); a dead holder's at once.
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
            raise ValueError(f"calls: sqlite:// needs a file path, e.g. sqlite:///var/lib/tel400/calls.db; "
                             f"got {path!r}")
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
            self._conn, self._pid = self._open(), os.getpid()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        """A connection, the file in WAL mode and the schema made, retried while other processes do the same.

        Processes that open a new file at once race to turn on WAL and make
        the tables; SQLite answers some of them "database is locked" at once,
        without waiting out ``busy_timeout``, so the wait is here.
        """
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            conn = None
            try:
                conn = sqlite3.connect(self.path, timeout=self._busy_timeout_ms / 1000, isolation_level=None,
                                       check_same_thread=False)
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                with _transaction(conn):
                    for statement in _SCHEMA:
                        conn.execute(statement)
                return conn
            except sqlite3.Error as exc:
                if conn is not None:
                    conn.close()
                busy = isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))
                if not busy or time.monotonic() >= deadline:
                    raise BackendError(f"calls: cannot open {self.path!r}: {exc}") from exc
                time.sleep(random.uniform(0.005, 0.02))

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
                if conn.execute("UPDATE calls SET token = ?, remembered_at = ?, claimer = NULL, "
                                "claimed_at = NULL "
                                "WHERE id = ?", (token, now, call_id)).rowcount:
                    return True, expired
                if conn.execute("SELECT n FROM calls_count").fetchone()[0] >= self.max_calls:
                    return False, expired
                conn.execute("INSERT INTO calls (id, token, remembered_at) VALUES (?, ?, ?)",
                             (call_id, token, now))
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
        """The record of ``call_id`` as stored, with its claim; ``None`` if unknown or expired."""
        key = str(call_id)
        row = self._run(lambda conn: conn.execute(
            "SELECT token, remembered_at, claimer, claimed_at FROM calls WHERE id = ? AND remembered_at > ?",
            (key, self._clock() - self.max_age_s)).fetchone())
        return None if row is None else read_record(*row)

    def claim(self, call_id, record) -> bool:
        """Reserve the end of ``call_id`` for this report if the call still holds ``record``.

        ``False`` if it was routed again, ended, or another report holds a
        claim that is neither dead nor past its lease (:mod:`tel400.callstores`).
        """
        key = str(call_id)
        token, seen = seen_as(record)
        now = self._clock()
        if seen is not None and not self._stale(seen, record.claimed_at, now):
            return False
        claimer = new_claimer()

        def work(conn):
            with _transaction(conn):
                if conn.execute("UPDATE calls SET claimer = ?, claimed_at = ? "
                                "WHERE id = ? AND token = ? AND claimer IS ?",
                                (claimer, now, key, token, seen)).rowcount != 1:
                    return False
            self._mine[key] = claimer
            return True

        claimed = self._run(work)
        if claimed and seen is not None:
            take_over_log(key, seen, "dead" if holder_dead(seen) else "lease")
        return claimed

    def _stale(self, claimer: str, claimed_at: float | None, now: float) -> bool:
        return claimed_at is None or now - claimed_at >= self.claim_lease_s or holder_dead(claimer)

    def settle(self, call_id, record, rest=None) -> None:
        """End this process's claim: forget the call, or keep ``rest`` (of the same age) for a retry.

        Nothing changes if the claim was taken over or the call routed again meanwhile.
        """
        key = str(call_id)

        def work(conn):
            claimer = self._mine.pop(key, None)
            if claimer is None:
                return
            with _transaction(conn):
                if rest is None:
                    conn.execute("DELETE FROM calls WHERE id = ? AND claimer = ?", (key, claimer))
                else:
                    conn.execute("UPDATE calls SET token = ?, claimer = NULL, claimed_at = NULL "
                                 "WHERE id = ? AND claimer = ?",
                                 (rest.to_token(), key, claimer))

        self._run(work)

    def pop(self, call_id) -> StoredRecord | None:
        """Take the call out (:meth:`tel400.Router.export_call`); ``None`` if unknown or expired."""
        key = str(call_id)

        def work(conn):
            with _transaction(conn):
                return conn.execute("DELETE FROM calls WHERE id = ? AND remembered_at > ? "
                                    "RETURNING token, remembered_at, claimer, claimed_at",
                                    (key, self._clock() - self.max_age_s)).fetchone()

        row = self._run(work)
        return None if row is None else read_record(*row)

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
    """``BEGIN IMMEDIATE`` .. ``COMMIT`` (rolled back on an error): the write lock from the start.

    So two processes never both read the count and both insert past
    ``max_calls``; and a write never starts from a read snapshot another
    process's commit made stale, which SQLite refuses at once
    (``SQLITE_BUSY_SNAPSHOT``) instead of waiting ``busy_timeout``.
    """

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

