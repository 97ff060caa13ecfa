"""The pool of free numbers the operator assigns from (an SQLite file).

The operator imports a list of numbers bought from the carrier, one a line;
the portal's "create a number" page offers the free ones (searched and
ranked by :mod:`tel400.vanity`) and takes the one chosen.  Taking is atomic:
of two operators taking the same number at once, exactly one gets it.

What is accepted: a line that :func:`tel400.normalize` reads as a 400 or an
800 number (ten digits; both are the 95/96-free service numbers a company
rents, and routing handles both alike).  Blank lines and ``#`` comments are
skipped; every other line is reported with its line number, and the good
ones are kept.  A number already in the pool (free or taken) is skipped and
not counted.  Limits (constructor arguments): ``max_lines`` lines per import
(:data:`MAX_IMPORT_LINES`), each at most :data:`MAX_LINE` characters.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable

import tel400
from tel400 import vanity

#: Lines one import reads; the rest is reported as one error (import it in another go).
MAX_IMPORT_LINES = 10_000
#: The longest line read as a number (a number in any written form is far shorter).
MAX_LINE = 64
#: The most numbers :meth:`NumberPool.free` answers.
FREE_LIMIT_MAX = 1000
_PREFIXES = ("400", "800")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pool (
    number   TEXT PRIMARY KEY,
    added_at REAL NOT NULL,
    taken_at REAL             -- NULL: free
);
CREATE INDEX IF NOT EXISTS pool_free ON pool (number) WHERE taken_at IS NULL;
"""


def pool_number(text: str) -> str:
    """``text`` as a pool number (normalised); ValueError saying why not.  O(length of the text)."""
    try:
        number = tel400.normalize(text)
    except tel400.NumberError as exc:
        raise ValueError(str(exc)) from None
    if len(number) != 10 or not number.startswith(_PREFIXES):
        raise ValueError(f"{number} is not a 400 or 800 number")
    return number


class NumberPool:
    """Free numbers in an SQLite file at ``path`` (made on first use).

    Safe to share between threads: each thread has its own connection, and
    SQLite serialises the writes (``busy_timeout`` waits for the other).
    """

    def __init__(self, path, *, max_lines: int = MAX_IMPORT_LINES, busy_timeout_s: float = 5.0) -> None:
        if max_lines < 1:
            raise ValueError(f"max_lines: expected at least 1, got {max_lines}")
        self.path = str(path)
        self.max_lines = max_lines
        self._timeout = busy_timeout_s
        self._local = threading.local()
        self._db().executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            # autocommit: each statement is its own transaction, which is all take() needs
            db = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            self._local.db = db
        return db

    def import_lines(self, lines: Iterable[str], *, refuse=None) -> tuple[int, list[tuple[int, str, str]]]:
        """Add the numbers of ``lines``: ``(added, errors)``, errors as ``(line_no, text, message)``.

        ``refuse``: ``refuse(number) -> str | None``, a message for a number
        that must not be added (the portal: one already in service).
        Line numbers count from 1.  Reads at most ``max_lines`` lines; one
        error says where it stopped.  One transaction: O(lines × log pool).
        """
        good: dict[str, int] = {}
        errors: list[tuple[int, str, str]] = []
        for line_no, raw in enumerate(lines, 1):
            if line_no > self.max_lines:
                stop = f"stopped: at most {self.max_lines} lines per import; import the rest in another go"
                errors.append((line_no, _shown(raw), stop))
                break
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            if len(text) > MAX_LINE:
                errors.append((line_no, _shown(text), f"longer than {MAX_LINE} characters"))
                continue
            try:
                number = pool_number(text)
            except ValueError as exc:
                errors.append((line_no, text, str(exc)))
                continue
            refused = refuse(number) if refuse is not None else None
            if refused:
                errors.append((line_no, text, refused))
            else:
                good.setdefault(number, line_no)
        now = time.time()
        db = self._db()
        with _transaction(db):
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO pool (number, added_at) VALUES (?, ?)",
                           [(number, now) for number in good])
            added = db.total_changes - before
        return added, errors

    def free(self, query: str | None = None, limit: int = 100) -> list[str]:
        """Free numbers: without ``query`` in number order; with one, as :func:`tel400.vanity.search` ranks them.

        ``limit`` is held to 1..FREE_LIMIT_MAX.  Raises ValueError for a query
        vanity.search refuses.  Without a query O(limit); with one O(free numbers).
        """
        limit = max(1, min(limit, FREE_LIMIT_MAX))
        db = self._db()
        if not query:
            rows = db.execute("SELECT number FROM pool WHERE taken_at IS NULL ORDER BY number LIMIT ?", (limit,))
            return [number for (number,) in rows]
        rows = db.execute("SELECT number FROM pool WHERE taken_at IS NULL")
        return [found.number for found in vanity.search((n for (n,) in rows), query, limit=limit)]

    def take(self, number: str) -> bool:
        """Take ``number`` out of the free ones: True for the one caller that got it, False otherwise.

        One conditional UPDATE: SQLite runs it alone, so of two concurrent
        takes exactly one changes the row.  A number not in the pool (or not
        a number) is False.
        """
        try:
            number = pool_number(number)
        except ValueError:
            return False
        cur = self._db().execute("UPDATE pool SET taken_at = ? WHERE number = ? AND taken_at IS NULL",
                                 (time.time(), number))
        return cur.rowcount == 1

    def release(self, number: str) -> None:
        """Give ``number`` back to the pool (free again; added if it was never in it).

        Raises ValueError for a number the pool does not take.
        """
        number = pool_number(number)
        self._db().execute("INSERT INTO pool (number, added_at) VALUES (?, ?) "
                           "ON CONFLICT (number) DO UPDATE SET taken_at = NULL", (number, time.time()))

    def returned(self, number: str) -> bool:
        """A number given out from the pool is free again (its plan was deleted): True if the pool holds it.

        Unlike :meth:`release`, a number the pool never held stays out of it.
        """
        try:
            number = pool_number(number)
        except ValueError:
            return False
        return self._db().execute("UPDATE pool SET taken_at = NULL WHERE number = ?", (number,)).rowcount == 1

    def close(self) -> None:
        """Close this thread's connection."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


class _transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, value, tb):
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def _shown(text: str) -> str:
    """A line as an error shows it: cut to MAX_LINE characters."""
    text = text.rstrip("\r\n")
    return text if len(text) <= MAX_LINE else text[:MAX_LINE] + "…"
