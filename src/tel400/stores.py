"""Plan stores: where routers read their plans, and how they notice a change.

Every store answers two questions: :meth:`PlanStore.version` (cheap: has
anything changed?) and :meth:`PlanStore.load` (the validated plan set).  A
:class:`tel400.PlanWatcher` asks the first every half second and, when the
answer changes, the second; a plan set that does not validate is refused
and the running plans stay.

* :class:`FileStore` — a TOML, YAML or JSON file; the version is the file's
  modification time, size and inode, so an edit in place and an atomic
  rename are both seen.
* :class:`SqliteStore` — ``sqlite:///path.db``, the embedded default behind
  the admin API: one row per number, the top-level settings, a version
  counter bumped in the same transaction as every change, an audit log.
* :class:`RedisStore` — ``redis://host:port/db``, for a cluster: a hash of
  numbers, the settings, a version key, an audit list; each change is one
  ``MULTI``/``EXEC`` transaction and is also published on a channel.

Writable stores validate a change and compile it with every engine before
writing it (:class:`~tel400.PlanError` otherwise, and nothing is written),
and record who made it.

Loading is per number: a number whose stored plan does not validate (written
by an older version, or straight into the database or file) is left out and
reported (:attr:`PlanStore.quarantined`, a ``plan_quarantined`` log line),
so that one bad number never keeps a process from starting or from routing
every other number.  Mistakes outside the numbers (the top-level settings,
a file that does not parse) still refuse the whole load.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Hashable
from typing import Any
from urllib.parse import urlsplit

import attrs
import structlog

from . import limits
from .exceptions import BackendError, NumberError, PlanError
from .loading import load_plans
from .numbers import normalize
from .plans import PlanSet
from .redis_clients import open_redis, url_kind
from .router import compile_check

_log = structlog.get_logger("tel400.stores")

#: Top-level keys of a plan set other than ``numbers``.
SETTINGS_KEYS = ("blacklist", "prompts", "calendar", "segments")
AUDIT_LIMIT = 10_000


@attrs.frozen
class Changes:
    """What changed in a store since a version (:meth:`PlanStore.changes_since`)."""

    #: the store's version these changes bring a reader to
    version: Hashable
    #: numbers added, changed or deleted since (each to be read again, or dropped)
    numbers: frozenset[str] = frozenset()
    #: the top-level settings changed, or the store cannot tell what changed
    #: (a version older than its change log keeps): read everything again
    everything: bool = False


class PlanStore(abc.ABC):
    """Where plans live."""

    url: str = ""
    writable: bool = False
    #: Numbers the last :meth:`load` left out because their stored plan is
    #: invalid, with the reason (the PlanError text).
    quarantined: dict[str, str] = {}

    @abc.abstractmethod
    def version(self) -> Hashable:
        """A value that changes whenever the plans change.  Cheap."""

    @abc.abstractmethod
    def load(self) -> PlanSet:
        """The plans, validated; a number whose plan is invalid is left out.

        Each number left out is logged (``plan_quarantined``, an error, with
        the number and the PlanError text) and kept in :attr:`quarantined`
        until the next load.

        Raises:
            PlanError: the plans as a whole are invalid: the settings, or a
                file that does not parse (the caller keeps its own).
            BackendError: the store cannot be read now.
        """

    def changes_since(self, version: Hashable | None) -> Changes:
        """What changed since ``version`` (``None``: never read: everything).

        The default knows only whether anything changed; stores with a change
        log name the numbers.
        """
        current = self.version()
        return Changes(current, everything=current != version)

    def _quarantine(self, refused: dict[str, PlanError]) -> None:
        self.quarantined = {number: str(exc) for number, exc in refused.items()}
        for number, error in self.quarantined.items():
            _log.error("plan_quarantined", store=self.url, number=number, error=error)

    def close(self) -> None:
        """Release connections."""


class FileStore(PlanStore):
    """Plans in a TOML, YAML or JSON file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.url = self.path

    def version(self) -> Hashable:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            return ("missing", exc.errno)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def load(self) -> PlanSet:
        refused: dict[str, PlanError] = {}
        plans = load_plans(self.path, refused=refused)
        self._quarantine(refused)
        return plans


