"""Plan stores: where routers read their plans, and how they notice a change.

Every store answers :meth:`PlanStore.version` (cheap: has anything
changed?), :meth:`PlanStore.changes_since` (which numbers changed since a
version), and reads one number (:meth:`PlanStore.load_number`), the
top-level settings (:meth:`PlanStore.settings`) or every number in batches
(:meth:`PlanStore.iter_plans`).  A :class:`tel400.PlanWatcher` asks for the
version every half second and, when it changed, for the changes: only the
numbers named are read again.  A number whose stored plan does not validate
is refused and the running plan stays.

* :class:`FileStore` — a TOML, YAML or JSON file; the version is the file's
  modification time, size and inode, so an edit in place and an atomic
  rename are both seen.  It names the changed numbers by comparing each
  number's digest with the last parse: every change parses the whole file,
  so files suit small deployments.
* :class:`SqliteStore` — ``sqlite:///path.db``, the embedded default behind
  the admin API: one row per number stamped with the version that last
  wrote it, tombstones of deleted numbers, the top-level settings, a
  version counter bumped in the same transaction as every change, an audit
  log.
* :class:`RedisStore` — ``redis://host:port/db``, for a cluster: a hash of
  numbers, the settings, a version key, a change log (a sorted set number →
  version), an audit list, all under one hash tag; each change is one
  atomic script on one slot and is also published on a channel.

The change log reaches back :data:`tel400.limits.CHANGE_LOG_VERSIONS`
versions; a reader further behind, or behind a change of the settings, is
told to read everything again (:attr:`Changes.everything`).

Writable stores validate a change and compile it (the shared compile step, packed by the compiled engine where there is one) before
writing it (:class:`~tel400.PlanError` otherwise, and nothing is written),
and record who made it.  A change to one number reads and writes that
number only.

Loading is per number: a number whose stored plan does not validate (written
by an older version, or straight into the database or file) is left out and
reported (:attr:`PlanStore.quarantined`, a ``plan_quarantined`` log line),
so that one bad number never keeps a process from starting or from routing
every other number.  Mistakes outside the numbers (the top-level settings,
a file that does not parse) still refuse the whole load.
"""

from __future__ import annotations

import abc
import collections
import gc
import hashlib
import itertools
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Hashable, Iterable, Iterator
from typing import IO, Any
from urllib.parse import urlsplit

import attrs
import msgspec
import structlog

from . import limits
from .exceptions import BackendError, NumberError, PlanError
from .loading import read_plan_tree
from .numbers import normalize
from .plans import NumberPlan, PlanSet, dumped_plan, validate_number, validate_settings
from .redis_clients import open_redis, url_kind
from .router import compile_check

_log = structlog.get_logger("tel400.stores")

#: Top-level keys of a plan set other than ``numbers``.
SETTINGS_KEYS = ("blacklist", "prompts", "calendar", "segments")
#: Entries the store-wide audit view gives at most (newest first; Redis keeps no more in its store-wide list).
AUDIT_LIMIT = 10_000
#: Entries the audit keeps of each number (and of the settings), the oldest dropped first: one number
#: changed all day never drops another's history.  Disk: at most this many entries per number ever
#: written, each at most about twice tel400.limits' largest audited body.
AUDIT_PER_NUMBER = 1_000
#: Numbers validated, compiled and written together by an import.
IMPORT_BATCH = 5_000
#: Refusals an import keeps to report (every one is counted).
IMPORT_PROBLEMS_KEPT = 1_000


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
    """Where plans live.

    A subclass must give :meth:`version` and :meth:`load`; the other readers
    default to reading everything (O(numbers)), which the stores here
    replace with reads of one number.
    """

    url: str = ""
    writable: bool = False
    #: Numbers the last :meth:`load` (or complete :meth:`iter_plans`) left
    #: out because their stored plan is invalid, with the reason (the
    #: PlanError text).
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

    def settings(self) -> PlanSet:
        """The validated top-level settings (a PlanSet without numbers).

        Raises:
            PlanError: the stored settings are invalid.
        """
        return attrs.evolve(self.load(), numbers=())

    def load_number(self, number: str) -> NumberPlan | None:
        """One number's plan, validated with the settings; ``None`` if the store has none.

        Raises:
            PlanError: the stored plan is invalid.
        """
        return self.load().get(number)

    def iter_plans(self, *, batch: int = 1000) -> Iterator[list[NumberPlan]]:
        """Every valid number's plan, ``batch`` at a time (invalid ones quarantined)."""
        numbers = self.load().numbers
        for start in range(0, len(numbers), batch):
            yield list(numbers[start:start + batch])

    def count(self) -> int:
        """How many numbers the store holds (valid or not)."""
        return len(self.load().numbers)

    def _quarantine(self, refused: dict[str, PlanError], *, adding: bool = False) -> None:
        """Report ``refused`` (logged, kept in :attr:`quarantined`): instead of the last load's, or ``adding`` to them."""
        new = {number: str(exc) for number, exc in refused.items()}
        self.quarantined = {**self.quarantined, **new} if adding else new
        for number, error in new.items():
            _log.error("plan_quarantined", store=self.url, number=number, error=error)

    def close(self) -> None:
        """Release connections."""


# -- a file -----------------------------------------------------------------------------------------


@attrs.frozen
class _ParsedFile:
    """One parse of a plan file: its raw number tables and their digests, by number."""

    version: Hashable
    settings_raw: dict
    #: number → its tables (more than one: a duplicate, refused when read)
    tables: dict[str, list]
    #: number → the index of its first table in ``numbers`` (for error messages)
    indexes: dict[str, int]
    digests: dict[str, bytes]
    settings_digest: bytes
    settings_cache: list = attrs.field(factory=list, eq=False)


