"""The SMS store: opt-outs, the address book, group-send jobs and the message records.

One SQLite database (WAL, mode 0600 via :func:`tel400.stores.create_private`)
shared by the processes of a site: ``tel400-http`` answering incoming
messages and delivery reports, the admin API importing contacts and
creating jobs, and the :class:`tel400.smsjobs.JobRunner` sending them.
Each thread of each process gets its own connection; writers wait for each
other (``busy_timeout``) instead of failing.

Everything is bounded and the bounds are constructor arguments
(docs/limits.md, "SMS store"): contacts per number, recipients per job,
jobs not yet finished per number, an import's size, a contact's name,
tags and extra fields, and the message records (``retention_days`` and
``max_messages``, pruned like the call records).

Every job belongs to one 400 number and every method that names a job also
takes that number: a job id of another number is *unknown*, so a tenant's
API built on this store can never see or change another tenant's job.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence

import attrs

from .exceptions import BackendError, NumberError
from .numbers import kind_of, normalize
from .smstext import MAX_PARTS, OutgoingSms, check_template, count_parts, is_field_name, render
from .stores import create_private
from .timespec import parse_time

#: Fields every template may name; a contact's extra columns add theirs.
BASE_FIELDS = ("number", "phone", "name")
#: Highest rate (messages per second) a job may ask for.
MAX_JOB_RATE = 500.0
#: Delivery states a report may carry (``set_delivery``).
DELIVERY_STATES = ("submitted", "delivered", "failed", "rejected")
#: Job states; ``scheduled`` and ``running`` are the ones the runner works on.
JOB_STATES = ("scheduled", "running", "paused", "done", "cancelled")
#: Recipient states; ``pending`` and ``sending`` are not final.
RECIPIENT_STATES = ("pending", "sending", "sent", "failed", "skipped_opted_out", "skipped_cap")

# A report that would move a final delivery state back to "submitted" is stale (SQL, :state the report's).
_IS_STALE = "(:state = 'submitted' AND {col} IN ('delivered', 'failed', 'rejected'))"
_KEEP_FINAL = "{col} = CASE WHEN " + _IS_STALE + " THEN {col} ELSE :state END"
_JOB_MESSAGE_ID = re.compile(r"(j[0-9a-f]{16})-(\d{1,9})\Z")
_TAG_SPLIT = re.compile(r"[;|]")
_LINE_BREAK = re.compile(r"\r\n|\n|\r")
_NOT_UNICODE = "the text holds lone surrogates (not Unicode text)"
_PRUNE_EVERY = 1000
_IMPORT_BATCH = 5000  # contacts written in one transaction (about 0.3 s holding the write lock)  # record_message calls between two prunes of one store object


@attrs.frozen
class Contact:
    """One entry of a number's address book.

    ``phone`` is in tel400's normal form (:func:`tel400.normalize`), ``tags``
    are sorted and unique, ``fields`` holds the extra CSV columns (template
    fields: ``{city}`` for a ``city`` column).
    """

    number: str
    phone: str
    name: str = ""
    tags: tuple[str, ...] = ()
    fields: Mapping[str, str] = attrs.field(factory=dict, hash=False)


@attrs.frozen
class ImportResult:
    """What :meth:`SmsStore.import_contacts` did: counts, and each refused line ``(line_no, line, message)``."""

    added: int
    updated: int
    errors: list[tuple[int, str, str]]


@attrs.frozen
class Job:
    """A group send: its template, pacing, window and state (see docs/sms.md, "Group sends")."""

    job_id: str
    number: str
    template: str
    rate: float
    not_before: str | None
    not_after: str | None
    state: str
    total: int
    created_at: float
    created_by: str
    updated_at: float
    updated_by: str


@attrs.frozen
class JobProgress:
    """Counts of a job's recipients by state.

    ``total = pending + sending + sent + failed + skipped_opted_out +
    skipped_cap``; ``delivered`` and ``undelivered`` (a failed or rejected
    delivery report) are parts of ``sent``.
    """

    total: int
    pending: int
    sending: int
    sent: int
    delivered: int
    undelivered: int
    failed: int
    skipped_opted_out: int
    skipped_cap: int


@attrs.frozen
class Recipient:
    """One recipient row of a job, as the runner reads it (the text is rendered at job creation)."""

    job_id: str
    index: int
    phone: str
    text: str
    parts: int
    state: str
    attempts: int
    delivery: str | None

    @property
    def message_id(self) -> str:
        """The deterministic id its message carries on every (re)submission."""
        return f"{self.job_id}-{self.index}"


#: What ``import_contacts(encoding=…)`` accepts: "auto" guesses (UTF-8 first, then GB18030).
IMPORT_ENCODINGS = ("auto", "utf-8", "gb18030")


def _decode(data: str | bytes, encoding: str = "auto") -> str:
    # Spreadsheets in China save CSV as GB18030 (GBK) more often than UTF-8.
    if encoding not in IMPORT_ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(IMPORT_ENCODINGS)}, not {encoding!r}")
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if encoding != "auto":  # the user said which: no guess (some GB18030 bytes are valid UTF-8)
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as exc:
            raise ValueError(f"the file is not {encoding} (byte {exc.start})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gb18030")
    except UnicodeDecodeError as exc:
        raise ValueError(f"the file is neither UTF-8 nor GB18030 (byte {exc.start})") from None


def tenant_number(number: object) -> str:
    """``number`` (any written form) as the 400/800 number in normal form every row is keyed by.

    Without it "4001012345" and "400-101-2345" would be two tenants: an
    opt-out under one would not stop a job under the other.
    Raises ValueError when it is not a 400/800 number.
    """
    try:
        n = normalize(number)
    except (NumberError, TypeError):
        n = None
    if n is None or kind_of(n) != "toll_free":
        raise ValueError(f"not a 400/800 number: {str(number)[:40]!r}")
    return n


def _tenant(method):
    """Normalise a method's ``number`` argument (first positional or keyword) with :func:`tenant_number`."""
    @functools.wraps(method)
    def wrapper(self, number, *args, **kwargs):
        return method(self, tenant_number(number), *args, **kwargs)
    return wrapper


def _phone_key(phone: str) -> str:
    try:
        return normalize(phone)
    except NumberError:
        return phone


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: SQLite cannot store it
        return False
    return True


