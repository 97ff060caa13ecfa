"""Call records: every decision and every call end, in SQLite, and the month's report.

Recording must never slow a decision: the request path appends a tuple to a
bounded queue and a writer thread inserts them in batches (one transaction
per batch, ~0.2 s apart).  When the disk cannot keep up and the queue is full,
records are dropped and counted (``tel400_http_records_dropped``): a switch
waiting on its answer matters more than a line in a report.  Counting for
caps does not depend on these records.

Days are the number's own days (its plan's time zone), fixed when the record
is written, so a report groups by the day the company lived, not by UTC.
Money is kept in integer millionths of a yuan (what the tariff computes to),
so sums are exact.

Retention is bounded: records older than ``retention_days`` (in the order
they were written) and the oldest beyond ``max_rows`` are deleted by the
writer once an hour.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import re
import sqlite3
import threading
import time
import zoneinfo
from decimal import ROUND_HALF_UP, Decimal

import structlog

import tel400

_log = structlog.get_logger("tel400.http.records")

CONNECTS = ("bridge", "queue", "conference")
_MONTH = re.compile(r"\A([1-9][0-9]{3})-(0[1-9]|1[0-2])\Z")
_MICRO = Decimal(1_000_000)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id TEXT, number TEXT, caller TEXT, province TEXT, rule TEXT, target TEXT,
    action TEXT NOT NULL, reason TEXT NOT NULL, channel TEXT NOT NULL,
    started REAL NOT NULL, day TEXT NOT NULL,
    duration_s REAL, billed_s INTEGER, cost_micro INTEGER
);
CREATE INDEX IF NOT EXISTS records_number_day ON records (number, day);
CREATE INDEX IF NOT EXISTS records_call_id ON records (call_id);
"""


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
    m = _MONTH.match(month or "")
    if not m:
        raise ValueError(f"month: expected YYYY-MM, got {month!r}")
    year, mon = int(m.group(1)), int(m.group(2))
    after = f"{year + 1:04d}-01-01" if mon == 12 else f"{year:04d}-{mon + 1:02d}-01"  # compared as text
    return f"{month}-01", after