class FileStore(PlanStore):
    """Plans in a TOML, YAML or JSON file.

    :meth:`changes_since` parses the file when its version changed and
    compares each number's digest with the previous parse (kept for one
    version): O(file) per change, so a file suits small deployments; use
    SQLite or Redis for many numbers.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.url = self.path
        self._parsed: _ParsedFile | None = None

    def version(self) -> Hashable:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            return ("missing", exc.errno)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def load(self) -> PlanSet:
        """The plans, each number validated from one parse as :meth:`load_number` does.

        A number given by more than one table is refused as a whole (neither
        table is routed at a cold start; a running watcher keeps its last
        good plan), so a cold start and a watcher agree.  O(file).
        """
        parsed = self._parse()
        settings = self.settings()
        plans: list[NumberPlan] = []
        refused: dict[str, PlanError] = {}
        for number, tables in parsed.tables.items():
            try:
                plans.append(self._validated(number, tables, parsed.indexes[number], settings))
            except PlanError as exc:
                refused[number] = exc
        self._quarantine(refused)
        return attrs.evolve(settings, numbers=tuple(plans))

    def changes_since(self, version: Hashable | None) -> Changes:
        """The numbers whose tables differ from the last parse, when ``version`` is that parse's.

        Cost: nothing when the file did not change; otherwise one parse of
        the file (not validated) and a digest per number.
        """
        current = self.version()
        if version is not None and current == version:
            return Changes(current)
        before = self._parsed
        parsed = self._parse()
        if version is None or before is None or before.version != version \
                or before.settings_digest != parsed.settings_digest:
            return Changes(parsed.version, everything=True)
        changed = {n for n in before.digests.keys() | parsed.digests.keys()
                   if before.digests.get(n) != parsed.digests.get(n)}
        if any(_is_placeholder(n) for n in changed):
            # A table without a readable number (named numbers[i]) came, went or
            # moved: it names no number to update, so everything is read again.
            return Changes(parsed.version, everything=True)
        return Changes(parsed.version, frozenset(changed))

    def settings(self) -> PlanSet:
        parsed = self._parse()
        if not parsed.settings_cache:
            parsed.settings_cache.append(validate_settings(
                parsed.settings_raw, source=self.path, base_dir=os.path.dirname(os.path.abspath(self.path))))
        return parsed.settings_cache[0]

    def load_number(self, number: str) -> NumberPlan | None:
        """One number from the last parse of the file (parsed again if it changed)."""
        wanted = _normal(number)
        parsed = self._parse()
        tables = parsed.tables.get(wanted)
        if not tables:
            return None
        return self._validated(wanted, tables, parsed.indexes[wanted], self.settings())

    def _validated(self, number: str, tables: list, index: int, settings: PlanSet) -> NumberPlan:
        """The one table of ``number`` validated; a duplicated number is refused as a whole.  O(this plan)."""
        if len(tables) > 1:
            raise PlanError(f"duplicate number ({len(tables)} tables, the first numbers[{index}]); "
                            "each number has one plan", source=self.path, number=number)
        return validate_number(tables[0], settings, source=self.path, index=index)

    def count(self) -> int:
        return len(self._parse().tables)

    def _parse(self) -> _ParsedFile:
        version = self.version()  # before reading: a change while reading is seen at the next call
        parsed = self._parsed
        if parsed is not None and parsed.version == version:
            return parsed
        tree = read_plan_tree(self.path)
        if not isinstance(tree, dict):
            raise PlanError("expected a plan set (a table with numbers)", source=self.path)
        raw_numbers = tree.get("numbers", [])
        if not isinstance(raw_numbers, list):
            raise PlanError("expected a list of number tables", source=self.path, field="numbers")
        tables: dict[str, list] = {}
        indexes: dict[str, int] = {}
        for i, table in enumerate(raw_numbers):
            number = _table_number(table, i)
            tables.setdefault(number, []).append(table)
            indexes.setdefault(number, i)
        settings_raw = {k: v for k, v in tree.items() if k != "numbers"}
        parsed = _ParsedFile(version, settings_raw, tables, indexes, {n: _digest(t) for n, t in tables.items()},
                             _digest(settings_raw))
        self._parsed = parsed
        return parsed


def _table_number(table: object, index: int) -> str:
    """The number a raw table is for, normalised; ``numbers[i]`` when it has none readable."""
    if isinstance(table, dict) and isinstance(table.get("number"), (str, int)):
        try:
            return normalize(str(table["number"]))
        except NumberError:
            pass
    return f"numbers[{index}]"


def _is_placeholder(name: str) -> bool:
    """Whether ``name`` is :func:`_table_number`'s ``numbers[i]`` for a table without a readable number."""
    return name.startswith("numbers[")


def _digest(value: object) -> bytes:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).digest()


# -- what SQLite and Redis share ----------------------------------------------------------------------