class WritableStore(PlanStore):
    """What the SQLite and Redis stores share: validated writes with an audit trail."""

    writable = True

    # -- reading ---------------------------------------------------------------

    @abc.abstractmethod
    def _snapshot(self) -> tuple[dict[str, Any], dict[str, dict]]:
        """(settings, {number: plan tree}) as stored."""

    def load(self) -> PlanSet:
        settings, numbers = self._snapshot()
        refused: dict[str, PlanError] = {}
        for number in [n for n, body in numbers.items() if isinstance(body, _Unreadable)]:
            del numbers[number]
            refused[number] = PlanError("the stored plan is not JSON", source=self.url, number=number)
        plans = self._validate(settings, numbers, refused)
        self._quarantine(refused)
        return plans

    def tree(self) -> dict[str, Any]:
        """The stored plans as one plan tree (``numbers`` sorted; a row that is not JSON left out)."""
        settings, numbers = self._snapshot()
        return {**settings, "numbers": [numbers[n] for n in sorted(numbers) if not isinstance(numbers[n], _Unreadable)]}

    def numbers(self) -> list[str]:
        return sorted(self._snapshot()[1])

    def get_number(self, number: str) -> dict | None:
        """One number's plan tree, or ``None`` (also for a stored row that is not JSON)."""
        body = self._snapshot()[1].get(_normal(number))
        return None if isinstance(body, _Unreadable) else body

    def _validate(self, settings: dict, numbers: dict[str, dict], refused: dict | None = None) -> PlanSet:
        tree = {**settings, "numbers": [numbers[n] for n in sorted(numbers)]}
        return PlanSet.from_dict(tree, source=self.url, refused=refused)

    def _checked(self, settings: dict, numbers: dict[str, dict]) -> PlanSet:
        """The plans a write would store: validated, and compiled by every engine."""
        plans = self._validate(settings, numbers)
        compile_check(plans)
        return plans

    # -- writing ---------------------------------------------------------------

    def put_number(self, plan: dict, *, actor: str = "unknown") -> PlanSet:
        """Add or replace one number's plan.

        The plan is validated with the stored settings and compiled by every
        engine first, and its canonical form must fit
        :data:`tel400.limits.MAX_STORED_PLAN_BYTES`; a plan that does not is
        refused with its :class:`~tel400.PlanError` and nothing is written.
        Other numbers are not read: one already stored invalid (quarantined)
        does not block a change to another.

        Returns:
            The stored settings with this number's plan, as validated.

        Cost: O(this plan); one transaction.
        """
        if not isinstance(plan, dict) or "number" not in plan:
            raise PlanError("expected a plan table with a number", source=self.url)
        try:
            number = normalize(str(plan["number"]))
        except NumberError as exc:
            raise PlanError(str(exc), source=self.url, field="number") from None
        plan = {**plan, "number": number}
        settings, numbers = self._snapshot()
        before = numbers.get(number)
        result = self._checked(settings, {number: plan})
        stored = PlanSet(numbers=result.numbers).to_dict()["numbers"][0]
        size = len(_dump(stored).encode())
        if size > limits.MAX_STORED_PLAN_BYTES:
            raise PlanError(f"the plan takes {size} bytes stored; at most {limits.MAX_STORED_PLAN_BYTES}",
                            source=self.url, number=number)
        self._write_number(number, stored, actor=actor, action="put", before=before)
        return result

    def delete_number(self, number: str, *, actor: str = "unknown") -> bool:
        """Remove one number's plan; ``False`` if it had none."""
        number = _normal(number)
        settings, numbers = self._snapshot()
        before = numbers.pop(number, None)
        if before is None:
            return False
        self._write_number(number, None, actor=actor, action="delete", before=before)
        return True

    def put_settings(self, settings: dict, *, actor: str = "unknown") -> PlanSet:
        """Replace the top-level blacklist, prompts, calendar and segments."""
        unknown = set(settings) - set(SETTINGS_KEYS)
        if unknown:
            raise PlanError(f"unknown settings {sorted(unknown)}; expected {', '.join(SETTINGS_KEYS)}", source=self.url)
        before, numbers = self._snapshot()
        # Numbers already invalid stay quarantined; a number the new settings
        # would make invalid (a calendar contradiction) refuses the change.
        refused_before: dict[str, PlanError] = {}
        self._validate(before, numbers, refused_before)
        refused: dict[str, PlanError] = {}
        result = self._validate(settings, numbers, refused)
        newly = [n for n in refused if n not in refused_before]
        if newly:
            raise refused[newly[0]]
        compile_check(result)
        self._write_settings(settings, actor=actor, before=before)
        return result

    def replace_all(self, plans: PlanSet, *, actor: str = "unknown") -> None:
        """Store exactly ``plans`` (seeding from a file, restoring a backup)."""
        tree = plans.to_dict()
        settings = {k: tree[k] for k in SETTINGS_KEYS if k in tree}
        numbers = {p["number"]: p for p in tree["numbers"]}
        self._checked(settings, numbers)
        self._write_all(settings, numbers, actor=actor)

    @abc.abstractmethod
    def _write_number(self, number: str, plan: dict | None, *, actor: str, action: str, before: dict | None) -> None: ...

    @abc.abstractmethod
    def _write_settings(self, settings: dict, *, actor: str, before: dict) -> None: ...

    @abc.abstractmethod
    def _write_all(self, settings: dict, numbers: dict[str, dict], *, actor: str) -> None: ...

    @abc.abstractmethod
    def audit(self, number: str | None = None, limit: int = 100) -> list[dict]:
        """The latest changes, newest first: at, actor, action, number, before, after."""


