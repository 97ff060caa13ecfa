"""Shared fixtures.

Tests build routers through ``make_router`` and plans through ``plans_from``
so that one place decides which implementation runs (the compiled twin joins
the parametrisation when it exists).
"""

from __future__ import annotations

import datetime as dt
import pathlib
import textwrap
import zoneinfo

import pytest

import tel400

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")


def at(year, month, day, hour=10, minute=0, tz=SHANGHAI) -> dt.datetime:
    """A wall-clock time in Shanghai (or ``tz``)."""
    return dt.datetime(year, month, day, hour, minute, tzinfo=tz)


@pytest.fixture
def make_router():
    def make(plans, counters=None, **kwargs):
        if isinstance(plans, (dict, str)):
            plans = plans_from(plans)
        return tel400.Router(plans, counters, **kwargs)

    return make


def plans_from(spec) -> tel400.PlanSet:
    """A PlanSet from a dict or from TOML text (dedented)."""
    if isinstance(spec, str):
        return tel400.loads_plans(textwrap.dedent(spec), "toml", source="test.toml")
    return tel400.PlanSet.from_dict(spec, source="test")


def one_number(**fields) -> dict:
    """A plan tree with a single number 4001012345 and the given fields."""
    return {"numbers": [{"number": "4001012345", **fields}]}