class WritableStore(PlanStore):
    """What the SQLite and Redis stores share: validated writes with an audit trail."""

    writable = True
    _settings_cache: tuple[str, PlanSet] | None = None

    # -- what each backend gives ------------------------------------------------

    @abc.abstractmethod
    def _settings_raw(self) -> dict:
        """The stored settings tree.  One read."""

    @abc.abstractmethod
    def _get_raw(self, number: str) -> str | None:
        """One number's stored body (JSON text), or ``None``.  One read."""

    @abc.abstractmethod
    def _raw_batches(self, batch: int, *, distinct: bool = True) -> Iterator[list[tuple[str, str]]]:
        """Every (number, body), ``batch`` at a time.

        ``distinct=False`` allows a number to come twice (Redis: a hash being
        rehashed during HSCAN), which spares the set of every number seen
        (O(numbers) memory, ~100 MB at a million); for readers to whom a
        number given twice is harmless (a streamed load puts it twice).
        """

    @abc.abstractmethod
    def count(self) -> int: ...

    @abc.abstractmethod
    def _write_number(self, number: str, plan: dict | None, *, actor: str, action: str, before: dict | None) -> None: ...

    @abc.abstractmethod
    def _write_settings(self, settings: dict, *, actor: str, before: dict) -> None: ...

    @abc.abstractmethod
    def _replace(self, settings: dict, rows: Iterator[list[tuple[str, str, str]]], problems: _Problems,
                 *, actor: str, summary: dict) -> int:
        """Replace everything with ``settings`` and the (where, number, body) rows, in one transaction.

        A number given twice is added to ``problems``; when the rows are
        exhausted with any problem, nothing is written.  Returns how many
        numbers were written.
        """

    # -- reading ---------------------------------------------------------------

    def settings(self) -> PlanSet:
        """The validated settings: one read, validated again only when they changed."""
        raw = self._settings_raw()
        key = _dump(raw)
        cached = self._settings_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        settings = validate_settings(raw, source=self.url)
        self._settings_cache = (key, settings)
        return settings

    def load_number(self, number: str) -> NumberPlan | None:
        """One number's plan, validated.  O(this plan); reads the number and the settings."""
        number = _normal(number)
        body = self._get_raw(number)
        return None if body is None else self._validated(number, body, self.settings())

    def iter_plans(self, *, batch: int = 1000) -> Iterator[list[NumberPlan]]:
        """Every valid plan, ``batch`` numbers at a time; the invalid ones are quarantined at the end.

        Not one snapshot: a number changed while this runs may be seen
        either way (read :meth:`version` first and ask :meth:`changes_since`
        it afterwards).  Memory: one batch.
        """
        settings = self.settings()
        refused: dict[str, PlanError] = {}
        for rows in self._raw_batches(batch, distinct=False):  # a number put twice is harmless
            plans = []
            for number, body in rows:
                try:
                    plans.append(self._validated(number, body, settings))
                except PlanError as exc:
                    refused[number] = exc
            if plans:
                yield plans
        self._quarantine(refused)

    def load(self) -> PlanSet:
        """Every number, sorted, with the settings (a :class:`PlanSet`).  O(numbers)."""
        settings = self.settings()
        by_number = {p.number: p for plans in self.iter_plans() for p in plans}  # a number read twice: once
        numbers = sorted(by_number.values(), key=lambda p: p.number)
        return attrs.evolve(settings, numbers=tuple(numbers), source=self.url)

    def tree(self) -> dict[str, Any]:
        """The stored plans as one plan tree (``numbers`` sorted; a row that is not JSON left out).  O(numbers)."""
        numbers = {}
        for rows in self._raw_batches(IMPORT_BATCH):
            for number, body in rows:
                raw = _decoded(body)
                if not isinstance(raw, _Unreadable):
                    numbers[number] = raw
        return {**self._settings_raw(), "numbers": [numbers[n] for n in sorted(numbers)]}

    def numbers(self) -> list[str]:
        """Every stored number, sorted.  O(numbers)."""
        return sorted(number for rows in self._raw_batches(IMPORT_BATCH) for number, _ in rows)

    def get_number(self, number: str) -> dict | None:
        """One number's plan tree, or ``None`` (also for a stored row that is not JSON).  One read."""
        body = self._get_raw(_normal(number))
        if body is None:
            return None
        raw = _decoded(body)
        return None if isinstance(raw, _Unreadable) else raw

    def _validated(self, number: str, body: str, settings: PlanSet) -> NumberPlan:
        raw = _decoded(body)
        if isinstance(raw, _Unreadable):
            raise PlanError("the stored plan is not JSON", source=self.url, number=number)
        plan = validate_number(raw, settings, source=self.url)
        if plan.number != number:
            raise PlanError(f"stored under {number} but its plan is for {plan.number}", source=self.url, number=number)
        return plan

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

        Cost: O(this plan): reads the settings and this number, one transaction.
        """
        if not isinstance(plan, dict) or "number" not in plan:
            raise PlanError("expected a plan table with a number", source=self.url)
        try:
            number = normalize(str(plan["number"]))
        except NumberError as exc:
            raise PlanError(str(exc), source=self.url, field="number") from None
        settings = self.settings()
        validated = validate_number({**plan, "number": number}, settings, source=self.url)
        result = attrs.evolve(settings, numbers=(validated,), source=self.url)
        compile_check(result)
        stored = _canonical(validated)
        size = len(_dump(stored).encode())
        if size > limits.MAX_STORED_PLAN_BYTES:
            raise PlanError(f"the plan takes {size} bytes stored; at most {limits.MAX_STORED_PLAN_BYTES}",
                            source=self.url, number=number)
        self._write_number(number, stored, actor=actor, action="put", before=self.get_number(number))
        return result

    def delete_number(self, number: str, *, actor: str = "unknown") -> bool:
        """Remove one number's plan; ``False`` if it had none.  Reads and writes this number only."""
        number = _normal(number)
        body = self._get_raw(number)
        if body is None:
            return False
        before = _decoded(body)
        self._write_number(number, None, actor=actor, action="delete",
                           before=None if isinstance(before, _Unreadable) else before)
        return True

    def put_settings(self, settings: dict, *, actor: str = "unknown") -> PlanSet:
        """Replace the top-level blacklist, prompts, calendar and segments.

        Every number is validated again with the new settings (a number
        they would make invalid, a calendar contradiction, refuses the
        change; a number already invalid stays quarantined and does not
        block it) and compiled, ``IMPORT_BATCH`` at a time.

        Returns:
            The new settings, validated (a PlanSet without numbers).

        Cost: O(numbers): settings change rarely.
        """
        unknown = set(settings) - set(SETTINGS_KEYS)
        if unknown:
            raise PlanError(f"unknown settings {sorted(unknown)}; expected {', '.join(SETTINGS_KEYS)}", source=self.url)
        new = validate_settings(settings, source=self.url)
        before = self._settings_raw()
        try:
            old: PlanSet | None = self.settings()
        except PlanError:
            old = None
        for rows in self._raw_batches(IMPORT_BATCH):
            good = []
            for number, body in rows:
                try:
                    good.append(self._validated(number, body, new))
                except PlanError as exc:
                    if old is not None and _valid(lambda: self._validated(number, body, old)):
                        raise exc from None
            compile_check(attrs.evolve(new, numbers=tuple(good)))
        self._write_settings(settings, actor=actor, before=before)
        return new

    def replace_all(self, plans: PlanSet, *, actor: str = "unknown") -> None:
        """Store exactly ``plans`` (seeding from a file, restoring a backup); all or nothing."""
        tree = plans.to_dict()
        settings = {k: tree[k] for k in SETTINGS_KEYS if k in tree}
        where = self.url
        self.import_numbers(settings, ((where, raw) for raw in tree["numbers"]), actor=actor)

    def import_numbers(self, settings: dict, numbers: Iterable[tuple[str, object]], *,
                       actor: str = "unknown", source: str | None = None, base_dir: str | None = None,
                       workers: int = 1) -> int:
        """Replace every number and the settings, streamed: all or nothing.

        Args:
            settings: the top-level settings tree.
            numbers: (where, raw table) pairs; ``where`` names the place in
                the input for errors (``plans.jsonl line 12``).  The table
                may be given as its JSON text (decoded with the rest of the
                checks, in a worker); a :class:`PlanError` in its place (a
                line too long to read) is reported like an invalid plan.
            source, base_dir: where ``settings`` came from, for errors and
                a relative ``segments`` path.
            workers: processes that check the numbers (forked: call from a
                process without threads of its own, as ``tel400 store
                import`` does); 1 checks them in this process.

        Every number is validated and compiled, ``IMPORT_BATCH`` at a
        time, and written in the same transaction; if any is refused
        (invalid, compiled by no engine, too large, or given twice), nothing
        is written and one :class:`PlanError` lists every refusal (the
        first :data:`IMPORT_PROBLEMS_KEPT` in its ``problems``; all counted).

        Returns:
            How many numbers were written.

        Cost: O(input), memory O(``IMPORT_BATCH``) (and, for Redis, the
        server holds the staged numbers until the last is checked).
        """
        validated = validate_settings(settings, source=source or self.url, base_dir=base_dir)
        stored_settings = {k: v for k, v in validated.to_dict().items() if k in SETTINGS_KEYS}
        problems = _Problems()
        rows = self._import_rows(validated, numbers, problems, workers)
        summary = {"numbers": None, "source": source}
        count = self._replace(stored_settings, rows, problems, actor=actor, summary=summary)
        if problems.count:
            raise problems.error()
        return count

    def _import_rows(self, settings: PlanSet, numbers: Iterable[tuple[str, object]],
                     problems: _Problems, workers: int) -> Iterator[list[tuple[str, str, str]]]:
        """Checked (where, number, body) rows, a batch at a time (:func:`_checked_batch`).

        With ``workers`` > 1 the batches are checked in that many forked
        processes, at most two batches each in flight (memory stays bounded
        whatever the input's length), and come back in input order.
        """
        batches = _chunks(numbers, IMPORT_BATCH)
        if workers <= 1:
            for batch in batches:
                rows, refused = _checked_batch(settings, batch, write=not problems.count)
                problems.extend(refused)
                yield rows
            return
        import concurrent.futures
        import multiprocessing

        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                                    initializer=_set_worker_settings,
                                                    initargs=(settings,)) as pool:
            pending: collections.deque = collections.deque()
            for batch in batches:
                pending.append(pool.submit(_checked_batch, None, batch, write=not problems.count))
                if len(pending) >= 2 * workers:
                    rows, refused = pending.popleft().result()
                    problems.extend(refused)
                    yield rows
            while pending:
                rows, refused = pending.popleft().result()
                problems.extend(refused)
                yield rows

    def export_jsonl(self, out: IO[str]) -> int:
        """Write the settings line and every stored number's body, one per line, as stored.

        A stored plan that is invalid is written as it is (the import
        reading the file back refuses it, naming its line).  Returns how
        many numbers were written.  O(numbers), memory one batch.
        """
        out.write(_dump({"settings": self._settings_raw()}) + "\n")
        count = 0
        for rows in self._raw_batches(IMPORT_BATCH):
            for _, body in rows:
                out.write(body.replace("\n", " ") + "\n")
                count += 1
        return count

    @abc.abstractmethod
    def audit(self, number: str | None = None, limit: int = 100) -> list[dict]:
        """The latest changes, newest first: at, actor, action, number, before, after."""


