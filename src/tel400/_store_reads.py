"""One-number and streamed reads of a plan store, for stores that lack them.

Routers and watchers read stores through these four functions: a store with
the method (``settings``, ``load_number``, ``iter_plans``, ``count``) is
asked directly; an older or third-party :class:`~tel400.stores.PlanStore`
with only ``version`` and ``load`` is served from one ``load()``.  The
fallbacks cost O(numbers) per call; the stores of this package answer in
O(one number) (``load_number``) and O(batch) per step (``iter_plans``).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import attrs

from .plans import NumberPlan, PlanSet, validate_number, validate_settings


#: A fallback load made for settings(), kept for the iter_plans() that follows
#: it in a streamed load, so that the store is read (and its bad numbers
#: logged) once.
_loaded: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def settings(store) -> PlanSet:
    """The store's validated top-level settings (no numbers)."""
    own = getattr(store, "settings", None)
    if own is not None:
        return own()
    snapshot = getattr(store, "_snapshot", None)  # SQLite and Redis stores: the settings row alone
    if snapshot is not None:
        return validate_settings(snapshot()[0], source=store.url)
    plans = _loaded[store] = store.load()
    return attrs.evolve(plans, numbers=())


def load_number(store, number: str) -> NumberPlan | None:
    """One number's validated plan, ``None`` if absent.

    Raises:
        PlanError: the stored plan is invalid.
    """
    own = getattr(store, "load_number", None)
    if own is not None:
        return own(number)
    get_number = getattr(store, "get_number", None)
    if get_number is not None:  # SQLite and Redis stores: one number's tree
        tree = get_number(number)
        return None if tree is None else validate_number(tree, settings(store), source=store.url)
    plans = store.load()
    if number in store.quarantined:
        from .exceptions import PlanError
        raise PlanError(store.quarantined[number], source=store.url, number=number)
    return plans.get(number)


def iter_plans(store, *, batch: int = 1000) -> Iterator[list[NumberPlan]]:
    """Every valid number in batches; invalid ones go to ``store.quarantined``."""
    own = getattr(store, "iter_plans", None)
    if own is not None:
        yield from own(batch=batch)
        return
    loaded = _loaded.pop(store, None)
    numbers = (loaded if loaded is not None else store.load()).numbers
    del loaded
    for start in range(0, len(numbers), batch):
        yield list(numbers[start:start + batch])


def count(store) -> int:
    """How many numbers the store holds (invalid ones included where the store can tell)."""
    own = getattr(store, "count", None)
    if own is not None:
        return own()
    numbers = getattr(store, "numbers", None)
    return len(numbers()) if numbers is not None else len(store.load().numbers)
