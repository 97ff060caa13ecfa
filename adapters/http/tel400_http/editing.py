"""Plan edits from the portal: read with a version, change, validate, store, route by it.

A version (``etag``) is the SHA-256 of the stored tree's canonical JSON.  A
form carries the version it was drawn from; a save whose version no longer
matches raises :class:`StaleEdit`, so two administrators editing one number
never silently overwrite each other.  The store validates every write
(:meth:`tel400.stores.WritableStore.put_number`): a bad plan raises
:class:`tel400.PlanError` unchanged, naming its field, and nothing is stored.

Every method blocks (SQLite or Redis, scrypt): call it with
``await asyncio.to_thread(...)``.
"""

from __future__ import annotations

import copy
import hashlib
import json

import tel400
from tel400.stores import WritableStore


class StaleEdit(Exception):
    """The plan changed since the form was drawn (its version is ``current``)."""

    def __init__(self, number: str, current: str) -> None:
        super().__init__(f"{number}'s plan changed since this page was loaded; reload it and make the change again")
        self.number = number
        self.current = current


class ReadOnlyPlans(Exception):
    """The service's plans come from a source it does not write (a plan file)."""


def etag(tree: dict | None) -> str:
    """The version of a stored tree: SHA-256 of its canonical JSON; ``""`` for no plan."""
    if tree is None:
        return ""
    canonical = json.dumps(tree, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class PlanEditor:
    """Edits one number's stored plan under ``service``'s write lock, then routes by it."""

    def __init__(self, service) -> None:
        self.service = service

    def _store(self) -> WritableStore:
        store = self.service.store
        if not isinstance(store, WritableStore):
            raise ReadOnlyPlans("the plans come from a file this service does not write; run tel400-http with "
                                "--plans sqlite:///… or redis://… to change them here")
        return store

    def get(self, number: str) -> tuple[dict | None, str]:
        """The stored tree of ``number`` (``None`` without a plan) and its version.

        With plans from a file the service does not write, the tree routed by
        (pages can show it; :meth:`change` raises :class:`ReadOnlyPlans`).
        """
        tree = self.service._plan_tree(tel400.normalize(number))
        return tree, etag(tree)

    def change(self, number: str, fn, *, actor: str, expect: str | None = None) -> dict:
        """Store ``fn(copy of the stored tree)`` as ``number``'s plan and route by it.

        Args:
            fn: takes a deep copy of the stored tree (``None`` when there is no
                plan yet) and returns the new tree.
            actor: who, for the audit (``company:4001012345``, ``operator:name``).
            expect: the version the caller's form was drawn from; ``None`` skips the check.

        Returns: the stored tree.

        Raises:
            StaleEdit: ``expect`` is given and the stored version differs.
            tel400.PlanError: the new tree is not a valid plan (nothing stored).
        """
        number = tel400.normalize(number)
        store = self._store()
        with self.service._write_lock:
            before = store.get_number(number)
            if expect is not None and etag(before) != expect:
                raise StaleEdit(number, etag(before))
            tree = fn(copy.deepcopy(before))
            tree = dict(tree)
            tree["number"] = number
            stored = store.put_number(tree, actor=actor)
            # the event first: the store has the change, and routing catching up (a watcher poll that
            # may fail) must not keep a new number's old company login alive
            if before is None:
                self.service._number_event(number, "created", actor)
            self.service._applied(number, stored)
            return store.get_number(number)

    def delete(self, number: str, *, actor: str) -> bool:
        """Delete ``number``'s plan and stop routing it; ``False`` when it had none.

        Tells the service's number listeners (``"deleted"``): the portal ends
        the company's login with it.
        """
        number = tel400.normalize(number)
        store = self._store()
        with self.service._write_lock:
            gone = store.delete_number(number, actor=actor)
            if gone:
                self.service._number_event(number, "deleted", actor)  # before routing catches up (see change)
                self.service._applied(number)
            return gone

    def put(self, number: str, tree: dict, *, actor: str, expect: str | None) -> dict:
        """Store ``tree`` as ``number``'s plan (see :meth:`change`)."""
        return self.change(number, lambda _before: tree, actor=actor, expect=expect)