class _Problems:
    """What an import refused: every refusal counted, the first IMPORT_PROBLEMS_KEPT kept."""

    def __init__(self) -> None:
        self.kept: list[PlanError] = []
        self.count = 0

    def add(self, exc: PlanError) -> None:
        self.count += 1
        if len(self.kept) < IMPORT_PROBLEMS_KEPT:
            self.kept.append(exc)

    def extend(self, excs: list[PlanError]) -> None:
        for exc in excs:
            self.add(exc)

    def error(self) -> PlanError:
        lines = [str(e) for e in self.kept]
        if self.count > len(self.kept):
            lines.append(f"... and {self.count - len(self.kept)} more")
        exc = PlanError(f"{self.count} numbers refused, nothing imported:\n" + "\n".join(lines))
        exc.problems = list(self.kept)
        return exc


_worker_settings: PlanSet | None = None


def _set_worker_settings(settings: PlanSet) -> None:
    """A worker's start: its settings, and what it inherited from the parent out of the cyclic GC.

    A forked worker holds the parent's heap; frozen, the collections its
    batches trigger walk only what they made (measured at 100,000 numbers:
    ~10% of a worker's time went to walking what it inherited).
    """
    global _worker_settings
    _worker_settings = settings
    gc.freeze()


def _checked_batch(settings: PlanSet | None, batch: list[tuple[str, object]], *,
                   write: bool) -> tuple[list[tuple[str, str, str]], list[PlanError]]:
    """One batch of an import: (rows to write, refusals).

    Each table (or its JSON text, decoded here) is validated with
    ``settings`` (``None``: this worker's); a number given twice in the
    batch is refused.  With ``write``, the batch is compiled by every
    engine and each plan put in its canonical stored form (bounded by
    :data:`tel400.limits.MAX_STORED_PLAN_BYTES`); without (something is
    already refused, nothing will be written), the rows carry no body and
    serve only to find numbers given twice across batches.

    Cost: O(batch); picklable in and out, so a worker process can run it.
    """
    settings = settings if settings is not None else _worker_settings
    refused: list[PlanError] = []
    good: dict[str, tuple[str, NumberPlan]] = {}
    for where, raw in batch:
        try:
            if isinstance(raw, PlanError):
                raise raw
            if isinstance(raw, str):
                raw = _json_line(raw, where)
            plan = validate_number(raw, settings, source=where)
            if plan.number in good:
                raise PlanError(f"duplicate number (also {good[plan.number][0]})", source=where, number=plan.number)
        except PlanError as exc:
            refused.append(exc)
            continue
        good[plan.number] = (where, plan)
    if not write:
        return [(where, plan.number, "") for where, plan in good.values()], refused
    _compile_each(settings, good, refused)
    rows = []
    for where, plan in good.values():
        # One plan's tree at a time, dumped at once: the whole batch's trees alive together
        # (~20 tracked containers a plan) made the collector ~20% of a worker's time.
        text = _dump(_canonical(plan))
        # a character takes at most 4 bytes: encode only a text that might not fit
        if len(text) * 4 > limits.MAX_STORED_PLAN_BYTES and len(text.encode()) > limits.MAX_STORED_PLAN_BYTES:
            refused.append(PlanError(f"the plan takes {len(text.encode())} bytes stored; at most "
                                     f"{limits.MAX_STORED_PLAN_BYTES}", source=where, number=plan.number))
            continue
        rows.append((where, plan.number, text))
    return rows, refused


def _json_line(text: str, where: str) -> object:
    """A line's table: msgspec's decoder, and :func:`json.loads` (its error named) for what msgspec
    refuses, so the tree and the message are always json's (as :func:`_decoded`)."""
    try:
        return _json_tree(text)
    except ValueError as exc:
        raise PlanError(f"not JSON: {exc}", source=where) from None
    except RecursionError:
        raise PlanError("nested too deeply to be a plan", source=where) from None


def _compile_each(settings: PlanSet, good: dict[str, tuple[str, NumberPlan]], refused: list[PlanError]) -> None:
    """Compile ``good`` together; a number no engine can compile is moved to ``refused``."""
    while good:
        try:
            compile_check(attrs.evolve(settings, numbers=tuple(plan for _, plan in good.values())))
            return
        except PlanError as exc:
            if exc.number not in good:
                raise
            where, _ = good.pop(exc.number)
            refused.append(PlanError(exc.message, source=where, number=exc.number, rule=exc.rule, field=exc.field))


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _valid(check) -> bool:
    try:
        check()
    except PlanError:
        return False
    return True


def _canonical(plan: NumberPlan) -> dict:
    """The plan tree a store keeps: what :meth:`PlanSet.to_dict` gives for the number.  O(this plan)."""
    return dumped_plan(plan)


def _normal(number: str) -> str:
    try:
        return normalize(number)
    except NumberError:
        return str(number)


