"""Call records: every decision and every call end, in SQLite, and the month's report.

Recording must never slow a decision: the request path appends a tuple to a
bounded queue and a writer thread inserts them in batches (one transaction
per batch, ~0.2 s apart).  When the disk cannot keep up and the queue is full,
records are dropped and counted (``tel400_http_records_dropped``): a switch
waiting on its answer matters more than a line in a report.  Counting for
caps does not depend on these records.

Days and hours are the number's own (its plan's time zone), fixed when the
record is written, so a report groups by the day the company lived, not by
UTC.  Money is kept in integer millionths of a yuan (what the tariff computes
to), so sums are exact.

Reading at scale (a number with a million records a month): the writer keeps
daily *rollups* in the same transaction as the rows they count (and moves
their amounts when a call's end arrives), so a month's report reads a few
hundred small rows, never the records.  The records listing is a keyset walk
down an index, newest first, whatever the page; the CSV export streams it.
Caller analysis reads a per-(number, month, province) summary of the
per-(number, month, caller) rollup, kept in the same transaction (how many
callers, how many returning, how many called twice in a day), and walks an
index on the callers' call counts for the most frequent: its cost does not
grow with the callers of the month.

Retention is bounded: records older than ``retention_days`` (in the order
they were written) and the oldest beyond ``max_rows`` are deleted by the
writer once an hour.  The day-level rollups keep the history the rows no
longer have (a report of a pruned month still answers) for
``rollup_retention_days``; the caller rollups (one row per caller and day or
month, and the per-month caller summaries) follow ``retention_days``.
"""

from __future__ import annotations

import base64
import binascii
import collections
import csv
import datetime as dt
import io
import os
import re
import sqlite3
import threading
import time
import zoneinfo
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal

import structlog

import tel400
from tel400 import provinces

_log = structlog.get_logger("tel400.http.records")

CONNECTS = ("bridge", "queue", "conference")
#: Decision actions, as recorded.
ACTIONS = ("bridge", "reject", "collect_pin", "queue", "conference")
#: What the ``outcome`` filter of :meth:`CallRecords.find` takes: ``connected``
#: (bridged, queued or conferenced), ``not_connected`` (anything else), one
#: action, or one reason (:data:`tel400.REASONS`).
OUTCOMES = ("connected", "not_connected") + ACTIONS + tuple(tel400.REASONS)
#: The CSV export's header: stable names (scripts read the columns by them).
CSV_COLUMNS = ("id", "call_id", "started", "day", "caller", "province", "province_name", "rule", "target",
               "action", "reason", "channel", "duration_s", "billed_s", "cost")
#: ``PRAGMA user_version`` of the current schema; a file at a lower version is
#: upgraded when opened (version 1: the rollups rebuilt once from its rows;
#: version 2: the callers' ``returning_caller`` flags and summaries filled from the
#: caller rollup).
SCHEMA_VERSION = 3
#: Records read per step when rebuilding rollups or streaming a CSV.
CHUNK = 5000
#: At most this many records on one page of :meth:`CallRecords.find`.
MAX_PAGE = 1000
#: Per-(number, day, caller) counts are kept this long (days): a call
#: written later than that after its day no longer makes its caller a repeat.
REPEAT_WINDOW_DAYS = 8
#: The writer's SQLite page cache, in KiB.
WRITER_CACHE_KIB = 65536
#: How many top callers :meth:`CallRecords.callers` lists.
TOP_CALLERS = 20

_MONTH = re.compile(r"\A([1-9][0-9]{3})-(0[1-9]|1[0-2])\Z")
_DAY = re.compile(r"\A[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}\Z")
_CALLER = re.compile(r"\A[0-9A-Za-z+*#._@-]{1,64}\Z")
_MICRO = Decimal(1_000_000)

