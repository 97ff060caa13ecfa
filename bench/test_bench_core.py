"""Route decisions, number normalisation and province lookup, beside the peer
a user would otherwise pick (phonenumbers' own parser and geocoder)."""

from __future__ import annotations

import datetime as dt
import pathlib
import random
import zoneinfo

import phonenumbers
import pytest
from phonenumbers import geocoder

import tel400

ROOT = pathlib.Path(__file__).resolve().parent.parent
MANUAL = ROOT / "examples" / "manual.toml"
TUESDAY_10 = dt.datetime(2026, 11, 24, 10, tzinfo=zoneinfo.ZoneInfo("Asia/Shanghai")).timestamp()


def callers(n=1000, seed=1):
    from tel400.simulate import CallerSampler

    sampler = CallerSampler(tel400.default_segments(), random.Random(seed))
    return [c for c in (sampler.caller() for _ in range(n * 2)) if c != "anonymous"][:n]


@pytest.fixture(scope="module")
def sample():
    return callers()


@pytest.fixture(scope="module")
def manual_router():
    plans = tel400.load_plans(MANUAL)
    # A cap high enough never to reject: the cost of counting, not of refusing.
    tree = plans.to_dict()
    tree["numbers"][0]["caps"][0]["limit"] = 10**12
    return tel400.Router(tel400.PlanSet.from_dict(tree), seed=1)


def test_route_manual_plan(benchmark, manual_router, sample):
    """A full decision: province, time slot, 30/70 split, blacklist, calls cap."""
    it = iter(sample * 1000)
    route = manual_router.route

    def one():
        return route("4001012345", next(it), TUESDAY_10)

    d = benchmark(one)
    assert d.action in ("bridge", "reject")


def test_normalize(benchmark, sample):
    written = ["+86 " + c[:3] + "-" + c[3:7] + "-" + c[7:] for c in sample]
    it = iter(written * 1000)
    benchmark(lambda: tel400.normalize(next(it)))


def test_locate(benchmark, sample):
    table = tel400.default_segments()
    it = iter(sample * 1000)
    benchmark(lambda: table.locate(next(it)))


def test_peer_phonenumbers_geocoder_preparsed(benchmark, sample):
    """The peer: libphonenumber's geocoder on numbers parsed in advance."""
    parsed = [phonenumbers.parse("+86" + (c[1:] if c.startswith("0") else c)) for c in sample]
    it = iter(parsed * 1000)
    benchmark(lambda: geocoder.description_for_number(next(it), "zh"))


def test_load_builtin_segments(benchmark):
    from tel400 import segments

    def load():
        segments._builtin.cache_clear()
        return tel400.PrefixTable.builtin()

    table = benchmark.pedantic(load, rounds=5, iterations=1)
    assert len(table) > 20000