class _Unreadable(str):
    """A stored plan row that is not JSON (written behind the store's back): quarantined at load."""


_decoder = msgspec.json.Decoder()


def _decoded(body: str) -> Any:
    """A stored row's tree: msgspec's decoder (~2x :func:`json.loads`, a fifth of a cold start's
    time before), and :func:`json.loads` for what msgspec refuses (``NaN``, a lone surrogate),
    so the tree is always what ``json.loads`` gives; a row neither reads is ``_Unreadable``."""
    try:
        return _json_tree(body)
    except (ValueError, RecursionError):
        return _Unreadable(body[:60])


def _json_tree(text: str) -> Any:
    """``json.loads(text)``, by msgspec's decoder when it can (~2x faster, the same tree).

    What msgspec refuses goes to :func:`json.loads`, so the tree and the
    error are always json's: msgspec raises ``DecodeError`` for bad JSON,
    ``RecursionError`` past its nesting limit and ``UnicodeEncodeError``
    for a lone surrogate in the text, where json has its own answer.
    """
    try:
        return _decoder.decode(text)
    except (msgspec.DecodeError, ValueError, RecursionError):
        pass
    return json.loads(text)


_encoder = msgspec.json.Encoder(order="sorted")


def _dump(value: Any) -> str:
    """Compact JSON, keys sorted, UTF-8 kept: what stores keep (msgspec: ~6x json.dumps for a plan)."""
    try:
        return _encoder.encode(value).decode()
    except (TypeError, OverflowError, msgspec.EncodeError):  # not a plain tree: as json would
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


# -- JSON Lines ------------------------------------------------------------------------------------------

JSONL_EXTENSIONS = (".jsonl", ".ndjson")


def read_jsonl(path: str | os.PathLike[str]) -> tuple[dict, Iterator[tuple[str, object]]]:
    """The settings and the number tables of a JSON Lines plan file, streamed.

    Each non-blank line is one number's table; the first may instead be
    ``{"settings": {...}}`` (the top-level blacklist, prompts, calendar,
    segments).  A line that is not JSON, or longer than
    :data:`tel400.limits.MAX_FILE_BYTES`, is given as a :class:`PlanError`
    naming its line, in place of its table.  The numbers' lines are given
    as text (JSON decoded by :meth:`WritableStore.import_numbers`, in its
    workers).

    Raises:
        PlanError: the file cannot be opened, or its settings line is not a table.
    """
    source = os.fspath(path)
    try:
        fh = open(source, encoding="utf-8-sig", newline="\n")
    except OSError as exc:
        raise PlanError(f"cannot read plan file: {exc.strerror}", source=source) from None
    lines = _numbered_lines(fh, source)
    settings: dict = {}
    first = next(lines, None)
    head = _first_table(first)
    if isinstance(head, dict) and "settings" in head and "number" not in head:
        settings = head["settings"]
        if not isinstance(settings, dict):
            fh.close()
            raise PlanError("expected the settings as a table", source=first[0], field="settings")
        first = None

    def numbers():
        with fh:
            if first is not None:
                yield first
            yield from lines

    return settings, numbers()


def _first_table(first: tuple[str, object] | None) -> object:
    """The first line's table, if it is one (a line that is not JSON is reported with the numbers)."""
    if first is None or not isinstance(first[1], str):
        return None
    try:
        return _json_line(first[1], first[0])
    except PlanError:
        return None


def _numbered_lines(fh: IO[str], source: str) -> Iterator[tuple[str, object]]:
    """(where, line text) of each non-blank line; a PlanError for one that cannot be read."""
    limit = limits.MAX_FILE_BYTES
    for lineno in itertools.count(1):
        try:
            line = fh.readline(limit + 1)
        except UnicodeDecodeError as exc:
            yield f"{source} line {lineno}", PlanError(f"not UTF-8 text (byte {exc.start})", source=f"{source} line {lineno}")
            return
        if not line:
            return
        where = f"{source} line {lineno}"
        if len(line) > limit:
            while line and not line.endswith("\n"):  # skip the rest of the overlong line
                line = fh.readline(limit)
            yield where, PlanError(f"line longer than {limit} characters", source=where)
            continue
        if line.strip():
            yield where, line


def import_jsonl(store: WritableStore, path: str | os.PathLike[str], *, actor: str = "unknown",
                 workers: int = 1) -> int:
    """Replace ``store``'s plans with a JSON Lines file's (:func:`read_jsonl`); all or nothing.

    Returns how many numbers were written; raises one :class:`PlanError`
    naming every refused line (see :meth:`WritableStore.import_numbers`).
    """
    source = os.fspath(path)
    settings, numbers = read_jsonl(source)
    return store.import_numbers(settings, numbers, actor=actor, source=source,
                                base_dir=os.path.dirname(os.path.abspath(source)), workers=workers)


# -- SQLite ----------------------------------------------------------------------------------------------


def create_private(path: str | os.PathLike[str]) -> None:
    """Make the empty file ``path`` readable and writable by its owner only (0600), unless it exists.

    SQLite would make a new database with the process's umask (often 0644:
    anyone on the host reads it); it keeps the mode of the file it finds,
    and gives its -wal and -shm files the same.  ``":memory:"`` is left alone.
    """
    if os.fspath(path) == ":memory:":
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