_TABLES = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id TEXT, number TEXT, caller TEXT, province TEXT, rule TEXT, target TEXT,
    action TEXT NOT NULL, reason TEXT NOT NULL, channel TEXT NOT NULL,
    started REAL NOT NULL, day TEXT NOT NULL,
    duration_s REAL, billed_s INTEGER, cost_micro INTEGER,
    hour INTEGER, connected INTEGER
);
CREATE INDEX IF NOT EXISTS records_call_id ON records (call_id);
CREATE TABLE IF NOT EXISTS roll_day (
    number TEXT NOT NULL, day TEXT NOT NULL, calls INTEGER NOT NULL, connected INTEGER NOT NULL,
    billed_s INTEGER NOT NULL, cost_micro INTEGER NOT NULL, duration_s REAL NOT NULL,
    PRIMARY KEY (number, day)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS roll_hour (
    number TEXT NOT NULL, day TEXT NOT NULL, hour INTEGER NOT NULL, calls INTEGER NOT NULL,
    connected INTEGER NOT NULL, PRIMARY KEY (number, day, hour)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS roll_province (
    number TEXT NOT NULL, day TEXT NOT NULL, province TEXT NOT NULL, calls INTEGER NOT NULL,
    connected INTEGER NOT NULL, PRIMARY KEY (number, day, province)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS roll_target (
    number TEXT NOT NULL, day TEXT NOT NULL, target TEXT NOT NULL, calls INTEGER NOT NULL,
    billed_s INTEGER NOT NULL, cost_micro INTEGER NOT NULL, PRIMARY KEY (number, day, target)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS roll_reason (
    number TEXT NOT NULL, day TEXT NOT NULL, action TEXT NOT NULL, reason TEXT NOT NULL, calls INTEGER NOT NULL,
    PRIMARY KEY (number, day, action, reason)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS roll_caller_day (
    number TEXT NOT NULL, day TEXT NOT NULL, caller TEXT NOT NULL, calls INTEGER NOT NULL,
    PRIMARY KEY (number, day, caller)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS roll_caller_month (
    number TEXT NOT NULL, month TEXT NOT NULL, caller TEXT NOT NULL, calls INTEGER NOT NULL,
    province TEXT NOT NULL, repeat INTEGER NOT NULL, returning_caller INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (number, month, caller)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS roll_caller_seen ON roll_caller_month (number, caller, month);
CREATE INDEX IF NOT EXISTS roll_caller_top ON roll_caller_month (number, month, calls DESC, caller);
CREATE TABLE IF NOT EXISTS roll_caller_summary (
    number TEXT NOT NULL, month TEXT NOT NULL, province TEXT NOT NULL, callers INTEGER NOT NULL,
    returning_callers INTEGER NOT NULL, repeat_callers INTEGER NOT NULL,
    PRIMARY KEY (number, month, province)) WITHOUT ROWID;
"""

# The listing's indexes: each ends with (day, rowid), so a filter on its
# column walks the matching records already newest first.
_FILTER_INDEXES = {
    "day": "records_number_day ON records (number, day)",
    "number": "records_number ON records (number)",  # calls(): by id
    "caller": "records_caller ON records (number, caller, day)",
    "target": "records_target ON records (number, target, day)",
    "province": "records_province ON records (number, province, day)",
    "reason": "records_reason ON records (number, reason, day)",
    "action": "records_action ON records (number, action, day)",
    "connected": "records_connected ON records (number, connected, day)",
}
# The most selective filter given picks the index (a plain equality on it).
_INDEX_ORDER = ("caller", "target", "province", "reason", "action", "connected")

_COLUMNS = ("id, call_id, caller, province, rule, target, action, reason, channel, started, day, duration_s, "
            "billed_s, cost_micro")


def plan_zones(router, *, max_cached: int = 10_000):
    """``zone_of(number)`` for :class:`CallRecords`: the time zone of a number's plan, or ``None``.

    Each number's zone is read once (:meth:`tel400.Router.plan_of`: one
    store read for a router made by ``from_store``) and kept, for at most
    ``max_cached`` numbers; the cache is dropped whenever the router's
    plans change (a reload or an update).
    """
    cache: dict = {"stamp": None, "zones": {}}

    def zone_of(number):
        stamp = (router.reloads, router.updates)
        if cache["stamp"] != stamp or len(cache["zones"]) >= max_cached:
            cache["zones"], cache["stamp"] = {}, stamp
        zones = cache["zones"]
        if number not in zones:
            try:
                plan = router.plan_of(number)
            except (tel400.PlanError, tel400.BackendError):
                plan = None  # an invalid stored plan, a store away: the record is kept in UTC
            zones[number] = plan.timezone if plan is not None else None
        name = zones[number]
        return zoneinfo.ZoneInfo(name) if name else None

    return zone_of


def check_month(month: str) -> tuple[str, str]:
    """``"2026-11"`` → the first day and the day after the last, as ``YYYY-MM-DD``; ``ValueError`` otherwise."""
    m = _MONTH.match(month or "") if isinstance(month, str) else None
    if not m:
        raise ValueError(f"month: expected YYYY-MM, got {month!r}")
    year, mon = int(m.group(1)), int(m.group(2))
    after = f"{year + 1:04d}-01-01" if mon == 12 else f"{year:04d}-{mon + 1:02d}-01"  # compared as text
    return f"{month}-01", after


def check_day(name: str, value) -> str:
    """A local day as ``YYYY-MM-DD`` (a :class:`datetime.date` or that text); ``ValueError`` naming ``name``."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, str) and _DAY.match(value):
        try:
            return dt.date.fromisoformat(value).isoformat()
        except ValueError:
            pass
    raise ValueError(f"{name}: expected a day as YYYY-MM-DD, got {value!r}")


def _money(micro: int | None) -> str:
    return str((Decimal(micro or 0) / _MICRO).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _utc(ts: float) -> str | None:
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()
    except (ValueError, OverflowError, OSError):
        return None


def _minutes(billed_s: int | None) -> float:
    return round((billed_s or 0) / 60, 2)


def _record(row) -> dict:
    rid, call_id, caller, province, rule, target, action, reason, channel, started, day, duration, billed, cost = row
    return {"id": rid, "call_id": call_id, "caller": caller, "province": province, "rule": rule, "target": target,
            "action": action, "reason": reason, "channel": channel, "started": _utc(started), "day": day,
            "duration_s": duration, "billed_s": billed, "cost": None if cost is None else _money(cost)}


def _encode_cursor(day: str, rid: int) -> str:
    return base64.urlsafe_b64encode(f"{day}|{rid}".encode()).decode().rstrip("=")


def _decode_cursor(after: str) -> tuple[str, int]:
    try:
        text = base64.urlsafe_b64decode(after + "=" * (-len(after) % 4)).decode()
        day, rid = text.split("|")
        if day != "unknown":
            check_day("after", day)
        return day, int(rid)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ValueError("after: not a cursor from this listing (start again from the first page)") from None


class _Filters:
    """A listing's filters, checked: each bad value is a ``ValueError`` naming its field."""

    def __init__(self, since_day=None, until_day=None, caller=None, province=None, outcome=None, target=None):
        self.since = None if since_day in (None, "") else check_day("since_day", since_day)
        self.until = None if until_day in (None, "") else check_day("until_day", until_day)
        if self.since and self.until and self.since > self.until:
            raise ValueError(f"since_day: {self.since} is after until_day {self.until}")
        self.where: list[str] = []
        self.args: list = []
        self.index = "day"
        chosen: dict[str, tuple[str, tuple]] = {}
        if caller not in (None, ""):
            if not isinstance(caller, str) or not _CALLER.match(caller.strip()):
                raise ValueError(f"caller: expected a calling number (digits, up to 64 characters), got {caller!r}")
            chosen["caller"] = ("caller = ?", (caller.strip(),))
        if target not in (None, ""):
            if not isinstance(target, str) or len(target) > 200:
                raise ValueError(f"target: expected a target number or name, got {target!r}")
            chosen["target"] = ("target = ?", (target.strip(),))
        if province not in (None, ""):
            if not isinstance(province, str):
                raise ValueError(f"province: expected a province code or name, got {province!r}")
            if province.strip().casefold() == "unknown":
                chosen["province"] = ("province IS NULL", ())
            else:
                code = provinces.resolve(province)
                if code is None:
                    raise ValueError(f"province: no province is called {province!r} (a code such as CN-BJ, "
                                     "or a name such as 北京 or Beijing)")
                chosen["province"] = ("province = ?", (code,))
        if outcome not in (None, ""):
            if outcome not in OUTCOMES:
                raise ValueError(f"outcome: expected one of {', '.join(OUTCOMES)}, got {outcome!r}")
            if outcome in ("connected", "not_connected"):
                chosen["connected"] = ("connected = ?", (int(outcome == "connected"),))
            elif outcome in ACTIONS:
                chosen["action"] = ("action = ?", (outcome,))
            else:
                chosen["reason"] = ("reason = ?", (outcome,))
        for name in _INDEX_ORDER:
            if name in chosen:
                self.index = name
                break
        for clause, args in chosen.values():
            self.where.append(clause)
            self.args.extend(args)
        if self.since:
            self.where.append("day >= ?")
            self.args.append(self.since)
        if self.until:
            self.where.append("day <= ?")
            self.args.append(self.until)


def check_filters(**filters) -> None:
    """Check listing filters as :meth:`CallRecords.find` does, without a query: a ``ValueError`` naming the
    first bad one (a page checks each field alone to show every bad one beside its field)."""
    _Filters(**filters)


class CallRecords:
    """Call records in an SQLite file, written in the background.

    Args:
        path: the database file.
        zone_of: the time zone of a 400 number (its plan's), for the record's day and hour.
        retention_days: records (and caller rollups) older than this are deleted.
        max_rows: at most this many records are kept (the oldest go first).
        queue_max: records waiting to be written before new ones are dropped.
        rollup_retention_days: day-level rollups (the report) are kept this long.
        end_wait_s: how long a call's end whose record is not written yet
            waits for it (retried with each batch): with ``tel400-http
            --workers``, the worker that routed the call may write its record
            after another worker took the call's end.  Then the end is
            dropped and counted (``ends_unmatched``).
    """

    def __init__(self, path: str, *, zone_of, retention_days: float = 180, max_rows: int = 5_000_000,
                 queue_max: int = 100_000, interval_s: float = 0.2, batch: int = 2000, clock=time.time,
                 rollup_retention_days: float = 1100, end_wait_s: float = 10.0) -> None:
        self.path = os.fspath(path)
        self._zone_of = zone_of
        self.retention_days = retention_days
        self.rollup_retention_days = max(rollup_retention_days, retention_days)
        self.max_rows = max_rows
        self.queue_max = queue_max
        self._interval_s = interval_s
        self._batch = batch
        self._clock = clock
        self._queue: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._done = threading.Condition()
        self._enqueued = 0
        self._written = 0
        self.dropped = 0
        self.errors = 0
        self.end_wait_s = end_wait_s
        #: ends whose record was not in the database yet: call id → (give up at, the end); the writer's only
        self._waiting: dict[str, tuple[float, tuple]] = {}
        #: ends dropped after end_wait_s without their record
        self.ends_unmatched = 0
        self._zones: dict[str, dt.tzinfo] = {}
        self._hours: dict[str | None, tuple[float, float, str, int]] = {}
        self._local = threading.local()
        self._stop = False
        self._next_prune = 0.0
        self._open_schema(self._db())
        self._thread = threading.Thread(target=self._run, name="tel400-records", daemon=True)
        self._thread.start()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    # -- the schema and its upgrade -------------------------------------------------

    def _open_schema(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version >= SCHEMA_VERSION:
            return
        existing = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'").fetchone()
        if existing:
            columns = {row[1] for row in db.execute("PRAGMA table_info(records)")}
            for column in ("hour", "connected"):
                if column not in columns:
                    db.execute(f"ALTER TABLE records ADD COLUMN {column} INTEGER")
        caller_columns = {row[1] for row in db.execute("PRAGMA table_info(roll_caller_month)")}
        db.executescript(_TABLES)
        if caller_columns and "returning_caller" not in caller_columns:
            self._fill_caller_summaries(db)
        if existing and version < 2:  # version 2 files have their rollups
            self._rebuild_rollups(db)
        for index in _FILTER_INDEXES.values():
            db.execute(f"CREATE INDEX IF NOT EXISTS {index}")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _rebuild_rollups(self, db: sqlite3.Connection) -> None:
        """Fill the new columns and the rollups from a previous version's rows, once, in batches.

        Each batch fills its rows' ``hour`` and ``connected`` and adds them to
        the rollups in one transaction; a batch's rows are those still without
        ``connected``, so an upgrade cut short resumes where it stopped.
        """
        total = db.execute("SELECT COUNT(*) FROM records WHERE connected IS NULL").fetchone()[0]
        _log.info("records_upgrade_started", rows=total, schema=SCHEMA_VERSION)
        done, last = 0, 0
        while True:
            rows = db.execute(
                "SELECT id, number, caller, province, target, action, reason, started, day, billed_s, cost_micro, "
                "duration_s FROM records WHERE id > ? AND connected IS NULL ORDER BY id LIMIT ?",
                (last, CHUNK)).fetchall()
            if not rows:
                break
            db.execute("BEGIN IMMEDIATE")
            try:
                counted, updates = [], []
                for rid, number, caller, province, target, action, reason, started, day, billed, cost, dur in rows:
                    hour = self._local_hour(number, started, day)
                    connected = int(action in CONNECTS)
                    updates.append((hour, connected, rid))
                    counted.append((number, caller, province, target, action, reason, day, hour, connected,
                                    billed, cost, dur))
                db.executemany("UPDATE records SET hour = ?, connected = ? WHERE id = ?", updates)
                self._roll_inserts(db, counted)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            done += len(rows)
            last = rows[-1][0]
            _log.info("records_upgrade_progress", done=done, rows=total)
        _log.info("records_upgrade_finished", rows=done)

    def _fill_caller_summaries(self, db: sqlite3.Connection) -> None:
        """Version 2 to 3: each caller-month's ``returning_caller`` flag and the per-month summaries, in one transaction.

        Only the caller rollup is read (a few hundred thousand rows a busy
        month, not the records); cut short, nothing is kept and the next
        open does it again.
        """
        rows = db.execute("SELECT COUNT(*) FROM roll_caller_month").fetchone()[0]
        _log.info("records_upgrade_callers_started", caller_months=rows, schema=SCHEMA_VERSION)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("ALTER TABLE roll_caller_month ADD COLUMN returning_caller INTEGER NOT NULL DEFAULT 0")
            db.execute(
                "UPDATE roll_caller_month AS m SET returning_caller = 1 WHERE EXISTS (SELECT 1 FROM roll_caller_month p "
                "WHERE p.number = m.number AND p.caller = m.caller AND p.month < m.month)")
            db.execute("DELETE FROM roll_caller_summary")
            db.execute(
                "INSERT INTO roll_caller_summary SELECT number, month, province, COUNT(*), SUM(returning_caller), "
                "SUM(repeat) FROM roll_caller_month GROUP BY number, month, province")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        _log.info("records_upgrade_callers_finished", caller_months=rows)

    def _local_hour(self, number, started, day) -> int | None:
        when = self._when(number, started)
        return when[1] if when[0] == day else None  # the zone moved since: the hour is not that day's

    # -- the request path: append and return ----------------------------------------

    def _put(self, item) -> None:
        if len(self._queue) >= self.queue_max:
            self.dropped += 1
            return
        self._queue.append(item)
        self._enqueued += 1

    def decision(self, decision, started: float) -> None:
        """Record a decision (the switch's call id, if any, links the call's end to it).

        The decision itself is queued: taking it apart is the writer's work,
        off the request path.
        """
        self._put(("d", decision, started))

    def ended(self, charge) -> None:
        """Record a call's end: its duration, billed seconds, cost and answering target."""
        cost = None if charge.cost is None else int(charge.cost * _MICRO)
        self._put(("e", charge.call_id, charge.duration_s, charge.billed_s, cost, charge.target))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def pending(self) -> int:
        return len(self._queue)

    # -- the writer -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval_s)
            self._wake.clear()
            try:
                self._drain()
            except Exception:  # the writer must outlive any one bad batch
                self.errors += 1
                _log.exception("records_writer_failed")
            if self._stop and not self._queue:
                return

    def _drain(self) -> None:
        if self._waiting and not self._queue:
            self._write([])  # ends waiting for another process's records: again
        while self._queue:
            items = []
            while self._queue and len(items) < self._batch:
                items.append(self._queue.popleft())
            try:
                self._write(items)
            except Exception:
                self._write_one_by_one(items)  # only what cannot be written is lost
            with self._done:
                self._written += len(items)
                self._done.notify_all()
        now = self._clock()
        if now >= self._next_prune:
            self._next_prune = now + 3600
            try:
                self.prune()
            except sqlite3.Error as exc:
                self.errors += 1
                _log.error("records_prune_failed", error=str(exc))

    def _write_one_by_one(self, items) -> None:
        for item in items:
            try:
                self._write([item])
            except Exception as exc:
                self.errors += 1
                _log.error("record_write_failed", error=repr(exc), record=repr(item)[:200])

    def _when(self, number: str | None, started: float) -> tuple[str, int | None]:
        """The number's local day and hour of a moment."""
        # Most records of a batch fall in the hour of the one before: the
        # hour's bounds are kept per number, a date computed only on a new hour.
        known = self._hours.get(number)
        if known is not None and known[0] <= started < known[1]:
            return known[2], known[3]
        zone = self._zones.get(number) if number else None
        if zone is None:
            zone = self._zone_of(number) if number else None
            zone = zone or zoneinfo.ZoneInfo("Asia/Shanghai")
            if number:
                self._zones[number] = zone
        try:
            local = dt.datetime.fromtimestamp(started, zone)
            start = local.replace(minute=0, second=0, microsecond=0).timestamp()
            end = min(start + 3600, (local.replace(hour=0, minute=0, second=0, microsecond=0)
                                     + dt.timedelta(days=1)).timestamp())  # wall clock: a DST day is 23 or 25 h
        except (ValueError, OverflowError, OSError):  # a time no calendar holds: kept, never in a month
            return "unknown", None
        day = local.date().isoformat()
        self._hours[number] = (start, end, day, local.hour)
        return day, local.hour

    def _write(self, items) -> None:
        db = self._db()
        if not getattr(self._local, "writer", False):
            # The writer's inserts land all over the filter indexes: a larger
            # page cache keeps their pages in memory between batches (readers
            # keep SQLite's default: they are many, each a thread).
            db.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
            self._local.writer = True
        inserts = []
        ends = [end for _, end in self._waiting.values()]  # first: a newer end of the same call replaces it
        for item in items:
            if item[0] == "d":
                _, d, started = item
                target = d.targets[0] if d.targets and d.action in CONNECTS else None
                day, hour = self._when(d.number, started)
                inserts.append((d.call_id, d.number, d.caller, d.province, d.rule, target, d.action, d.reason,
                                d.channel, started, day, hour, int(d.action in CONNECTS)))
            else:
                ends.append(item[1:])
        # IMMEDIATE: the write lock first (waiting for it up to the timeout), for the writers of other
        # processes (tel400-http --workers); a read turned write would fail at once on their commits
        db.execute("BEGIN IMMEDIATE")
        try:
            # Decisions first: an end in the same batch finds its call.
            db.executemany(
                "INSERT INTO records (call_id, number, caller, province, rule, target, action, reason, channel, "
                "started, day, hour, connected) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", inserts)
            self._roll_inserts(db, [(number, caller, province, target, action, reason, day, hour, connected,
                                     None, None, None)
                                    for (_, number, caller, province, _, target, action, reason, _, _, day, hour,
                                         connected) in inserts])
            missing = self._ends(db, ends)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._wait_for_records(missing)
        self._zones.clear()  # plans may have changed their zone; look again next batch
        self._hours.clear()

    def _wait_for_records(self, missing: dict[str, tuple]) -> None:
        """Keep the ends whose record is not written yet for the next batches, up to ``end_wait_s``."""
        now = time.monotonic()
        waiting = {}
        for call_id, end in missing.items():
            known = self._waiting.get(call_id)
            give_up = known[0] if known is not None else now + self.end_wait_s
            if give_up > now and len(waiting) < self.queue_max:
                waiting[call_id] = (give_up, end)
            else:
                self.ends_unmatched += 1
                _log.warning("record_end_unmatched", call_id=call_id, waited_s=self.end_wait_s)
        self._waiting = waiting

    def _ends(self, db, ends) -> dict[str, tuple]:
        """Write calls' ends on their records and move the rollups' amounts from the old values to the new.

        The records are read in one query per 500 ends; when one call's end
        comes twice, the later replaces the earlier, as it would one by one.

        Returns:
            The ends whose call has no record (yet), by call id: the last of each.
        """
        state: dict[str, list] = {}
        call_ids = list({end[0] for end in ends})
        for chunk in _chunks(call_ids, 500):
            marks = ",".join("?" * len(chunk))
            for row in db.execute(
                    "SELECT call_id, id, number, day, target, duration_s, billed_s, cost_micro FROM records "
                    f"WHERE id IN (SELECT MAX(id) FROM records WHERE call_id IN ({marks}) GROUP BY call_id)", chunk):
                state[row[0]] = list(row[1:])
        before = {call_id: tuple(now) for call_id, now in state.items()}
        missing = {}
        for end in ends:
            call_id, duration_s, billed_s, cost, target = end
            now = state.get(call_id)
            if now is not None:
                now[3:7] = [target if target is not None else now[3], duration_s, billed_s, cost]
            else:
                missing[call_id] = end
        updates = []
        days: dict = collections.defaultdict(lambda: [0, 0, 0.0])
        targets: dict = collections.defaultdict(lambda: [0, 0, 0])
        for call_id, (rid, number, day, target, duration_s, billed_s, cost) in state.items():
            _, _, _, old_target, old_duration, old_billed, old_cost = before[call_id]
            updates.append((duration_s, billed_s, cost, target, rid))
            if number is None:  # an unknown number's call has no rollups to move
                continue
            d = days[number, day]
            d[0] += (billed_s or 0) - (old_billed or 0)
            d[1] += (cost or 0) - (old_cost or 0)
            d[2] += (duration_s or 0) - (old_duration or 0)
            if old_target is not None:
                t = targets[number, day, old_target]
                t[0] -= 1
                t[1] -= old_billed or 0
                t[2] -= old_cost or 0
            if target is not None:
                t = targets[number, day, target]
                t[0] += 1
                t[1] += billed_s or 0
                t[2] += cost or 0
        db.executemany("UPDATE records SET duration_s = ?, billed_s = ?, cost_micro = ?, target = ? WHERE id = ?",
                       updates)
        db.executemany(
            "UPDATE roll_day SET billed_s = billed_s + ?, cost_micro = cost_micro + ?, duration_s = duration_s + ? "
            "WHERE number = ? AND day = ?", [(*delta, *key) for key, delta in days.items()])
        db.executemany(
            "INSERT INTO roll_target VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET calls = calls + excluded.calls, "
            "billed_s = billed_s + excluded.billed_s, cost_micro = cost_micro + excluded.cost_micro",
            [(*key, *delta) for key, delta in targets.items() if delta != [0, 0, 0]])
        return missing

    def _roll_inserts(self, db, rows) -> None:
        """Add records to the rollups.

        ``rows``: (number, caller, province, target, action, reason, day,
        hour, connected, billed_s, cost_micro, duration_s).  Summed per key in
        Python first: a batch mostly adds to a handful of rollup rows.
        """
        days: dict = collections.defaultdict(lambda: [0, 0, 0, 0, 0.0])
        hours: collections.Counter = collections.Counter()
        hours_conn: collections.Counter = collections.Counter()
        provs: collections.Counter = collections.Counter()
        provs_conn: collections.Counter = collections.Counter()
        targets: dict = collections.defaultdict(lambda: [0, 0, 0])
        reasons: collections.Counter = collections.Counter()
        caller_days: collections.Counter = collections.Counter()
        caller_months: dict = {}
        for number, caller, province, target, action, reason, day, hour, connected, billed, cost, dur in rows:
            if number is None:  # a call to an unknown number: kept as a record, in no number's report
                continue
            d = days[number, day]
            d[0] += 1
            d[1] += connected
            d[2] += billed or 0
            d[3] += cost or 0
            d[4] += dur or 0
            if hour is not None:
                hours[number, day, hour] += 1
                hours_conn[number, day, hour] += connected
            provs[number, day, province or ""] += 1
            provs_conn[number, day, province or ""] += connected
            if target is not None:
                t = targets[number, day, target]
                t[0] += 1
                t[1] += billed or 0
                t[2] += cost or 0
            reasons[number, day, action, reason] += 1
            if caller and day != "unknown":
                caller_days[number, day, caller] += 1
                key = (number, day[:7], caller)
                known = caller_months.get(key)
                province = province or ""
                if known is None:
                    caller_months[key] = [1, province, 0]
                else:
                    known[0] += 1
                    known[1] = _first_province(known[1], province)
        db.executemany(
            "INSERT INTO roll_day VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET calls = calls + excluded.calls, "
            "connected = connected + excluded.connected, billed_s = billed_s + excluded.billed_s, "
            "cost_micro = cost_micro + excluded.cost_micro, duration_s = duration_s + excluded.duration_s",
            [(*key, *value) for key, value in days.items()])
        db.executemany(
            "INSERT INTO roll_hour VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET calls = calls + excluded.calls, "
            "connected = connected + excluded.connected",
            [(*key, calls, hours_conn[key]) for key, calls in hours.items()])
        db.executemany(
            "INSERT INTO roll_province VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET calls = calls + excluded.calls, "
            "connected = connected + excluded.connected",
            [(*key, calls, provs_conn[key]) for key, calls in provs.items()])
        db.executemany(
            "INSERT INTO roll_target VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET calls = calls + excluded.calls, "
            "billed_s = billed_s + excluded.billed_s, cost_micro = cost_micro + excluded.cost_micro",
            [(*key, *value) for key, value in targets.items()])
        db.executemany(
            "INSERT INTO roll_reason VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET calls = calls + excluded.calls",
            [(*key, calls) for key, calls in reasons.items()])
        # A caller-month repeats once a caller-day reaches two calls: the days'
        # counts so far are read per (number, day), 500 callers a query.
        so_far: dict = {}
        by_day: dict = collections.defaultdict(list)
        for number, day, caller in caller_days:
            by_day[number, day].append(caller)
        for (number, day), names in by_day.items():
            for chunk in _chunks(names, 500):
                marks = ",".join("?" * len(chunk))
                for caller, calls in db.execute(
                        "SELECT caller, calls FROM roll_caller_day WHERE number = ? AND day = ? "
                        f"AND caller IN ({marks})", (number, day, *chunk)):
                    so_far[number, day, caller] = calls
        for (number, day, caller), calls in caller_days.items():
            if so_far.get((number, day, caller), 0) + calls >= 2:
                caller_months[number, day[:7], caller][2] = 1
        db.executemany(
            "INSERT INTO roll_caller_day VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET calls = calls + excluded.calls",
            [(*key, calls) for key, calls in caller_days.items()])
        self._roll_caller_months(db, caller_months)

    def _roll_caller_months(self, db, batch: dict) -> None:
        """Add a batch's caller-months to their rollup and move the per-month summaries by what changed.

        ``batch``: (number, month, caller) → [calls, province, repeat] of the
        batch alone.  A caller-month is *returning* when an earlier month of
        that caller is kept; that is, every row but each caller's earliest.
        Months may arrive out of order (a late record, a plan's zone moved):
        a new row earlier than a caller's earliest kept month makes that
        month's row returning.  What a row counted in its summary before
        (province, returning, repeat) is taken out and what it counts now put
        in, so a caller whose province changes moves between provinces.
        """
        rows: dict = {}  # key → [calls added, province, repeat, returning, what it counted before or None]
        new: dict = collections.defaultdict(list)  # (number, caller) → the months new in this batch
        by_month: dict = collections.defaultdict(list)
        for number, month, caller in batch:
            by_month[number, month].append(caller)
        for (number, month), names in by_month.items():
            known = {}
            for chunk in _chunks(names, 500):
                marks = ",".join("?" * len(chunk))
                for caller, province, repeat, returning in db.execute(
                        "SELECT caller, province, repeat, returning_caller FROM roll_caller_month WHERE number = ? "
                        f"AND month = ? AND caller IN ({marks})", (number, month, *chunk)):
                    known[caller] = (province, returning, repeat)
            for caller in names:
                calls, province, repeat = batch[number, month, caller]
                before = known.get(caller)
                if before is None:
                    new[number, caller].append(month)
                    rows[number, month, caller] = [calls, province, repeat, 0, None]
                else:
                    rows[number, month, caller] = [calls, _first_province(before[0], province),
                                                   max(before[2], repeat), before[1], before]
        earliest: dict = {}  # (number, caller) → the earliest month kept before this batch
        by_number: dict = collections.defaultdict(list)
        for number, caller in new:
            by_number[number].append(caller)
        for number, names in by_number.items():
            for chunk in _chunks(names, 500):
                marks = ",".join("?" * len(chunk))
                for caller, month in db.execute(
                        "SELECT caller, MIN(month) FROM roll_caller_month WHERE number = ? "
                        f"AND caller IN ({marks}) GROUP BY caller", (number, *chunk)):
                    earliest[number, caller] = month
        for (number, caller), months in new.items():
            first = min(months)
            was = earliest.get((number, caller))
            if was is not None and was < first:
                first = was
            for month in months:
                rows[number, month, caller][3] = int(month != first)
            if was is not None and was > first:  # the earliest kept so far is now returning
                row = rows.get((number, was, caller))
                if row is None:
                    province, repeat = db.execute(
                        "SELECT province, repeat FROM roll_caller_month WHERE number = ? AND month = ? AND caller = ?",
                        (number, was, caller)).fetchone()
                    row = rows[number, was, caller] = [0, province, repeat, 0, (province, 0, repeat)]
                row[3] = 1
        summary: dict = collections.defaultdict(lambda: [0, 0, 0])
        for (number, month, _), (_, province, repeat, returning, before) in rows.items():
            if before is not None:
                s = summary[number, month, before[0]]
                s[0] -= 1
                s[1] -= before[1]
                s[2] -= before[2]
            s = summary[number, month, province]
            s[0] += 1
            s[1] += returning
            s[2] += repeat
        db.executemany(
            "INSERT INTO roll_caller_month (number, month, caller, calls, province, repeat, returning_caller) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET calls = calls + excluded.calls, "
            "province = excluded.province, repeat = excluded.repeat, returning_caller = excluded.returning_caller",
            [(*key, *value[:4]) for key, value in rows.items()])
        self._move_summaries(db, summary)

    @staticmethod
    def _move_summaries(db, summary: dict) -> None:
        """Add (callers, returning, repeat) deltas to the per-(number, month, province) caller summaries."""
        db.executemany(
            "INSERT INTO roll_caller_summary VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
            "callers = callers + excluded.callers, returning_callers = returning_callers + excluded.returning_callers, "
            "repeat_callers = repeat_callers + excluded.repeat_callers",
            [(*key, *delta) for key, delta in summary.items() if delta != [0, 0, 0]])

    def prune(self) -> int:
        """Delete what retention no longer keeps; returns how many records went.

        Day-level rollups are kept for ``rollup_retention_days`` (the report
        of a month whose records are gone still answers); caller rollups go
        with the days and months ``retention_days`` no longer covers.
        """
        db = self._db()
        now = self._clock()
        cutoff = now - self.retention_days * 86400
        # Records arrive in time order, so the first one young enough bounds
        # the rest; found by walking from the oldest (no index on started:
        # it would cost every insert to save an hourly scan of what goes).
        gone = db.execute(
            "DELETE FROM records WHERE id < COALESCE((SELECT id FROM records WHERE started >= ? ORDER BY id LIMIT 1), "
            "(SELECT MAX(id) + 1 FROM records))", (cutoff,)).rowcount
        gone += db.execute("DELETE FROM records WHERE id <= (SELECT MAX(id) FROM records) - ?",
                           (self.max_rows,)).rowcount
        caller_day = _utc_day(cutoff)
        if caller_day is not None:
            self._prune_caller_months(db, caller_day[:7])
        # Per-day caller counts only decide whether a caller called twice that
        # day, and a day's calls are written that day: a few days suffice.
        repeat_day = _utc_day(max(cutoff, now - REPEAT_WINDOW_DAYS * 86400))
        if repeat_day is not None:
            db.execute("DELETE FROM roll_caller_day WHERE day < ?", (repeat_day,))
        rollup_day = _utc_day(now - self.rollup_retention_days * 86400)
        if rollup_day is not None:
            for table in ("roll_day", "roll_hour", "roll_province", "roll_target", "roll_reason"):
                db.execute(f"DELETE FROM {table} WHERE day < ?", (rollup_day,))
        return gone

    def _prune_caller_months(self, db, month: str) -> None:
        """Delete the caller-months before ``month`` and their summaries, in one transaction.

        A caller whose earlier months went is no longer *returning* in their
        earliest month still kept (the caller analysis counts only what is
        kept): that row's flag and its summary are put right.
        """
        db.execute("BEGIN IMMEDIATE")
        try:
            pruned: dict = collections.defaultdict(set)
            for number, caller in db.execute("SELECT number, caller FROM roll_caller_month WHERE month < ?", (month,)):
                pruned[number].add(caller)
            if pruned:
                db.execute("DELETE FROM roll_caller_month WHERE month < ?", (month,))
            db.execute("DELETE FROM roll_caller_summary WHERE month < ?", (month,))
            flips, summary = [], collections.defaultdict(lambda: [0, 0, 0])
            for number, callers in pruned.items():
                for chunk in _chunks(sorted(callers), 500):
                    marks = ",".join("?" * len(chunk))
                    for month_kept, caller, province in db.execute(
                            "SELECT m.month, m.caller, m.province FROM roll_caller_month m "
                            f"WHERE m.number = ? AND m.caller IN ({marks}) AND m.returning_caller = 1 AND m.month = "
                            "(SELECT MIN(p.month) FROM roll_caller_month p WHERE p.number = m.number "
                            "AND p.caller = m.caller)", (number, *chunk)):
                        flips.append((number, month_kept, caller))
                        summary[number, month_kept, province][1] -= 1
            db.executemany("UPDATE roll_caller_month SET returning_caller = 0 WHERE number = ? AND month = ? AND caller = ?",
                           flips)
            self._move_summaries(db, summary)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything recorded so far is written; ``False`` on timeout."""
        target = self._enqueued
        self._wake.set()
        with self._done:
            return self._done.wait_for(lambda: self._written >= target, timeout=timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop the writer."""
        self._stop = True
        self._wake.set()
        self._thread.join(timeout_s)

    # -- reading: the month ----------------------------------------------------------

    def month_totals(self, number: str, month: str) -> dict:
        """The month's calls, connected calls, billed minutes, cost and talk minutes (from the day rollups)."""
        first, after = check_month(month)
        return _totals(self._db(), (number, first, after))

    def report(self, number: str, month: str) -> dict:
        """Calls by day, hour, weekday × hour, province, target and reason, and the month's minutes and cost.

        ``by_hour`` is 24 entries (hour 0 first), ``heatmap`` 7 rows (Monday
        first) of 24 call counts, in the number's local time.  Read from the
        rollups only.
        """
        first, after = check_month(month)
        db = self._db()
        db.execute("BEGIN")  # one snapshot: the totals and every breakdown see the same batches
        try:
            return self._report(db, number, month, first, after)
        finally:
            db.execute("COMMIT")

    def _report(self, db, number: str, month: str, first: str, after: str) -> dict:
        args = (number, first, after)
        where = "number = ? AND day >= ? AND day < ?"
        by_day = [
            {"day": day, "calls": calls, "connected": conn, "minutes": _minutes(billed), "cost": _money(cost)}
            for day, calls, conn, billed, cost in db.execute(
                f"SELECT day, calls, connected, billed_s, cost_micro FROM roll_day WHERE {where} AND calls > 0 "
                "ORDER BY day", args)
        ]
        by_hour = [{"hour": h, "calls": 0, "connected": 0} for h in range(24)]
        heatmap = [[0] * 24 for _ in range(7)]
        for day, hour, calls, conn in db.execute(
                f"SELECT day, hour, calls, connected FROM roll_hour WHERE {where}", args):
            by_hour[hour]["calls"] += calls
            by_hour[hour]["connected"] += conn
            heatmap[dt.date.fromisoformat(day).weekday()][hour] += calls
        by_province = [
            {"province": province or "unknown", "calls": calls, "connected": conn}
            for province, calls, conn in db.execute(
                f"SELECT province, SUM(calls), SUM(connected) FROM roll_province WHERE {where} "
                "GROUP BY province HAVING SUM(calls) > 0 ORDER BY SUM(calls) DESC, province", args)
        ]
        by_target = [
            {"target": target, "calls": calls, "minutes": _minutes(billed), "cost": _money(cost)}
            for target, calls, billed, cost in db.execute(
                f"SELECT target, SUM(calls), SUM(billed_s), SUM(cost_micro) FROM roll_target WHERE {where} "
                "GROUP BY target HAVING SUM(calls) > 0 ORDER BY SUM(calls) DESC, target", args)
        ]
        by_reason = [
            {"action": action, "reason": reason, "calls": calls}
            for action, reason, calls in db.execute(
                f"SELECT action, reason, SUM(calls) FROM roll_reason WHERE {where} "
                "GROUP BY action, reason HAVING SUM(calls) > 0 ORDER BY SUM(calls) DESC, action, reason", args)
        ]
        totals = _totals(db, args)
        return {
            "number": number, "month": month, **totals,
            "by_day": by_day, "by_hour": by_hour, "heatmap": heatmap,
            "by_province": by_province, "by_target": by_target, "by_reason": by_reason,
        }

    def callers(self, number: str, month: str, *, top: int = TOP_CALLERS) -> dict:
        """Who called in the month: new and returning callers, the most frequent, by province, repeats in a day.

        A caller is *new* when no call of theirs is kept from an earlier month
        (within ``retention_days``), *returning* otherwise; *repeat within a
        day* counts callers who called at least twice on one (local) day of
        the month; a caller's province is the first, by code, their calls
        carried.  Calls without a caller number are not counted here.
        """
        month_key = check_month(month)[0][:7]
        db = self._db()
        db.execute("BEGIN")  # one snapshot for the counts and the lists
        try:
            return self._callers(db, number, month, month_key, top)
        finally:
            db.execute("COMMIT")

    def _callers(self, db, number: str, month: str, month_key: str, top: int) -> dict:
        # The counts: the month's per-province summary rows (a few dozen);
        # the top callers: the first ``top`` entries of an index by calls.
        args = (number, month_key)
        summary = db.execute(
            "SELECT province, callers, returning_callers, repeat_callers FROM roll_caller_summary "
            "WHERE number = ? AND month = ? AND callers > 0", args).fetchall()
        callers = sum(row[1] for row in summary)
        returning = sum(row[2] for row in summary)
        top_callers = [(caller, calls) for caller, calls in db.execute(
            "SELECT caller, calls FROM roll_caller_month INDEXED BY roll_caller_top WHERE number = ? AND month = ? "
            "ORDER BY calls DESC, caller LIMIT ?", (*args, top))]
        by_province = [{"province": province or "unknown", "callers": count}
                       for province, count, _, _ in sorted(summary, key=lambda row: (-row[1], row[0]))]
        return {"number": number, "month": month, "callers": callers, "new_callers": callers - returning,
                "returning_callers": returning, "repeat_within_day": sum(row[3] for row in summary),
                "top_callers": top_callers, "by_province": by_province}

    # -- reading: the records ----------------------------------------------------------

    def calls(self, number: str, *, limit: int = 100, before_id: int | None = None) -> list[dict]:
        """The latest records of a number, newest first by id (``before_id`` pages back)."""
        query = f"SELECT {_COLUMNS} FROM records INDEXED BY records_number WHERE number = ?"
        args: tuple = (number,)
        if before_id is not None:
            query += " AND id < ?"
            args += (before_id,)
        rows = self._db().execute(query + " ORDER BY id DESC LIMIT ?", args + (limit,)).fetchall()
        out = []
        for row in rows:
            record = _record(row)
            del record["day"]  # the JSON API's listing, as it was
            out.append(record)
        return out

    def _page(self, number: str, filters: _Filters, limit: int, after: tuple[str, int] | None) -> list:
        index = _FILTER_INDEXES[filters.index].split(" ", 1)[0]
        where = ["number = ?", *filters.where]
        args = [number, *filters.args]
        if after is not None:
            where.append("(day, id) < (?, ?)")
            args.extend(after)
        return self._db().execute(
            f"SELECT {_COLUMNS} FROM records INDEXED BY {index} WHERE {' AND '.join(where)} "
            "ORDER BY day DESC, id DESC LIMIT ?", (*args, limit)).fetchall()

    def find(self, number: str, *, since_day=None, until_day=None, caller=None, province=None, outcome=None,
             target=None, limit: int = 50, after: str | None = None) -> tuple[list[dict], str | None]:
        """A page of a number's records matching the filters, newest first, and the cursor of the next page.

        Filters (each optional; a bad value is a ``ValueError`` naming it):
        ``since_day``/``until_day`` local days, inclusive; ``caller`` the exact
        calling number; ``province`` a code or name (``unknown``: none known);
        ``outcome`` one of :data:`OUTCOMES`; ``target`` the exact target.
        ``after`` is the cursor a previous page returned (``None``: the
        first page); the returned cursor is ``None`` on the last page.
        Newest first means by the record's local day, then by the order written.
        """
        filters = _Filters(since_day, until_day, caller, province, outcome, target)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit: expected 1 to {MAX_PAGE}, got {limit!r}")
        cursor = None if after in (None, "") else _decode_cursor(after)
        rows = self._page(number, filters, limit + 1, cursor)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = _encode_cursor(rows[-1][10], rows[-1][0]) if more else None
        return [_record(row) for row in rows], next_cursor

    def csv_lines(self, number: str, **filters) -> Iterator[bytes]:
        """The records :meth:`find` would list, as CSV, in chunks of lines.

        The first item is the UTF-8 byte order mark (so Excel reads Chinese)
        and the header (:data:`CSV_COLUMNS`); it comes before any query runs.
        The filters are checked now: a bad one raises ``ValueError`` here, not
        midway through the stream.  Each later chunk is one keyset step of
        :data:`CHUNK` records, so no query holds the whole listing.
        """
        checked = _Filters(**filters)
        return self._csv(number, checked)

    def _csv(self, number: str, filters: _Filters) -> Iterator[bytes]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        yield b"\xef\xbb\xbf" + buffer.getvalue().encode()
        cursor = None
        while True:
            rows = self._page(number, filters, CHUNK, cursor)
            if not rows:
                return
            buffer.seek(0)
            buffer.truncate()
            for row in rows:
                r = _record(row)
                writer.writerow([r["id"], _cell(r["call_id"]), r["started"], r["day"], _cell(r["caller"]),
                                 r["province"], provinces.CHINESE_NAMES.get(r["province"] or "", ""), _cell(r["rule"]),
                                 _cell(r["target"]), r["action"], r["reason"], _cell(r["channel"]), r["duration_s"],
                                 r["billed_s"], r["cost"]])
            yield buffer.getvalue().encode()
            if len(rows) < CHUNK:
                return
            cursor = (rows[-1][10], rows[-1][0])


_FORMULA = re.compile(r"\A[=+\-@\t\r]")
_PLAIN_NUMBER = re.compile(r"\A\+?[0-9]+\Z")


def _cell(text: str | None) -> str | None:
    """A text cell Excel will not run: a leading ``=``, ``+``, ``-``, ``@``, tab or CR gets a ``'``.

    Caller IDs and call ids come from outside; ``=HYPERLINK(...)`` in one must
    stay text in the company's spreadsheet.  ``+8613901012345`` (a plain
    number) is left alone: Excel can read it only as a number.
    """
    if text and _FORMULA.match(text) and not _PLAIN_NUMBER.match(text):
        return "'" + text
    return text


def _totals(db, args: tuple) -> dict:
    calls, conn, billed, cost, talk = db.execute(
        "SELECT SUM(calls), SUM(connected), SUM(billed_s), SUM(cost_micro), SUM(duration_s) FROM roll_day "
        "WHERE number = ? AND day >= ? AND day < ?", args).fetchone()
    return {"calls": calls or 0, "connected": conn or 0, "minutes": _minutes(billed), "cost": _money(cost),
            "talk_minutes": round((talk or 0) / 60, 2)}


def _first_province(known: str, seen: str) -> str:
    """A caller-month's province: the first, by code, its calls carried ('' when none did)."""
    if not known or not seen:
        return known or seen
    return min(known, seen)


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _utc_day(ts: float) -> str | None:
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC).date().isoformat()
    except (ValueError, OverflowError, OSError):
        return None