def _normal(number: str) -> str:
    try:
        return normalize(number)
    except NumberError:
        return str(number)


class _Unreadable(str):
    """A stored plan row that is not JSON (written behind the store's back): quarantined at load."""


def _decoded(body: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return _Unreadable(body[:60])


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _audited(body: Any) -> Any:
    """What the audit log keeps of a plan or settings: the body, or a digest of one too large to keep.

    Bounds the log to AUDIT_LIMIT entries of at most twice
    :data:`tel400.limits.MAX_AUDITED_BYTES` each, whatever the plans hold.
    """
    if body is None:
        return None
    text = _dump(body).encode()
    if len(text) <= limits.MAX_AUDITED_BYTES:
        return body
    return {"bytes": len(text), "sha256": hashlib.sha256(text).hexdigest(), "omitted": True}


class SqliteStore(WritableStore):
    """Plans in an SQLite database (``sqlite:///path``); safe for many processes."""

    _SCHEMA = """
    CREATE TABLE IF NOT EXISTS plans (number TEXT PRIMARY KEY, body TEXT NOT NULL,
                                      updated_at REAL NOT NULL, updated_by TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL,
                                      action TEXT NOT NULL, number TEXT, before TEXT, after TEXT);
    INSERT OR IGNORE INTO meta (key, value) VALUES ('version', 0);
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        """Open (or, with ``create``, make) the database at ``path``.

        Args:
            path: the database file.
            create: make the file, and its directory, when they do not exist.
                Readers pass ``False``: a mistyped path then fails here
                instead of serving an empty store (every number unknown).

        Raises:
            BackendError: the file is missing (``create=False``) or cannot be
                opened or made.
        """
        self.path = os.fspath(path)
        self.url = f"sqlite:///{self.path}"
        self._local = threading.local()
        if not create and not os.path.isfile(self.path):
            raise BackendError(f"{self.url}: no such database (tel400 store import makes one)")
        try:
            if create:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            with self._connect() as db:
                db.executescript(self._SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise BackendError(f"{self.url}: cannot open the database: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        # One connection per thread and process (a connection is not fork-safe).
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            db = sqlite3.connect(self.path, timeout=5, isolation_level=None, check_same_thread=True)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=5000")
            self._local.db, self._local.pid = db, os.getpid()
        return db

    def version(self) -> Hashable:
        try:
            row = self._connect().execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        except sqlite3.Error as exc:
            raise BackendError(f"{self.url}: {exc}") from None
        return row[0] if row else 0

    def _snapshot(self) -> tuple[dict, dict]:
        db = self._connect()
        try:
            db.execute("BEGIN")
            settings = {k: json.loads(v) for k, v in db.execute("SELECT key, body FROM settings")}
            numbers = {n: _decoded(b) for n, b in db.execute("SELECT number, body FROM plans")}
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise BackendError(f"{self.url}: {exc}") from None
        return settings, numbers

    def _transaction(self, work) -> None:
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            work(db)
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise BackendError(f"{self.url}: {exc}") from None

    def _audit(self, db, actor, action, number, before, after) -> None:
        db.execute(
            "INSERT INTO audit (at, actor, action, number, before, after) VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), actor, action, number, None if before is None else _dump(_audited(before)),
             None if after is None else _dump(_audited(after))),
        )
        db.execute("DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?", (AUDIT_LIMIT,))

    def _write_number(self, number, plan, *, actor, action, before) -> None:
        def work(db):
            if plan is None:
                db.execute("DELETE FROM plans WHERE number = ?", (number,))
            else:
                db.execute(
                    "INSERT INTO plans (number, body, updated_at, updated_by) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(number) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at, "
                    "updated_by = excluded.updated_by",
                    (number, _dump(plan), time.time(), actor),
                )
            self._audit(db, actor, action, number, before, plan)

        self._transaction(work)

    def _write_settings(self, settings, *, actor, before) -> None:
        def work(db):
            db.execute("DELETE FROM settings")
            db.executemany("INSERT INTO settings (key, body) VALUES (?, ?)", [(k, _dump(v)) for k, v in settings.items()])
            self._audit(db, actor, "settings", None, before, settings)

        self._transaction(work)

    def _write_all(self, settings, numbers, *, actor) -> None:
        def work(db):
            db.execute("DELETE FROM settings")
            db.execute("DELETE FROM plans")
            db.executemany("INSERT INTO settings (key, body) VALUES (?, ?)", [(k, _dump(v)) for k, v in settings.items()])
            now = time.time()
            db.executemany(
                "INSERT INTO plans (number, body, updated_at, updated_by) VALUES (?, ?, ?, ?)",
                [(n, _dump(p), now, actor) for n, p in numbers.items()],
            )
            self._audit(db, actor, "replace_all", None, None, {"numbers": sorted(numbers)})

        self._transaction(work)

    def audit(self, number: str | None = None, limit: int = 100) -> list[dict]:
        query = "SELECT at, actor, action, number, before, after FROM audit"
        params: tuple = ()
        if number is not None:
            query += " WHERE number = ?"
            params = (_normal(number),)
        query += " ORDER BY id DESC LIMIT ?"
        rows = self._connect().execute(query, params + (limit,)).fetchall()
        return [
            {"at": at, "actor": actor, "action": action, "number": n,
             "before": json.loads(b) if b else None, "after": json.loads(a) if a else None}
            for at, actor, action, n, b, a in rows
        ]

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


class RedisStore(WritableStore):
    """Plans in Redis (``redis://host:port/db``), shared by every router of a cluster."""

    PREFIX = "tel400:{plans}"  # one hash tag: a Redis Cluster keeps every key in one slot, for MULTI
    CHANNEL = "tel400:plans:changed"

    def __init__(self, url: str, *, timeout_ms: float = 2000) -> None:
        import redis

        self.url = url
        self._redis = redis
        self._client = self._guard(lambda: open_redis(url, timeout_s=timeout_ms / 1000, decode_responses=True))
        p = self.PREFIX
        self._numbers_key, self._settings_key = f"{p}:numbers", f"{p}:settings"
        self._version_key, self._audit_key = f"{p}:version", f"{p}:audit"

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except self._redis.RedisError as exc:
            raise BackendError(f"{self.url}: {exc}") from None

    def version(self) -> Hashable:
        return int(self._guard(self._client.get, self._version_key) or 0)

    def _snapshot(self) -> tuple[dict, dict]:
        def read():
            pipe = self._client.pipeline(transaction=True)
            pipe.get(self._settings_key)
            pipe.hgetall(self._numbers_key)
            return pipe.execute()

        settings_raw, numbers_raw = self._guard(read)
        settings = json.loads(settings_raw) if settings_raw else {}
        return settings, {n: _decoded(b) for n, b in numbers_raw.items()}

    def _commit(self, actor, action, number, before, after, apply) -> None:
        entry = _dump({"at": time.time(), "actor": actor, "action": action, "number": number,
                       "before": _audited(before), "after": _audited(after)})

        def write():
            pipe = self._client.pipeline(transaction=True)
            apply(pipe)
            pipe.incr(self._version_key)
            pipe.lpush(self._audit_key, entry)
            pipe.ltrim(self._audit_key, 0, AUDIT_LIMIT - 1)
            version = pipe.execute()[-3]
            self._client.publish(self.CHANNEL, version)

        self._guard(write)

    def _write_number(self, number, plan, *, actor, action, before) -> None:
        def apply(pipe):
            if plan is None:
                pipe.hdel(self._numbers_key, number)
            else:
                pipe.hset(self._numbers_key, number, _dump(plan))

        self._commit(actor, action, number, before, plan, apply)

    def _write_settings(self, settings, *, actor, before) -> None:
        self._commit(actor, "settings", None, before, settings, lambda pipe: pipe.set(self._settings_key, _dump(settings)))

    def _write_all(self, settings, numbers, *, actor) -> None:
        def apply(pipe):
            pipe.delete(self._numbers_key)
            if numbers:
                pipe.hset(self._numbers_key, mapping={n: _dump(p) for n, p in numbers.items()})
            pipe.set(self._settings_key, _dump(settings))

        self._commit(actor, "replace_all", None, None, {"numbers": sorted(numbers)}, apply)

    def audit(self, number: str | None = None, limit: int = 100) -> list[dict]:
        entries = [json.loads(e) for e in self._guard(self._client.lrange, self._audit_key, 0, AUDIT_LIMIT - 1)]
        if number is not None:
            wanted = _normal(number)
            entries = [e for e in entries if e["number"] == wanted]
        return entries[:limit]

    def close(self) -> None:
        self._client.close()


def open_store(source: str | os.PathLike[str], *, create: bool = True) -> PlanStore:
    """A plan store from a path or URL.

    ``plans.toml`` (or ``.yaml``/``.json``, or ``file:///abs/plans.toml``) →
    :class:`FileStore`; ``sqlite:///relative.db`` or ``sqlite:////abs.db`` →
    :class:`SqliteStore`; ``redis://host:port/db``,
    ``redis+cluster://host:port,host:port/`` or
    ``redis+sentinel://host:port/service/db`` → :class:`RedisStore`.
    ``create=False`` (for readers) refuses a SQLite database that does not
    exist (:class:`BackendError`) instead of making an empty one.
    """
    text = os.fspath(source)
    parts = urlsplit(text)
    if parts.scheme == "sqlite":
        path = parts.path[1:]  # sqlite:///relative.db, sqlite:////absolute.db
        if not path:
            raise ValueError("plans: sqlite:// needs a database path, e.g. sqlite:///plans.db")
        return SqliteStore(path, create=create)
    if url_kind(text) is not None:  # redis://, redis+cluster://, redis+sentinel:// (tel400.redis_clients)
        return RedisStore(text)
    if parts.scheme == "file":
        return FileStore(parts.path)
    if parts.scheme and len(parts.scheme) > 1:
        raise ValueError(f"plans: unsupported source {text!r}; expected a file, sqlite:///path, redis://host, "
                         "redis+cluster://host:port,host:port/ or redis+sentinel://host:port/service")
    return FileStore(text)