class SqliteStore(WritableStore):
    """Plans in an SQLite database (``sqlite:///path``); safe for many processes.

    Each ``plans`` row carries the version that last wrote it and each
    deleted number leaves a tombstone in ``deleted``; triggers stamp rows
    written by hand or by an older tel400 (which bumps ``meta.version`` at
    the end of its transaction, as this one does), so their changes are
    named too.
    """

    _TABLES = (
        "CREATE TABLE IF NOT EXISTS plans (number TEXT PRIMARY KEY, body TEXT NOT NULL, updated_at REAL NOT NULL, "
        "updated_by TEXT NOT NULL, version INTEGER NOT NULL DEFAULT -1)",
        "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, body TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, "
        "actor TEXT NOT NULL, action TEXT NOT NULL, number TEXT, before TEXT, after TEXT)",
        "CREATE TABLE IF NOT EXISTS deleted (number TEXT PRIMARY KEY, version INTEGER NOT NULL)",
        # each number's audit trimmed by its own entries (AUDIT_PER_NUMBER), its history read by number
        "CREATE INDEX IF NOT EXISTS audit_number ON audit (number, id)",
    )
    #: The version a transaction's changes get: the one its final bump makes.
    _NEXT = "(SELECT value + 1 FROM meta WHERE key = 'version')"
    _DELETE_TRIGGER = (
        "CREATE TRIGGER IF NOT EXISTS plans_deleted AFTER DELETE ON plans BEGIN "
        f"INSERT OR REPLACE INTO deleted (number, version) VALUES (OLD.number, {_NEXT}); END"
    )
    _LOG = (
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('version', 0)",
        # An older database: everything before the change log is "the settings changed".
        "INSERT OR IGNORE INTO meta (key, value) SELECT 'settings_version', value FROM meta WHERE key = 'version'",
        "CREATE INDEX IF NOT EXISTS plans_by_version ON plans (version)",
        "CREATE INDEX IF NOT EXISTS deleted_by_version ON deleted (version)",
        "CREATE TRIGGER IF NOT EXISTS plans_inserted AFTER INSERT ON plans WHEN NEW.version = -1 BEGIN "
        f"UPDATE plans SET version = {_NEXT} WHERE number = NEW.number; END",
        "CREATE TRIGGER IF NOT EXISTS plans_updated AFTER UPDATE OF body ON plans WHEN NEW.version = OLD.version "
        f"BEGIN UPDATE plans SET version = {_NEXT} WHERE number = NEW.number; END",
        _DELETE_TRIGGER,
    )

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        """Open (or, with ``create``, make) the database at ``path``.

        A database written by a tel400 without the change log gets its
        columns, table and triggers here (readers at an older version are
        told to read everything once).

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
                create_private(self.path)  # PIN hashes live here
            if not self._schema_current():  # a read: opening never waits behind a long import
                self._transaction(self._migrate, bump=False, wrap=False)
        except (OSError, sqlite3.Error) as exc:
            raise BackendError(f"{self.url}: cannot open the database: {exc}") from None

    def _schema_current(self) -> bool:
        """Whether the tables, the change log's column, row, triggers and indexes are all there."""
        db = self._connect()
        names = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger', 'index')")}
        wanted = {"plans", "settings", "meta", "audit", "audit_number", "deleted", "plans_inserted", "plans_updated", "plans_deleted",
                  "plans_by_version", "deleted_by_version"}
        return wanted <= names and bool(db.execute("SELECT 1 FROM meta WHERE key = 'settings_version'").fetchone())

    def _migrate(self, db: sqlite3.Connection) -> None:
        for statement in self._TABLES:
            db.execute(statement)
        columns = {row[1] for row in db.execute("PRAGMA table_info(plans)")}
        if "version" not in columns:  # written before the change log: every row predates it
            db.execute("ALTER TABLE plans ADD COLUMN version INTEGER NOT NULL DEFAULT -1")
            db.execute("UPDATE plans SET version = 0")
        for statement in self._LOG:
            db.execute(statement)

    def _connect(self) -> sqlite3.Connection:
        # One connection per thread and process (a connection is not fork-safe).
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            db = sqlite3.connect(self.path, timeout=5, isolation_level=None, check_same_thread=True)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
            self._local.db, self._local.pid = db, os.getpid()
        return db

    def _read(self, query: str, params: tuple = ()) -> list:
        try:
            return self._connect().execute(query, params).fetchall()
        except sqlite3.Error as exc:
            raise BackendError(f"{self.url}: {exc}") from None

    def version(self) -> Hashable:
        rows = self._read("SELECT value FROM meta WHERE key = 'version'")
        return rows[0][0] if rows else 0

    def changes_since(self, version: Hashable | None) -> Changes:
        """The numbers stamped or deleted after ``version``, in one read transaction.

        ``everything`` when ``version`` is ``None`` or not one of this
        store's, older than :data:`tel400.limits.CHANGE_LOG_VERSIONS`
        versions, or older than the last change of the settings.

        Cost: two indexed range reads, O(numbers changed).
        """
        db = self._connect()
        try:
            db.execute("BEGIN")
            meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('version', 'settings_version')"))
            current, settings_version = meta.get("version", 0), meta.get("settings_version", 0)
            if _behind_the_log(version, current, settings_version):
                numbers = None
            elif version == current:
                numbers = frozenset()
            else:
                numbers = frozenset(n for (n,) in db.execute(
                    "SELECT number FROM plans WHERE version > ? UNION SELECT number FROM deleted WHERE version > ?",
                    (version, version)))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise BackendError(f"{self.url}: {exc}") from None
        return Changes(current, everything=True) if numbers is None else Changes(current, numbers)

    def _settings_raw(self) -> dict:
        return {k: json.loads(v) for k, v in self._read("SELECT key, body FROM settings")}

    def _get_raw(self, number: str) -> str | None:
        rows = self._read("SELECT body FROM plans WHERE number = ?", (number,))
        return rows[0][0] if rows else None

    def _raw_batches(self, batch: int, *, distinct: bool = True) -> Iterator[list[tuple[str, str]]]:
        # Keyset pages (each number once, whatever ``distinct`` says): each a short read, none holding a transaction between batches.
        after = ""
        while rows := self._read("SELECT number, body FROM plans WHERE number > ? ORDER BY number LIMIT ?",
                                 (after, batch)):
            yield rows
            after = rows[-1][0]

    def count(self) -> int:
        return self._read("SELECT COUNT(*) FROM plans")[0][0]

    def _transaction(self, work, *, bump: bool = True, wrap: bool = True):
        """Run ``work(db)`` in one write transaction; bump the version (and trim the log) at its end."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            result = work(db)
            if bump:
                db.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
                db.execute("DELETE FROM deleted WHERE version <= (SELECT value FROM meta WHERE key = 'version') - ?",
                           (limits.CHANGE_LOG_VERSIONS,))
            db.execute("COMMIT")
            return result
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if wrap and isinstance(exc, sqlite3.Error):
                raise BackendError(f"{self.url}: {exc}") from None
            raise

    def _audit(self, db, actor, action, number, before, after) -> None:
        db.execute(
            "INSERT INTO audit (at, actor, action, number, before, after) VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), actor, action, number, None if before is None else _dump(_audited(before)),
             None if after is None else _dump(_audited(after))),
        )
        # the number's own oldest entries go, never another's (audit_number: an index walk of AUDIT_PER_NUMBER)
        db.execute("DELETE FROM audit WHERE number IS ? AND id <= (SELECT id FROM audit WHERE number IS ? "
                   "ORDER BY id DESC LIMIT 1 OFFSET ?)", (number, number, AUDIT_PER_NUMBER))

    def _write_number(self, number, plan, *, actor, action, before) -> None:
        def work(db):
            if plan is None:
                db.execute("DELETE FROM plans WHERE number = ?", (number,))  # the trigger leaves a tombstone
            else:
                db.execute(
                    "INSERT INTO plans (number, body, updated_at, updated_by, version) "
                    f"VALUES (?, ?, ?, ?, {self._NEXT}) "
                    "ON CONFLICT(number) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at, "
                    "updated_by = excluded.updated_by, version = excluded.version",
                    (number, _dump(plan), time.time(), actor),
                )
            self._audit(db, actor, action, number, before, plan)

        self._transaction(work)

    def _write_settings(self, settings, *, actor, before) -> None:
        def work(db):
            self._store_settings(db, settings)
            self._audit(db, actor, "settings", None, before, settings)

        self._transaction(work)

    def _store_settings(self, db, settings) -> None:
        db.execute("DELETE FROM settings")
        db.executemany("INSERT INTO settings (key, body) VALUES (?, ?)", [(k, _dump(v)) for k, v in settings.items()])
        db.execute(f"UPDATE meta SET value = {self._NEXT} WHERE key = 'settings_version'")

    def _replace(self, settings, rows, problems, *, actor, summary) -> int:
        def work(db):
            # Every old row goes at once: no tombstones (the settings version tells readers to reload).
            db.execute("DROP TRIGGER IF EXISTS plans_deleted")
            db.execute("DELETE FROM plans")
            db.execute(self._DELETE_TRIGGER)
            db.execute("DELETE FROM deleted")
            self._store_settings(db, settings)
            version = db.execute(f"SELECT {self._NEXT}").fetchone()[0]
            now, count = time.time(), 0
            for batch in rows:
                fresh = self._not_stored(db, batch, problems)
                db.executemany("INSERT INTO plans (number, body, updated_at, updated_by, version) VALUES (?, ?, ?, ?, ?)",
                               [(number, body, now, actor, version) for _, number, body in fresh])
                count += len(fresh)
            if problems.count:
                raise _Refused()
            self._audit(db, actor, "replace_all", None, None, {**summary, "numbers": summary["numbers"] or count})
            return count

        try:
            return self._transaction(work)
        except _Refused:
            return 0

    @staticmethod
    def _not_stored(db, batch, problems) -> list:
        """The rows of ``batch`` whose number an earlier batch did not already write (those go to ``problems``)."""
        if not batch:
            return batch
        stored = set()
        for start in range(0, len(batch), 500):
            part = [number for _, number, _ in batch[start:start + 500]]
            marks = ",".join("?" * len(part))
            stored.update(n for (n,) in db.execute(f"SELECT number FROM plans WHERE number IN ({marks})", part))
        if not stored:
            return batch
        for where, number, _ in batch:
            if number in stored:
                problems.add(PlanError("duplicate number (also an earlier line)", source=where, number=number))
        return [row for row in batch if row[1] not in stored]

    def audit(self, number: str | None = None, limit: int = 100) -> list[dict]:
        query = "SELECT at, actor, action, number, before, after FROM audit"
        params: tuple = ()
        if number is not None:
            query += " WHERE number = ?"
            params = (_normal(number),)
        query += " ORDER BY id DESC LIMIT ?"
        rows = self._read(query, params + (min(limit, AUDIT_LIMIT),))
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


class _Refused(Exception):
    """An import found a problem: roll its transaction back."""


def _behind_the_log(version, current: int, settings_version: int) -> bool:
    """Whether a reader at ``version`` must read everything again (see :meth:`PlanStore.changes_since`)."""
    if not isinstance(version, int) or isinstance(version, bool):
        return True  # never read, or a version of another kind of store
    return version > current or version < settings_version or version < current - limits.CHANGE_LOG_VERSIONS


# -- Redis -----------------------------------------------------------------------------------------------

#: One change, atomically: bump the version, apply, log the number (or the
#: settings), trim the log and the audit list.  Every key is under the store's
#: hash tag, so on a Redis Cluster it runs on one slot.
_COMMIT = """
local version = redis.call('INCR', KEYS[1])
local mode = ARGV[1]
if mode == 'put' then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[3], version, ARGV[2])
elseif mode == 'delete' then
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('ZADD', KEYS[3], version, ARGV[2])
else
  redis.call('SET', KEYS[4], ARGV[3])
  redis.call('SET', KEYS[5], version)
  redis.call('DEL', KEYS[3])
  if mode == 'replace' then
    if redis.call('EXISTS', KEYS[7]) == 1 then
      redis.call('RENAME', KEYS[7], KEYS[2])
      redis.call('PERSIST', KEYS[2])
    else
      redis.call('DEL', KEYS[2])
    end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', version - tonumber(ARGV[5]))
