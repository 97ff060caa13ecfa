"""Picks the implementation of the hot path.

This is the only module that decides which implementation runs; everything
else imports the hot-path pieces from here.  Today only the plain-Python
reference exists; the Cython twins in ``_fast/`` will be chosen here (with
``TEL400_NO_EXTENSIONS=1`` forcing the reference).
"""

from __future__ import annotations

from ._engine_py import Engine, Shared
from ._numbers_py import national_key, normalize, normalize_or_none

#: ``"cython"`` when the compiled hot path is in use, else ``"python"``.
IMPLEMENTATION = "python"

__all__ = ["Engine", "IMPLEMENTATION", "Shared", "national_key", "normalize", "normalize_or_none"]