def _echo(row: Sequence[str], limit: int = 200) -> str:
    line = ",".join(row)
    line = line.encode("utf-8", "replace").decode("utf-8")  # the report must be printable too
    return line if len(line) <= limit else line[:limit] + "…"


class SmsStore:
    """Opt-outs, contacts, group-send jobs and message records in one SQLite database.

    Args:
        path: the database file (made 0600 with its directory if missing).
        max_contacts: contacts per number (an import or a put beyond it is refused).
        max_recipients: recipients per job.
        max_open_jobs: jobs per number not yet done or cancelled.
        max_jobs_per_day: jobs a number may create in any 24 hours, cancelled ones included
            (what bounds the store's growth: create-and-cancel cannot fill the disk).
        max_import_bytes: size of one CSV import.
        max_name_chars, max_tags, max_tag_chars, max_fields, max_field_chars:
            bounds of one contact (name length, tags, extra columns, their values).
        max_template_chars: length of a job's template.
        max_text_chars: longest text kept in a message record (longer is cut).
        retention_days: message records (and finished jobs) older than this are deleted.
        max_messages: at most this many message records are kept (the oldest go first).
        max_line_chars: longest line of a CSV import (a longer one is a bad line).
        clock: the wall clock (POSIX seconds); tests pass their own.
    """

    _SCHEMA = (
        "CREATE TABLE IF NOT EXISTS opt_outs (number TEXT NOT NULL, phone TEXT NOT NULL, at REAL NOT NULL, "
        "PRIMARY KEY (number, phone)) WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS contacts (number TEXT NOT NULL, phone TEXT NOT NULL, name TEXT NOT NULL, "
        "tags TEXT NOT NULL, fields TEXT NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (number, phone)) WITHOUT ROWID",
        # contacts by tag, paged by phone
        "CREATE TABLE IF NOT EXISTS contact_tags (number TEXT NOT NULL, tag TEXT NOT NULL, phone TEXT NOT NULL, "
        "PRIMARY KEY (number, tag, phone)) WITHOUT ROWID",
        # a contact's tags, replaced on each write (without it an import is quadratic)
        "CREATE INDEX IF NOT EXISTS contact_tags_by_phone ON contact_tags (number, phone)",
        "CREATE TABLE IF NOT EXISTS jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL UNIQUE, "
        "number TEXT NOT NULL, template TEXT NOT NULL, rate REAL NOT NULL, not_before TEXT, not_after TEXT, "
        "state TEXT NOT NULL, total INTEGER NOT NULL, created_at REAL NOT NULL, created_by TEXT NOT NULL, "
        "updated_at REAL NOT NULL, updated_by TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS jobs_by_number ON jobs (number, seq)",
        "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state)",
        "CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (number, created_at)",
        "CREATE TABLE IF NOT EXISTS recipients (job_id TEXT NOT NULL, idx INTEGER NOT NULL, phone TEXT NOT NULL, "
        "text TEXT NOT NULL, parts INTEGER NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, "
        "delivery TEXT, updated_at REAL NOT NULL, PRIMARY KEY (job_id, idx)) WITHOUT ROWID",
        # the next pending recipient of a job, the in-doubt ones, counts by state
        "CREATE INDEX IF NOT EXISTS recipients_by_state ON recipients (job_id, state, idx)",
        "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, "
        "direction TEXT NOT NULL, number TEXT NOT NULL, peer TEXT NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL, "
        "parts INTEGER NOT NULL, outcome TEXT NOT NULL, message_id TEXT, delivery TEXT, delivery_at REAL)",
        # Message ids are unique per number, not globally: an id a gateway or a tenant chose for one number
        # never touches another number's record (older stores had a global index: replaced).
        "DROP INDEX IF EXISTS messages_by_id",
        "CREATE UNIQUE INDEX IF NOT EXISTS messages_by_number_id ON messages (number, message_id) "
        "WHERE message_id IS NOT NULL",
        "CREATE INDEX IF NOT EXISTS messages_by_message_id ON messages (message_id) WHERE message_id IS NOT NULL",
        # retention prunes by the time a record claims (L1): one future-dated record must not stop it
        "CREATE INDEX IF NOT EXISTS messages_by_at ON messages (at)",
        "CREATE INDEX IF NOT EXISTS messages_by_number ON messages (number, at)",
        # the one job runner allowed at a time (take_lease)
        "CREATE TABLE IF NOT EXISTS runner_lease (id INTEGER PRIMARY KEY CHECK (id = 1), owner TEXT NOT NULL, "
        "expires_at REAL NOT NULL)",
    )

    def __init__(self, path: str | os.PathLike[str], *, max_contacts: int = 100_000,
                 max_recipients: int = 100_000, max_open_jobs: int = 20, max_jobs_per_day: int = 50,
                 max_import_bytes: int = 10 * 2**20,
                 max_name_chars: int = 64, max_tags: int = 20, max_tag_chars: int = 32, max_fields: int = 20,
                 max_field_chars: int = 200, max_template_chars: int = 1000, max_text_chars: int = 1600,
                 retention_days: float = 180, max_messages: int = 5_000_000, max_line_chars: int = 65536,
                 clock=time.time) -> None:
        if not 1 <= max_line_chars <= csv.field_size_limit():
            raise ValueError(f"max_line_chars must be from 1 to {csv.field_size_limit()} (the csv module's limit)")
        self.max_line_chars = max_line_chars
        self.path = os.fspath(path)
        self.max_contacts = max_contacts
        self.max_recipients = max_recipients
        self.max_open_jobs = max_open_jobs
        self.max_jobs_per_day = max_jobs_per_day
        self.max_import_bytes = max_import_bytes
        self.max_name_chars = max_name_chars
        self.max_tags = max_tags
        self.max_tag_chars = max_tag_chars
        self.max_fields = max_fields
        self.max_field_chars = max_field_chars
        self.max_template_chars = max_template_chars
        self.max_text_chars = max_text_chars
        self.retention_days = retention_days
        self.max_messages = max_messages
        self._clock = clock
        self._local = threading.local()
        self._recorded = 0
        try:
            if self.path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            create_private(self.path)  # phone numbers and message texts are personal data
            with self._write() as db:
                for statement in self._SCHEMA:
                    db.execute(statement)
        except (OSError, sqlite3.Error) as exc:
            raise BackendError(f"{self.path}: cannot open the SMS store: {exc}") from None

    # --- connections --------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        # One connection per thread and process (a connection is not fork-safe).
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=True)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=10000")
            # FULL: a row marked "sending" must be on disk before the gateway sees the message
            # (the exactly-once guarantee across a power cut, not only kill -9).
            db.execute("PRAGMA synchronous=FULL")
            self._local.db, self._local.pid = db, os.getpid()
        return db

    def _write(self):
        return _Transaction(self)

    def _read(self, query: str, params: Sequence = ()) -> list:
        try:
            return self._db().execute(query, params).fetchall()
        except sqlite3.Error as exc:
            raise BackendError(f"{self.path}: {exc}") from None
        except UnicodeEncodeError:
            raise ValueError(_NOT_UNICODE) from None

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # --- opt-outs -----------------------------------------------------------

    # Phones are kept in tel400's normal form, so "+86 139…" opting out covers "139…" in a job;
    # a sender tel400 cannot read as a number is kept as written.

    @_tenant
    def opt_out(self, number: str, phone: str, at: float | None = None) -> bool:
        """Put ``phone`` (any written form) on ``number``'s opt-out list; True when it was not on it.  O(log n)."""
        with self._write() as db:
            return db.execute("INSERT OR IGNORE INTO opt_outs VALUES (?, ?, ?)",
                              (number, _phone_key(phone), self._clock() if at is None else at)).rowcount == 1

    @_tenant
    def opt_in(self, number: str, phone: str) -> bool:
        """Take ``phone`` off ``number``'s opt-out list; True when it was on it."""
        with self._write() as db:
            return db.execute("DELETE FROM opt_outs WHERE number = ? AND phone = ?",
                              (number, _phone_key(phone))).rowcount == 1

    @_tenant
    def is_opted_out(self, number: str, phone: str) -> bool:
        """Whether ``phone`` opted out of ``number``'s messages.  O(log n)."""
        return bool(self._read("SELECT 1 FROM opt_outs WHERE number = ? AND phone = ?", (number, _phone_key(phone))))

    def opt_outs(self, number: str, *, after: str | None = None, limit: int = 100) -> list[tuple[str, float]]:
        """A page of ``number``'s opt-out list as ``(phone, at)``, in phone order (the admin API and portal list it).

        Keyset paging like :meth:`contacts`: the last phone of a page is the
        next page's ``after``; ``limit`` is clamped to 1..1000.  O(log n + limit).
        """
        limit = max(1, min(int(limit), 1000))
        return [(phone, at) for phone, at in self._read(
            "SELECT phone, at FROM opt_outs WHERE number = ? AND phone > ? ORDER BY phone LIMIT ?",
            (number, after or "", limit))]

    def count_opt_outs(self, number: str) -> int:
        """How many phones opted out of ``number``'s messages.  O(n)."""
        return self._read("SELECT COUNT(*) FROM opt_outs WHERE number = ?", (number,))[0][0]

    # --- messages -----------------------------------------------------------

    def record_message(self, msg: OutgoingSms | None = None, *, direction: str = "out", number: str | None = None,
                       peer: str | None = None, text: str | None = None, parts: int | None = None,
                       kind: str | None = None, outcome: str, message_id: str | None = None,
                       at: float | None = None) -> None:
        """Record one message, in or out (the fields default to ``msg``'s).

        A second record with the same ``message_id`` (a message resent after
        a restart) updates the first and keeps its delivery state.  Texts
        longer than ``max_text_chars`` are cut.  Cost: O(log n), and every
        1,000th call prunes (:meth:`prune`).
        """
        if msg is not None:
            number = msg.number if number is None else number
            peer = msg.to if peer is None else peer
            text = msg.text if text is None else text
            parts = msg.parts if parts is None else parts
            kind = msg.kind if kind is None else kind
            message_id = msg.message_id if message_id is None else message_id
        if direction not in ("in", "out"):
            raise ValueError(f"direction must be 'in' or 'out', not {direction!r}")
        if number is None or peer is None or text is None or parts is None or kind is None:
            raise ValueError("record_message needs number, peer, text, parts and kind (or an OutgoingSms)")
        number = tenant_number(number)
        # a sender's text is kept whatever it holds: a lone surrogate becomes "?"
        text = text.encode("utf-8", "replace").decode("utf-8")
        with self._write() as db:
            self._insert_message(db, direction, number, peer, text, parts, kind, outcome, message_id,
                                 self._clock() if at is None else at)
        self._recorded += 1
        if self._recorded % _PRUNE_EVERY == 0:
            self.prune()

    def _insert_message(self, db, direction, number, peer, text, parts, kind, outcome, message_id, at,
                        delivery=None) -> None:
        db.execute(
            "INSERT INTO messages (at, direction, number, peer, kind, text, parts, outcome, message_id, delivery, "
            "delivery_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (number, message_id) WHERE message_id IS NOT NULL DO UPDATE SET at = excluded.at, "
            "outcome = CASE WHEN messages.outcome = 'sent' THEN 'sent' ELSE excluded.outcome END, "
            "text = excluded.text, parts = excluded.parts",
            (at, direction, number, peer, kind, text[:self.max_text_chars], parts, outcome, message_id, delivery,
             at if delivery else None))

    def set_delivery(self, message_id: str, state: str, at: float | None = None, *,
                     number: str | None = None) -> bool:
        """Record a delivery report; False when no message has that id.

        With ``number`` only that number's message (and job) is touched.
        Without it every message with the id is: fine for the ids this
        store and the runner make (job ids are random, 64 bits), not for
        ids chosen elsewhere — pass ``number`` whenever it is known.

        A report for a group-send message also settles its recipient: one
        left ``sending`` by a killed runner is then known to have reached
        the gateway (it becomes ``sent`` and is never resent).

        Raises:
            ValueError: ``state`` is not one of :data:`DELIVERY_STATES`.
        """
        if state not in DELIVERY_STATES:
            raise ValueError(f"delivery state must be one of {', '.join(DELIVERY_STATES)}, not {state!r}")
        if not isinstance(message_id, str):
            return False
        number = None if number is None else tenant_number(number)
        at = self._clock() if at is None else at
        with self._write() as db:
            # Reports of one message arrive in any order and may repeat (Kannel: 1 before 8, a
            # retried request): "submitted" never replaces a final state.  A matched row counts as
            # found either way, so the report is answered as known.
            found = db.execute(f"UPDATE messages SET {_KEEP_FINAL.format(col='delivery')}, "
                               f"delivery_at = CASE WHEN {_IS_STALE.format(col='delivery')} THEN delivery_at "
                               "ELSE :at END WHERE message_id = :id AND (:number IS NULL OR number = :number)",
                               {"state": state, "at": at, "id": message_id, "number": number}).rowcount >= 1
            m = _JOB_MESSAGE_ID.match(message_id)
            if m:
                job_id, idx = m.group(1), int(m.group(2))
                row = db.execute(
                    "SELECT r.phone, r.text, r.parts, r.state, j.number FROM recipients r JOIN jobs j USING (job_id) "
                    "WHERE r.job_id = ? AND r.idx = ?", (job_id, idx)).fetchone()
                if row is not None and (number is None or row[4] == number):
                    phone, text, parts, rstate, number = row
                    db.execute(f"UPDATE recipients SET {_KEEP_FINAL.format(col='delivery')}, updated_at = :at, "
                               "state = CASE WHEN state = 'sending' THEN 'sent' ELSE state END "
                               "WHERE job_id = :job AND idx = :idx",
                               {"state": state, "at": at, "job": job_id, "idx": idx})
                    if not found and rstate in ("sending", "sent"):
                        # The runner died after the gateway took the message, before recording it.
                        self._insert_message(db, "out", number, phone, text, parts, "job", "sent", message_id,
                                             at, delivery=state)
                    found = True
        return found

    def delivery_of(self, message_id: str, *, number: str | None = None) -> str | None:
        """The last delivery state reported for a message (None: none yet, or no such message)."""
        number = None if number is None else tenant_number(number)
        rows = self._read("SELECT delivery FROM messages WHERE message_id = ? AND (? IS NULL OR number = ?) "
                          "ORDER BY id", (message_id, number, number))
        return rows[0][0] if rows else None

    @_tenant
    def messages(self, number: str, *, before_id: int | None = None, limit: int = 100) -> list[dict]:
        """A number's message records, newest first, paged by ``id`` (pass the last row's id as ``before_id``)."""
        limit = max(1, min(int(limit), 1000))
        rows = self._read(
            "SELECT id, at, direction, peer, kind, text, parts, outcome, message_id, delivery, delivery_at "
            "FROM messages WHERE number = ? AND id < ? ORDER BY id DESC LIMIT ?",
            (number, 2**63 - 1 if before_id is None else before_id, limit))
        keys = ("id", "at", "direction", "peer", "kind", "text", "parts", "outcome", "message_id", "delivery",
                "delivery_at")
        return [dict(zip(keys, row)) for row in rows]

    @_tenant
    def sms_totals(self, number: str, since_ts: float, until_ts: float) -> dict:
        """Counts of a number's messages with ``since_ts <= at < until_ts``.

        ``in``: received; ``out``: sent (the gateway took them);
        ``parts_out``: their parts (what the tariff charges); ``delivered``:
        sent with a delivered report; ``failed``: refused by the gateway, or
        reported failed or rejected.  Cost: O(messages in the range).
        """
        row = self._read(
            "SELECT COALESCE(SUM(direction = 'in'), 0), COALESCE(SUM(direction = 'out' AND outcome = 'sent'), 0), "
            "COALESCE(SUM(CASE WHEN direction = 'out' AND outcome = 'sent' THEN parts ELSE 0 END), 0), "
            "COALESCE(SUM(direction = 'out' AND delivery = 'delivered'), 0), "
            "COALESCE(SUM(direction = 'out' AND (outcome = 'failed' OR delivery IN ('failed', 'rejected'))), 0) "
            "FROM messages WHERE number = ? AND at >= ? AND at < ?", (number, since_ts, until_ts))[0]
        return dict(zip(("in", "out", "parts_out", "delivered", "failed"), row))

    def prune(self) -> int:
        """Delete message records and finished jobs that retention no longer keeps; returns records deleted."""
        cutoff = self._clock() - self.retention_days * 86400
        with self._write() as db:
            # By each record's own time (index messages_by_at): a record claiming a time in the future
            # (a gateway's clock, a sender's "at") must not hold back the pruning of the ones after it.
            gone = db.execute("DELETE FROM messages WHERE at < ?", (cutoff,)).rowcount
            gone += db.execute("DELETE FROM messages WHERE id <= (SELECT MAX(id) FROM messages) - ?",
                               (self.max_messages,)).rowcount
            old = [j for (j,) in db.execute(
                "SELECT job_id FROM jobs WHERE state IN ('done', 'cancelled') AND updated_at < ?", (cutoff,))]
            for job_id in old:
                db.execute("DELETE FROM recipients WHERE job_id = ?", (job_id,))
                db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
        return gone

    # --- contacts -----------------------------------------------------------

    def _checked_contact(self, number: str, phone: str, name: str, tags: Iterable[str],
                         fields: Mapping[str, str]) -> Contact:
        try:
            phone = normalize(phone)
        except NumberError as exc:
            raise ValueError(f"bad phone: {exc}") from None
        name, tags = name.strip(), list(tags)
        for text in (name, *tags, *map(str, fields.values())):
            if not _is_unicode(text):
                raise ValueError(_NOT_UNICODE)
        if len(name) > self.max_name_chars:
            raise ValueError(f"name longer than {self.max_name_chars} characters")
        clean_tags = sorted({t.strip() for t in tags if t.strip()})
        if len(clean_tags) > self.max_tags:
            raise ValueError(f"more than {self.max_tags} tags")
        for tag in clean_tags:
            if len(tag) > self.max_tag_chars:
                raise ValueError(f"tag longer than {self.max_tag_chars} characters")
        if len(fields) > self.max_fields:
            raise ValueError(f"more than {self.max_fields} extra fields")
        clean_fields = {}
        for key, value in fields.items():
            self._check_field_name(key)
            value = "" if value is None else str(value).strip()
            if len(value) > self.max_field_chars:
                raise ValueError(f"field {key} longer than {self.max_field_chars} characters")
            clean_fields[key] = value
        return Contact(number, phone, name, tuple(clean_tags), clean_fields)

    @staticmethod
    def _check_field_name(key: str) -> None:
        if not is_field_name(key) or key in BASE_FIELDS or key == "tags":
            raise ValueError(f"bad field name {key!r}: lower-case letters, digits and _, as a template names it "
                             "(not phone, name, tags or number)")

    def _upsert_contacts(self, db, contacts: Sequence[Contact], at: float) -> tuple[int, list[int]]:
        """Write contacts; returns (updated, indexes of those refused because the book is full)."""
        if not contacts:
            return 0, []
        number = contacts[0].number
        count = db.execute("SELECT COUNT(*) FROM contacts WHERE number = ?", (number,)).fetchone()[0]
        updated, full = 0, []
        for i, c in enumerate(contacts):
            exists = db.execute("SELECT 1 FROM contacts WHERE number = ? AND phone = ?", (number, c.phone)).fetchone()
            if not exists and count >= self.max_contacts:
                full.append(i)
                continue
            db.execute("INSERT OR REPLACE INTO contacts VALUES (?, ?, ?, ?, ?, ?)",
                       (number, c.phone, c.name, json.dumps(c.tags), json.dumps(dict(c.fields), ensure_ascii=False),
                        at))
            db.execute("DELETE FROM contact_tags WHERE number = ? AND phone = ?", (number, c.phone))
            db.executemany("INSERT INTO contact_tags VALUES (?, ?, ?)", [(number, t, c.phone) for t in c.tags])
            if exists:
                updated += 1
            else:
                count += 1
        return updated, full

    @_tenant
    def put_contact(self, number: str, phone: str, *, name: str = "", tags: Iterable[str] = (),
                    fields: Mapping[str, str] | None = None) -> Contact:
        """Add or replace one contact; returns it as stored (phone normalized, tags sorted).

        Raises:
            ValueError: a bad phone, name, tag or field, or the book already holds ``max_contacts``.
        """
        tags = [tags] if isinstance(tags, str) else tags
        contact = self._checked_contact(number, phone, name, tags, fields or {})
        with self._write() as db:
            _, full = self._upsert_contacts(db, [contact], self._clock())
        if full:
            raise ValueError(f"the address book of {number} is full ({self.max_contacts} contacts)")
        return contact

    @_tenant
    def delete_contact(self, number: str, phone: str) -> bool:
        """Remove a contact; True when it existed.  ``phone`` in any written form."""
        try:
            phone = normalize(phone)
        except NumberError:
            return False
        with self._write() as db:
            db.execute("DELETE FROM contact_tags WHERE number = ? AND phone = ?", (number, phone))
            return db.execute("DELETE FROM contacts WHERE number = ? AND phone = ?", (number, phone)).rowcount == 1

    @staticmethod
    def _contact(number, row) -> Contact:
        phone, name, tags, fields = row
        return Contact(number, phone, name, tuple(json.loads(tags)), json.loads(fields))

    @_tenant
    def contact(self, number: str, phone: str) -> Contact | None:
        """One contact, or None."""
        try:
            phone = normalize(phone)
        except NumberError:
            return None
        rows = self._read("SELECT phone, name, tags, fields FROM contacts WHERE number = ? AND phone = ?",
                          (number, phone))
        return self._contact(number, rows[0]) if rows else None

    @_tenant
    def contacts(self, number: str, *, tag: str | None = None, after: str | None = None,
                 limit: int = 100) -> list[Contact]:
        """A page of a number's contacts (with ``tag``: those carrying it), in phone order.

        Keyset paging: pass the last phone of a page as ``after`` for the
        next.  ``limit`` is clamped to 1..1000.  Cost: O(log n + limit).
        """
        limit = max(1, min(int(limit), 1000))
        after = after or ""
        if tag is None:
            rows = self._read("SELECT phone, name, tags, fields FROM contacts WHERE number = ? AND phone > ? "
                              "ORDER BY phone LIMIT ?", (number, after, limit))
        else:
            rows = self._read(
                "SELECT c.phone, c.name, c.tags, c.fields FROM contact_tags t JOIN contacts c "
                "ON c.number = t.number AND c.phone = t.phone WHERE t.number = ? AND t.tag = ? AND t.phone > ? "
                "ORDER BY t.phone LIMIT ?", (number, tag, after, limit))
        return [self._contact(number, row) for row in rows]

    @_tenant
    def count_contacts(self, number: str, *, tag: str | None = None) -> int:
        """How many contacts the number has (with ``tag``: carrying it).  O(n)."""
        if tag is None:
            return self._read("SELECT COUNT(*) FROM contacts WHERE number = ?", (number,))[0][0]
        return self._read("SELECT COUNT(*) FROM contact_tags WHERE number = ? AND tag = ?", (number, tag))[0][0]

    def _csv_line(self, line: str) -> list[str]:
        """One physical CSV line as cells; ValueError for a line over ``max_line_chars`` or bad quoting."""
        if len(line) > self.max_line_chars:
            raise ValueError(f"the line is {len(line)} characters; at most {self.max_line_chars}")
        try:
            return next(csv.reader([line], strict=True), [])
        except csv.Error as exc:
            raise ValueError(f"unreadable CSV ({exc}; a quoted cell cannot span lines)") from None

    @_tenant
    def import_contacts(self, number: str, data: str | bytes, *, encoding: str = "auto") -> ImportResult:
        """Add or update contacts from CSV; every bad line is reported, the good ones are kept.

        The first row is the header: ``phone``, ``name`` and ``tags``
        (``;`` or ``|`` between tags) in any order, ``phone`` required; any
        other column is an extra field a template can name.  ``data``: text,
        or bytes in UTF-8 (with or without a BOM) or GB18030.  A line is
        refused for a bad phone, a too long name, tag or field, more cells
        than the header has, a phone already seen in the file, or a full
        address book, a line over ``max_line_chars`` or one whose quotes do
        not close on it (each physical line is read on its own, so a quoted
        cell cannot hold a line break: one bad line never hides the next).
        Line numbers are the file's (the header is line 1).

        ``encoding`` (bytes only): ``"auto"`` tries UTF-8 then GB18030, and
        some short GB18030 texts are valid UTF-8 too ("谢谢" reads as "лл"):
        pass ``"gb18030"`` or ``"utf-8"`` when the user says which.

        Raises:
            ValueError: the input is over ``max_import_bytes``, not UTF-8 nor
                GB18030, or its header is unusable (nothing is written then).
        """
        size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))
        if size > self.max_import_bytes:
            raise ValueError(f"the file is {size} bytes; at most {self.max_import_bytes}")
        text = _decode(data, encoding)
        if "\x00" in text:
            raise ValueError("the file holds NUL characters: not a CSV text file")
        lines_of = _LINE_BREAK.split(text)
        if lines_of and lines_of[-1] == "":
            lines_of.pop()  # the break ending the last line
        if not lines_of:
            raise ValueError("the file is empty: the first line must be a header (phone,name,tags,...)")
        try:
            header = [h.strip().lower() for h in self._csv_line(lines_of[0])]
        except ValueError as exc:
            raise ValueError(f"line 1: unreadable header: {exc}") from None
        if "phone" not in header:
            raise ValueError("line 1: the header names no 'phone' column")
        if len(set(header)) != len(header):
            raise ValueError("line 1: a column is named twice")
        extra = [h for h in header if h not in ("phone", "name", "tags")]
        for key in extra:
            try:
                self._check_field_name(key)
            except ValueError as exc:
                raise ValueError(f"line 1: {exc}") from None
        if len(extra) > self.max_fields:
            raise ValueError(f"line 1: more than {self.max_fields} extra columns")
        errors: list[tuple[int, str, str]] = []
        good: list[Contact] = []
        lines: list[tuple[int, str]] = []
        seen: set[str] = set()
        # Each physical line is parsed on its own: one bad line (a stray quote, a huge cell) is
        # reported with its number and never swallows the lines after it.  So a quoted cell cannot
        # hold a line break (its line is refused: an address book has no use for one).
        for line_no, line in enumerate(lines_of[1:], start=2):
            try:
                row = self._csv_line(line)
            except ValueError as exc:
                errors.append((line_no, _echo([line]), str(exc)))
                continue
            if not any(cell.strip() for cell in row):
                continue  # blank lines are not errors
            if len(row) > len(header):
                errors.append((line_no, _echo(row), f"{len(row)} cells; the header has {len(header)}"))
                continue
            cells = dict(zip(header, row))
            try:
                contact = self._checked_contact(
                    number, cells.get("phone", "").strip(), cells.get("name", ""),
                    _TAG_SPLIT.split(cells.get("tags", "")), {k: cells.get(k, "") for k in extra})
            except ValueError as exc:
                errors.append((line_no, _echo(row), str(exc)))
                continue
            if contact.phone in seen:
                errors.append((line_no, _echo(row), f"{contact.phone} is already on an earlier line"))
                continue
            seen.add(contact.phone)
            good.append(contact)
            lines.append((line_no, _echo(row)))
        updated, full = 0, []
        for start in range(0, len(good), _IMPORT_BATCH):  # the runner's writes get their turn between batches
            with self._write() as db:
                batch_updated, batch_full = self._upsert_contacts(db, good[start:start + _IMPORT_BATCH], self._clock())
            updated += batch_updated
            full += [start + i for i in batch_full]
        for i in full:
            errors.append((*lines[i], f"the address book is full ({self.max_contacts} contacts)"))
        errors.sort(key=lambda e: e[0])
        return ImportResult(len(good) - updated - len(full), updated, errors)

    # --- jobs ---------------------------------------------------------------

    @staticmethod
    def _job(row) -> Job:
        return Job(*row)

    _JOB_COLUMNS = ("job_id, number, template, rate, not_before, not_after, state, total, created_at, created_by, "
                    "updated_at, updated_by")

    @_tenant
    def create_job(self, number: str, template: str, *, tags: Iterable[str] | None = None,
                   phones: Iterable[str] | None = None, rate: float, not_before: str | None = None,
                   not_after: str | None = None, actor: str) -> Job:
        """Make a group send to the contacts carrying any of ``tags`` and/or the ``phones`` given.

        Recipients are snapshotted now (deduplicated: tagged contacts in
        phone order, then the listed phones) and each one's text rendered
        now, so a restart resends exactly the same text under the same
        message id ``f"{job_id}-{index}"``.  Placeholders: ``{number}``,
        ``{phone}``, ``{name}`` and the extra columns of the contacts; one a
        recipient lacks (a listed phone not in the book, an empty cell)
        becomes the empty string; one that no recipient has is refused (a
        typo).  Opt-outs are checked at send time, not here.

        Args:
            rate: messages per second for this job, ``0 < rate <= MAX_JOB_RATE``.
            not_before, not_after: ``"HH:MM"`` local times of day (the
                number's zone) bounding when it sends, both included; a
                window like 20:00–08:00 wraps midnight.
            actor: who created it (kept on the job).

        Raises:
            ValueError: a bad template, rate, time, phone; no recipients; more
                than ``max_recipients``; a text over the part limit; too many
                unfinished jobs.
        """
        if not isinstance(template, str) or not template.strip():
            raise ValueError("the template is empty")
        if not _is_unicode(template):
            raise ValueError(_NOT_UNICODE)
        if len(template) > self.max_template_chars:
            raise ValueError(f"the template is longer than {self.max_template_chars} characters")
        try:
            rate = float(rate)
        except (TypeError, ValueError):
            raise ValueError(f"rate must be a number of messages per second, not {rate!r}") from None
        if not 0 < rate <= MAX_JOB_RATE:  # also refuses NaN
            raise ValueError(f"rate must be above 0 and at most {MAX_JOB_RATE:g} messages per second")
        if not_before is not None or not_after is not None:
            window = parse_time(f"{not_before or '00:00'}-{not_after or '23:59'}")
            not_before, _, not_after = window.text.partition("-")
        tags = [tags] if isinstance(tags, str) else tags  # one tag, not its characters
        phones = [phones] if isinstance(phones, str) else phones
        recipients = self._select_recipients(number, tags, phones)
        if not recipients:
            raise ValueError("the job has no recipients (no contact carries those tags and no phone was given)")
        allowed = set(BASE_FIELDS).union(*(c.fields for c in recipients))
        check_template(template, allowed)
        now = self._clock()
        job_id = "j" + secrets.token_hex(8)
        rows, too_long = [], []
        for index, c in enumerate(recipients):
            values = dict.fromkeys(allowed, "")
            values.update(c.fields)
            values.update(number=number, phone=c.phone, name=c.name)
            text = render(template, values)
            try:
                parts = count_parts(text)
            except ValueError:
                too_long.append(c.phone)
                continue
            rows.append((job_id, index, c.phone, text, parts, "pending", now))
        if too_long:
            raise ValueError(f"the text for {len(too_long)} recipient(s) needs more than {MAX_PARTS} parts "
                             f"(first: {too_long[0]})")
        with self._write() as db:
            open_jobs = db.execute("SELECT COUNT(*) FROM jobs WHERE number = ? AND state NOT IN ('done', 'cancelled')",
                                   (number,)).fetchone()[0]
            if open_jobs >= self.max_open_jobs:
                raise ValueError(f"{number} already has {open_jobs} unfinished jobs (at most {self.max_open_jobs})")
            today = db.execute("SELECT COUNT(*) FROM jobs WHERE number = ? AND created_at > ?",
                               (number, now - 86400)).fetchone()[0]
            if today >= self.max_jobs_per_day:
                raise ValueError(f"{number} created {today} jobs in the last 24 hours (at most {self.max_jobs_per_day})")
            db.execute(f"INSERT INTO jobs ({self._JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 'scheduled', ?, ?, ?, ?, ?)",
                       (job_id, number, template, rate, not_before, not_after, len(rows), now, actor, now, actor))
            db.executemany("INSERT INTO recipients (job_id, idx, phone, text, parts, state, updated_at) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        return self.job(number, job_id)

    def _select_recipients(self, number, tags, phones) -> list[Contact]:
        chosen: dict[str, Contact] = {}

        def add(contact: Contact) -> None:
            if contact.phone not in chosen:
                if len(chosen) >= self.max_recipients:
                    raise ValueError(f"more than {self.max_recipients} recipients in one job")
                chosen[contact.phone] = contact

        for tag in tags or ():
            after = None
            while page := self.contacts(number, tag=tag, after=after, limit=1000):
                for c in page:
                    add(c)
                after = page[-1].phone
        for raw in phones or ():
            try:
                phone = normalize(raw)
            except NumberError as exc:
                raise ValueError(f"bad phone {str(raw)[:40]!r}: {exc}") from None
            if phone not in chosen:
                add(self.contact(number, phone) or Contact(number, phone))
        return list(chosen.values())

    @_tenant
    def job(self, number: str, job_id: str) -> Job | None:
        """One of ``number``'s jobs, or None (also for another number's job)."""
        rows = self._read(f"SELECT {self._JOB_COLUMNS} FROM jobs WHERE job_id = ? AND number = ?", (job_id, number))
        return self._job(rows[0]) if rows else None

    @_tenant
    def jobs(self, number: str, *, limit: int = 100) -> list[Job]:
        """``number``'s jobs, newest first (at most ``limit``, clamped to 1..1000)."""
        limit = max(1, min(int(limit), 1000))
        return [self._job(row) for row in self._read(
            f"SELECT {self._JOB_COLUMNS} FROM jobs WHERE number = ? ORDER BY seq DESC LIMIT ?", (number, limit))]

    @_tenant
    def progress(self, number: str, job_id: str) -> JobProgress | None:
        """A job's recipients counted by state, or None for an unknown job.  O(recipients of the job)."""
        job = self.job(number, job_id)
        if job is None:
            return None
        counts = dict.fromkeys(RECIPIENT_STATES, 0)
        delivered = undelivered = 0
        for state, delivery, n in self._read(
                "SELECT state, delivery, COUNT(*) FROM recipients WHERE job_id = ? GROUP BY state, delivery",
                (job_id,)):
            counts[state] += n
            if state == "sent" and delivery == "delivered":
                delivered += n
            elif state == "sent" and delivery in ("failed", "rejected"):
                undelivered += n
        return JobProgress(total=job.total, delivered=delivered, undelivered=undelivered, **counts)

    _TRANSITIONS = {
        "pause": (("scheduled", "running"), "paused"),
        "resume": (("paused",), "scheduled"),
        "cancel": (("scheduled", "running", "paused"), "cancelled"),
    }

    def _change(self, action: str, number: str, job_id: str, actor: str) -> Job:
        sources, target = self._TRANSITIONS[action]
        with self._write() as db:
            row = db.execute("SELECT state FROM jobs WHERE job_id = ? AND number = ?", (job_id, number)).fetchone()
            if row is None:
                raise LookupError(f"no job {job_id!r} for {number}")
            if row[0] not in sources:
                raise ValueError(f"cannot {action} a job that is {row[0]}")
            db.execute("UPDATE jobs SET state = ?, updated_at = ?, updated_by = ? WHERE job_id = ?",
                       (target, self._clock(), actor, job_id))
        return self.job(number, job_id)

    @_tenant
    def pause(self, number: str, job_id: str, *, actor: str) -> Job:
        """Stop a scheduled or running job before its next message.

        Raises:
            LookupError: ``number`` has no such job.
            ValueError: the job is not scheduled or running.
        """
        return self._change("pause", number, job_id, actor)

    @_tenant
    def resume(self, number: str, job_id: str, *, actor: str) -> Job:
        """Let a paused job go on (it becomes ``scheduled``; the runner makes it ``running``).  Raises like pause."""
        return self._change("resume", number, job_id, actor)

    @_tenant
    def cancel(self, number: str, job_id: str, *, actor: str) -> Job:
        """End a job for good; its pending recipients get nothing.  Raises like pause."""
        return self._change("cancel", number, job_id, actor)

    # --- for the runner (tel400.smsjobs) ------------------------------------

    def active_jobs(self) -> list[Job]:
        """Every number's scheduled and running jobs, oldest first."""
        return [self._job(row) for row in self._read(
            f"SELECT {self._JOB_COLUMNS} FROM jobs WHERE state IN ('scheduled', 'running') ORDER BY seq")]

    def job_state(self, job_id: str) -> str | None:
        """A job's state, or None (the runner checks it before every message)."""
        rows = self._read("SELECT state FROM jobs WHERE job_id = ?", (job_id,))
        return rows[0][0] if rows else None

    _RECIPIENT_COLUMNS = "job_id, idx, phone, text, parts, state, attempts, delivery"

    def recipient(self, job_id: str, index: int) -> Recipient | None:
        rows = self._read(f"SELECT {self._RECIPIENT_COLUMNS} FROM recipients WHERE job_id = ? AND idx = ?",
                          (job_id, index))
        return Recipient(*rows[0]) if rows else None

    def next_pending(self, job_id: str) -> Recipient | None:
        """The job's pending recipient with the lowest index.  O(log n)."""
        rows = self._read(f"SELECT {self._RECIPIENT_COLUMNS} FROM recipients WHERE job_id = ? AND state = 'pending' "
                          "ORDER BY idx LIMIT 1", (job_id,))
        return Recipient(*rows[0]) if rows else None

    def in_doubt(self) -> list[Recipient]:
        """Recipients left ``sending`` (a runner stopped between marking and recording them)."""
        return [Recipient(*row) for row in self._read(
            f"SELECT {self._RECIPIENT_COLUMNS} FROM recipients WHERE state = 'sending' ORDER BY job_id, idx")]

    def set_recipient(self, job_id: str, index: int, state: str, *, expect: Sequence[str],
                      attempts: int | None = None) -> bool:
        """Move a recipient to ``state`` if it is in one of ``expect``; True when it moved.

        Committed (``synchronous=FULL``) before it returns: the runner marks
        a recipient ``sending`` this way before handing its message over.
        """
        if state not in RECIPIENT_STATES:
            raise ValueError(f"unknown recipient state {state!r}")
        marks = ",".join("?" * len(expect))
        with self._write() as db:
            return db.execute(
                f"UPDATE recipients SET state = ?, updated_at = ?, attempts = COALESCE(?, attempts) "
                f"WHERE job_id = ? AND idx = ? AND state IN ({marks})",
                (state, self._clock(), attempts, job_id, index, *expect)).rowcount == 1

    def mark_sent(self, msg: OutgoingSms, recipient: Recipient, *, attempts: int, at: float | None = None) -> None:
        """The gateway took the recipient's message: mark it ``sent`` and record the message, in one transaction."""
        at = self._clock() if at is None else at
        with self._write() as db:
            db.execute("UPDATE recipients SET state = 'sent', attempts = ?, updated_at = ? WHERE job_id = ? AND idx = ?",
                       (attempts, at, recipient.job_id, recipient.index))
            self._insert_message(db, "out", msg.number, msg.to, msg.text, msg.parts, msg.kind, "sent",
                                 msg.message_id, at)

    def mark_failed(self, msg: OutgoingSms, recipient: Recipient, *, attempts: int, at: float | None = None) -> None:
        """The gateway refused the message every time: mark the recipient ``failed`` and record it."""
        at = self._clock() if at is None else at
        with self._write() as db:
            moved = db.execute("UPDATE recipients SET state = 'failed', attempts = ?, updated_at = ? "
                               "WHERE job_id = ? AND idx = ? AND state = 'sending'",
                               (attempts, at, recipient.job_id, recipient.index)).rowcount
            if not moved:  # settled meanwhile (a delivery report): its record stands
                return
            self._insert_message(db, "out", msg.number, msg.to, msg.text, msg.parts, msg.kind, "failed",
                                 msg.message_id, at)

    def finish_if_done(self, job_id: str) -> bool:
        """Mark a scheduled or running job ``done`` when no recipient is pending or sending; True if it was."""
        with self._write() as db:
            left = db.execute("SELECT 1 FROM recipients WHERE job_id = ? AND state IN ('pending', 'sending') LIMIT 1",
                              (job_id,)).fetchone()
            if left:
                return False
            return db.execute("UPDATE jobs SET state = 'done', updated_at = ?, updated_by = 'runner' "
                              "WHERE job_id = ? AND state IN ('scheduled', 'running')",
                              (self._clock(), job_id)).rowcount == 1

    def take_lease(self, owner: str, ttl_s: float) -> bool:
        """Take or renew the runner lease for ``ttl_s`` seconds; False while another owner's is unexpired.

        One runner per store: two would double each number's rate and could
        resend each other's messages in flight.  In one BEGIN IMMEDIATE
        transaction, so two runners racing cannot both win.  A killed
        holder's lease simply expires (the wall clock decides).
        """
        now = self._clock()
        with self._write() as db:
            row = db.execute("SELECT owner, expires_at FROM runner_lease WHERE id = 1").fetchone()
            if row is not None and row[0] != owner and row[1] > now:
                return False
            db.execute("INSERT INTO runner_lease VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                       "owner = excluded.owner, expires_at = excluded.expires_at", (owner, now + ttl_s))
            return True

    def release_lease(self, owner: str) -> None:
        """Give the lease up (a runner that stops cleanly): the next one need not wait for it to expire."""
        with self._write() as db:
            db.execute("DELETE FROM runner_lease WHERE id = 1 AND owner = ?", (owner,))

    def mark_running(self, job_id: str) -> bool:
        """scheduled → running (the runner's first message of the job); True when it moved."""
        with self._write() as db:
            return db.execute("UPDATE jobs SET state = 'running', updated_at = ?, updated_by = 'runner' "
                              "WHERE job_id = ? AND state = 'scheduled'", (self._clock(), job_id)).rowcount == 1


class _Transaction:
    """``with store._write() as db``: BEGIN IMMEDIATE … COMMIT, ROLLBACK on error, sqlite errors as BackendError."""

    def __init__(self, store: SmsStore) -> None:
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        self.db = self.store._db()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise BackendError(f"{self.store.path}: {exc}") from None
        return self.db

    def __exit__(self, kind, exc, tb) -> bool:
        if kind is None:
            try:
                self.db.execute("COMMIT")
                return False
            except sqlite3.Error as error:
                self.db.execute("ROLLBACK")
                raise BackendError(f"{self.store.path}: {error}") from None
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise BackendError(f"{self.store.path}: {exc}") from None
        if isinstance(exc, UnicodeEncodeError):  # SQLite cannot store a lone surrogate
            raise ValueError(_NOT_UNICODE) from None
        return False