redis.call('LPUSH', KEYS[6], ARGV[4])
redis.call('LTRIM', KEYS[6], 0, tonumber(ARGV[6]) - 1)
redis.call('LPUSH', KEYS[8], ARGV[4])
redis.call('LTRIM', KEYS[8], 0, tonumber(ARGV[7]) - 1)
return version
"""

#: Adopt a store of the layout before the change log (copied into the
#: staging hash first), unless another process already did.
_ADOPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('DEL', KEYS[7])
  return 0
end
if redis.call('EXISTS', KEYS[7]) == 1 then
  redis.call('RENAME', KEYS[7], KEYS[2])
  redis.call('PERSIST', KEYS[2])
end
if ARGV[2] ~= '' then redis.call('SET', KEYS[4], ARGV[2]) end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[5], ARGV[1])
for i = 3, #ARGV do redis.call('RPUSH', KEYS[6], ARGV[i]) end
return 1
"""


class RedisStore(WritableStore):
    """Plans in Redis (``redis://host:port/db``), shared by every router of a cluster.

    Keys (all under the hash tag ``{plans}``, so one slot of a cluster):
    ``tel400:{plans}:numbers`` (hash number → plan JSON), ``:settings``,
    ``:version``, ``:settings_version``, ``:changes`` (sorted set number →
    version that last changed it, trimmed to the last
    :data:`tel400.limits.CHANGE_LOG_VERSIONS` versions), ``:audit`` (list).
    A store of the earlier layout (``tel400:plans:*``) is copied into these
    at first use; processes of the earlier version keep reading the old keys.
    """

    PREFIX = "tel400:{plans}"
    LEGACY_PREFIX = "tel400:plans"
    CHANNEL = "tel400:plans:changed"

    def __init__(self, url: str, *, timeout_ms: float = 2000) -> None:
        import redis

        self.url = url
        self._redis = redis
        try:  # a cluster URL asks its nodes for the slot map here
            self._client = open_redis(url, timeout_s=timeout_ms / 1000, decode_responses=True)
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            raise BackendError(f"{url}: {exc}") from None
        p = self.PREFIX
        self._numbers_key, self._settings_key = f"{p}:numbers", f"{p}:settings"
        self._version_key, self._audit_key = f"{p}:version", f"{p}:audit"
        self._changes_key, self._settings_version_key = f"{p}:changes", f"{p}:settings_version"
        self._commit_script = self._client.register_script(_COMMIT)
        self._adopt_script = self._client.register_script(_ADOPT)
        self._adopted = False

    def _keys(self, staging: str | None = None) -> list[str]:
        return [self._version_key, self._numbers_key, self._changes_key, self._settings_key,
                self._settings_version_key, self._audit_key, staging or f"{self.PREFIX}:import"]

    def _guard(self, fn, *args):
        try:
            if not self._adopted:
                self._adopt_legacy()
            return fn(*args)
        # RedisClusterException (no node serves a slot) is not a RedisError
        except (self._redis.RedisError, self._redis.exceptions.RedisClusterException) as exc:
            raise BackendError(f"{self.url}: {exc}") from None

    def _adopt_legacy(self) -> None:
        """Copy a store of the earlier layout into this one's keys, once (see the class)."""
        client, old = self._client, self.LEGACY_PREFIX
        if client.exists(self._version_key) or not client.exists(f"{old}:version"):
            self._adopted = True
            return
        staging = f"{self.PREFIX}:import:{uuid.uuid4().hex}"
        numbers = client.hgetall(f"{old}:numbers")
        if numbers:
            client.hset(staging, mapping=numbers)
            client.expire(staging, 3600)
        version = client.get(f"{old}:version") or "0"
        settings = client.get(f"{old}:settings") or ""
        audit = client.lrange(f"{old}:audit", 0, AUDIT_LIMIT - 1)
        self._adopt_script(keys=self._keys(staging), args=[version, settings, *audit])
        _log.info("plan_store_migrated", store=self.url, numbers=len(numbers), version=int(version))
        self._adopted = True

    def version(self) -> Hashable:
        return int(self._guard(self._client.get, self._version_key) or 0)

    def changes_since(self, version: Hashable | None) -> Changes:
        """The numbers the change log has after ``version`` (rules as :meth:`SqliteStore.changes_since`).

        Cost: one transaction of three reads, O(numbers changed).
        """
        def read():
            pipe = self._client.pipeline(transaction=True)
            pipe.get(self._version_key)
            pipe.get(self._settings_version_key)
            if isinstance(version, int) and not isinstance(version, bool):
                pipe.zrangebyscore(self._changes_key, f"({version}", "+inf")
            return pipe.execute()

        current, settings_version, *changed = self._guard(read)
        current, settings_version = int(current or 0), int(settings_version or 0)
        if _behind_the_log(version, current, settings_version):
            return Changes(current, everything=True)
        return Changes(current, frozenset(changed[0]) if version != current else frozenset())

    def _settings_raw(self) -> dict:
        raw = self._guard(self._client.get, self._settings_key)
        return json.loads(raw) if raw else {}

    def _get_raw(self, number: str) -> str | None:
        return self._guard(self._client.hget, self._numbers_key, number)

    def _raw_batches(self, batch: int, *, distinct: bool = True) -> Iterator[list[tuple[str, str]]]:
        # HSCAN may return a field twice (while the hash is rehashed): with
        # ``distinct``, each number is given once, at the cost of a set of them all.
        seen: set[str] | None = set() if distinct else None
        cursor = 0
        while True:
            cursor, page = self._guard(self._client.hscan, self._numbers_key, cursor, None, batch)
            rows = list(page.items())
            if seen is not None:
                rows = [(n, b) for n, b in rows if n not in seen]
                seen.update(n for n, _ in rows)
            yield from _chunks(rows, batch)  # a small hash comes whole, whatever COUNT asks
            if cursor == 0:
                return

    def count(self) -> int:
        return int(self._guard(self._client.hlen, self._numbers_key))

    def _commit(self, mode, number, body, *, actor, action, before, after, staging=None) -> int:
        entry = _dump({"at": time.time(), "actor": actor, "action": action, "number": number,
                       "before": _audited(before), "after": _audited(after)})

        def write():
            version = self._commit_script(
                keys=[*self._keys(staging), self._number_audit_key(number)],
                args=[mode, number or "", body, entry, limits.CHANGE_LOG_VERSIONS, AUDIT_LIMIT, AUDIT_PER_NUMBER])
            self._client.publish(self.CHANNEL, version)
            return version

        return self._guard(write)

    def _write_number(self, number, plan, *, actor, action, before) -> None:
        self._commit("delete" if plan is None else "put", number, "" if plan is None else _dump(plan),
                     actor=actor, action=action, before=before, after=plan)

    def _write_settings(self, settings, *, actor, before) -> None:
        self._commit("settings", None, _dump(settings), actor=actor, action="settings", before=before, after=settings)

    def _replace(self, settings, rows, problems, *, actor, summary) -> int:
        """Stage the numbers in a hash of their own (HSETNX finds a number given twice), then swap it in."""
        staging = f"{self.PREFIX}:import:{uuid.uuid4().hex}"

        def stage(batch):
            pipe = self._client.pipeline(transaction=False)
            for _, number, body in batch:
                pipe.hsetnx(staging, number, body)
            pipe.expire(staging, 3600)  # an import that dies leaves nothing for long
            return pipe.execute()[:-1]

        count = 0
        try:
            for batch in rows:
                for (where, number, _), fresh in zip(batch, self._guard(stage, batch)):
                    if fresh:
                        count += 1
                    else:
                        problems.add(PlanError("duplicate number (also an earlier line)", source=where, number=number))
            if problems.count:
                return 0
            self._commit("replace", None, _dump(settings), actor=actor, action="replace_all", before=None,
                         after={**summary, "numbers": summary["numbers"] or count}, staging=staging)
            return count
        finally:
            self._guard(self._client.delete, staging)

    def _number_audit_key(self, number: str | None) -> str:
        """The list of one number's audit entries (``-`` for the settings and imports)."""
        return f"{self._audit_key}:{number or '-'}"

    def audit(self, number: str | None = None, limit: int = 100) -> list[dict]:
        if number is None:
            raw = self._guard(self._client.lrange, self._audit_key, 0, min(limit, AUDIT_LIMIT) - 1)
            return [json.loads(e) for e in raw]
        wanted = _normal(number)
        raw = self._guard(self._client.lrange, self._number_audit_key(wanted), 0, min(limit, AUDIT_LIMIT) - 1)
        if len(raw) < min(limit, AUDIT_PER_NUMBER):
            # not full: entries written before the per-number lists may be in the store-wide one only
            known = set(raw)
            older = [e for e in self._guard(self._client.lrange, self._audit_key, 0, AUDIT_LIMIT - 1)
                     if e not in known and json.loads(e)["number"] == wanted]
            raw = raw + older
        entries = sorted((json.loads(e) for e in raw), key=lambda e: e["at"], reverse=True)
        return entries[:min(limit, AUDIT_PER_NUMBER)]

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
