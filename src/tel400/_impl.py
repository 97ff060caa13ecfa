"""Picks the implementation of the hot path: compiled (``_fast``) or reference.

This is the only module that decides; everything else imports the hot-path
pieces from here.  ``TEL400_NO_EXTENSIONS=1`` or a non-CPython interpreter
forces the reference; compiled modules that fail to import fall back to it
with one warning.  Both stay importable side by side (:data:`ENGINES`), so
the test suite can run every test against each.
"""

from __future__ import annotations

import importlib
import os
import platform
import warnings

from . import _engine_py, _numbers_py, counters, segments
from ._lookup_py import IntervalLookup as _PyLookup
from .counters import MemoryCounters as _PyMemoryCounters


class Implementation:
    """The hot-path pieces of one implementation."""

    def __init__(self, name, engine, memory_counters, lookup, normalize, normalize_or_none, national_key):
        self.name = name
        self.Engine = engine
        self.MemoryCounters = memory_counters
        self.IntervalLookup = lookup
        self.normalize = normalize
        self.normalize_or_none = normalize_or_none
        self.national_key = national_key

    def __repr__(self) -> str:
        return f"<tel400 implementation {self.name}>"


PYTHON = Implementation(
    "python", _engine_py.Engine, _PyMemoryCounters, _PyLookup,
    _numbers_py.normalize, _numbers_py.normalize_or_none, _numbers_py.national_key,
)


def _load_compiled() -> Implementation | None:
    if os.environ.get("TEL400_NO_EXTENSIONS") or platform.python_implementation() != "CPython":
        return None
    try:
        from ._fast import _counters, _engine, _numbers, _segments, _shm  # noqa: F401
    except ImportError as exc:
        warnings.warn(
            f"tel400: the compiled hot path is not available ({exc}); using the pure-Python reference",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return Implementation(
        "cython", _engine.Engine, _counters.MemoryCounters, _segments.IntervalLookup,
        _numbers.normalize, _numbers.normalize_or_none, _numbers.national_key,
    )


CYTHON = _load_compiled()

#: Every implementation importable here, by name.
ENGINES = {impl.name: impl for impl in (PYTHON, CYTHON) if impl is not None}

ACTIVE = CYTHON or PYTHON

#: ``"cython"`` when the compiled hot path is in use, else ``"python"``.
IMPLEMENTATION = ACTIVE.name

normalize = ACTIVE.normalize
normalize_or_none = ACTIVE.normalize_or_none
national_key = ACTIVE.national_key
IntervalLookup = ACTIVE.IntervalLookup
MemoryCounters = ACTIVE.MemoryCounters
Engine = ACTIVE.Engine

# The low-level modules default to the reference; the selector tells them
# the active implementation (they never import this module).
counters.use_memory_class(MemoryCounters)
segments.use_lookup_class(IntervalLookup)


def get(name: str | None) -> Implementation:
    """An implementation by name (``None``: the active one)."""
    if name is None:
        return ACTIVE
    try:
        return ENGINES[name]
    except KeyError:
        raise ValueError(
            f"implementation {name!r} is not available here; have {', '.join(ENGINES)}"
        ) from None


def compiled_twin(module: str, attribute: str | None, reference, what: str):
    """The compiled twin ``tel400._fast.<module>`` (or its ``attribute``) when the compiled hot
    path is in use, else ``reference``; a twin that fails to import (an older build, classes it
    does not know) gives the reference with one warning.  For twins that import the module they
    twin, and so are looked up on first use rather than here."""
    if IMPLEMENTATION != "cython":
        return reference
    try:
        twin = importlib.import_module(f"tel400._fast.{module}")
    except ImportError as exc:
        warnings.warn(f"tel400: {what} is not available ({exc}); using the reference", RuntimeWarning, stacklevel=3)
        return reference
    return twin if attribute is None else getattr(twin, attribute)