def _money(micro: int | None) -> str:
    return str((Decimal(micro or 0) / _MICRO).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _utc(ts: float) -> str | None:
    try:
        return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat()
    except (ValueError, OverflowError, OSError):
        return None


def _minutes(billed_s: int | None) -> float:
    return round((billed_s or 0) / 60, 2)


class CallRecords:
    """Call records in an SQLite file, written in the background.

    Args:
        path: the database file.
        zone_of: the time zone of a 400 number (its plan's), for the record's day.
        retention_days: records older than this are deleted.
        max_rows: at most this many records are kept (the oldest go first).
        queue_max: records waiting to be written before new ones are dropped.
    """

    def __init__(self, path: str, *, zone_of, retention_days: float = 180, max_rows: int = 5_000_000,
                 queue_max: int = 100_000, interval_s: float = 0.2, batch: int = 2000, clock=time.time) -> None:
        self.path = os.fspath(path)
        self._zone_of = zone_of
        self.retention_days = retention_days
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
        self._zones: dict[str, dt.tzinfo] = {}
        self._days: dict[str | None, tuple[float, float, str]] = {}
        self._local = threading.local()
        self._stop = False
        self._next_prune = 0.0
        db = self._db()
        db.executescript(_SCHEMA)
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

    def _day(self, number: str | None, started: float) -> str:
        # Most records of a batch fall on the day of the one before: the day's
        # bounds are kept per number, and a date is computed only on a new day.
        known = self._days.get(number)
        if known is not None and known[0] <= started < known[1]:
            return known[2]
        zone = self._zones.get(number) if number else None
        if zone is None:
            zone = self._zone_of(number) if number else None
            zone = zone or zoneinfo.ZoneInfo("Asia/Shanghai")
            if number:
                self._zones[number] = zone
        try:
            local = dt.datetime.fromtimestamp(started, zone)
            midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
            start = midnight.timestamp()
            end = (midnight + dt.timedelta(days=1)).timestamp()  # wall clock: a DST day is 23 or 25 h
        except (ValueError, OverflowError, OSError):  # a time no calendar holds: kept, never in a month
            return "unknown"
        day = local.date().isoformat()
        self._days[number] = (start, end, day)
        return day

    def _write(self, items) -> None:
        db = self._db()
        inserts, ends = [], []
        for item in items:
            if item[0] == "d":
                _, d, started = item
                target = d.targets[0] if d.targets and d.action in CONNECTS else None
                inserts.append((d.call_id, d.number, d.caller, d.province, d.rule, target, d.action, d.reason,
                                d.channel, started, self._day(d.number, started)))
            else:
                ends.append(item[1:])
        db.execute("BEGIN")
        try:
            # Decisions first: an end in the same batch finds its call.
            db.executemany(
                "INSERT INTO records (call_id, number, caller, province, rule, target, action, reason, channel, "
                "started, day) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", inserts)
            for call_id, duration_s, billed_s, cost, target in ends:
                db.execute(
                    "UPDATE records SET duration_s = ?, billed_s = ?, cost_micro = ?, target = COALESCE(?, target) "
                    "WHERE id = (SELECT MAX(id) FROM records WHERE call_id = ?)",
                    (duration_s, billed_s, cost, target, call_id))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._zones.clear()  # plans may have changed their zone; look again next batch
        self._days.clear()

    def prune(self) -> int:
        """Delete what retention no longer keeps; returns how many records went."""
        db = self._db()
        cutoff = self._clock() - self.retention_days * 86400
        # Records arrive in time order, so the first one young enough bounds
        # the rest; found by walking from the oldest (no index on started:
        # it would cost every insert to save an hourly scan of what goes).
        gone = db.execute(
            "DELETE FROM records WHERE id < COALESCE((SELECT id FROM records WHERE started >= ? ORDER BY id LIMIT 1), "
            "(SELECT MAX(id) + 1 FROM records))", (cutoff,)).rowcount
        gone += db.execute("DELETE FROM records WHERE id <= (SELECT MAX(id) FROM records) - ?",
                           (self.max_rows,)).rowcount
        return gone

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

    # -- reading ---------------------------------------------------------------------

    def report(self, number: str, month: str) -> dict:
        """Calls by day, province, target and reason, and the month's minutes and cost."""
        first, after = check_month(month)
        db = self._db()
        where = "number = ? AND day >= ? AND day < ?"
        args = (number, first, after)
        connected = "SUM(action IN ('bridge', 'queue', 'conference'))"

        total = db.execute(
            f"SELECT COUNT(*), {connected}, SUM(billed_s), SUM(cost_micro), SUM(duration_s) FROM records WHERE {where}",
            args).fetchone()
        by_day = [
            {"day": day, "calls": calls, "connected": conn or 0, "minutes": _minutes(billed), "cost": _money(cost)}
            for day, calls, conn, billed, cost in db.execute(
                f"SELECT day, COUNT(*), {connected}, SUM(billed_s), SUM(cost_micro) FROM records WHERE {where} "
                "GROUP BY day ORDER BY day", args)
        ]
        by_province = [
            {"province": province or "unknown", "calls": calls, "connected": conn or 0}
            for province, calls, conn in db.execute(
                f"SELECT province, COUNT(*), {connected} FROM records WHERE {where} "
                "GROUP BY province ORDER BY COUNT(*) DESC, province", args)
        ]
        by_target = [
            {"target": target, "calls": calls, "minutes": _minutes(billed), "cost": _money(cost)}
            for target, calls, billed, cost in db.execute(
                f"SELECT target, COUNT(*), SUM(billed_s), SUM(cost_micro) FROM records "
                f"WHERE {where} AND target IS NOT NULL GROUP BY target ORDER BY COUNT(*) DESC, target", args)
        ]
        by_reason = [
            {"action": action, "reason": reason, "calls": calls}
            for action, reason, calls in db.execute(
                f"SELECT action, reason, COUNT(*) FROM records WHERE {where} "
                "GROUP BY action, reason ORDER BY COUNT(*) DESC, action, reason", args)
        ]
        calls, conn, billed, cost, talk = total
        return {
            "number": number, "month": month,
            "calls": calls, "connected": conn or 0,
            "talk_minutes": round((talk or 0) / 60, 2), "minutes": _minutes(billed), "cost": _money(cost),
            "by_day": by_day, "by_province": by_province, "by_target": by_target, "by_reason": by_reason,
        }

    def calls(self, number: str, *, limit: int = 100, before_id: int | None = None) -> list[dict]:
        """The latest records of a number, newest first (``before_id`` pages back)."""
        db = self._db()
        query = ("SELECT id, call_id, caller, province, rule, target, action, reason, channel, started, duration_s, "
                 "billed_s, cost_micro FROM records WHERE number = ?")
        args: tuple = (number,)
        if before_id is not None:
            query += " AND id < ?"
            args += (before_id,)
        rows = db.execute(query + " ORDER BY id DESC LIMIT ?", args + (limit,)).fetchall()
        return [
            {"id": rid, "call_id": call_id, "caller": caller, "province": province, "rule": rule, "target": target,
             "action": action, "reason": reason, "channel": channel,
             "started": _utc(started),
             "duration_s": duration, "billed_s": billed, "cost": None if cost is None else _money(cost)}
            for rid, call_id, caller, province, rule, target, action, reason, channel, started, duration, billed, cost
            in rows
        ]
