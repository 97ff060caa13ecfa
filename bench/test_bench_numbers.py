"""normalize() and locate(), beside phonenumbers, the peer a user would otherwise pick."""

from __future__ import annotations

import phonenumbers
import pytest
from phonenumbers import geocoder

import tel400
from tel400 import _impl

from _inputs import BATCH, callers

IMPLS = list(_impl.ENGINES)


def written_forms():
    return [f"+86 {c[:3]}-{c[3:7]}-{c[7:]}" if c[0] == "1" else f"+86 {c[1:]}" for c in callers()]


@pytest.mark.parametrize("impl", IMPLS)
def test_normalize(benchmark, impl):
    normalize = _impl.ENGINES[impl].normalize
    sample = written_forms()

    def batch():
        for raw in sample:
            normalize(raw)

    benchmark.extra_info.update(impl=impl, calls=BATCH)
    benchmark(batch)


def test_peer_phonenumbers_parse(benchmark):
    sample = written_forms()

    def batch():
        for raw in sample:
            phonenumbers.parse(raw)

    benchmark.extra_info.update(impl="phonenumbers", calls=BATCH)
    benchmark(batch)


@pytest.mark.parametrize("impl", IMPLS)
def test_locate(benchmark, impl):
    """Province of normalised callers through the full built-in table."""
    table = tel400.default_segments()
    lookup = _impl.ENGINES[impl].IntervalLookup(table.starts, table.codes)
    index_of_number = lookup.index_of_number
    codes = tel400.provinces.CODES
    sample = callers()

    def batch():
        for number in sample:
            codes[index_of_number(number)]

    benchmark.extra_info.update(impl=impl, calls=BATCH)
    benchmark(batch)


def test_locate_public_function(benchmark):
    """tel400.locate() as users call it (active implementation)."""
    locate = tel400.locate
    sample = callers()

    def batch():
        for number in sample:
            locate(number)

    benchmark.extra_info.update(impl=tel400.IMPLEMENTATION, calls=BATCH)
    benchmark(batch)


def test_peer_phonenumbers_geocoder_preparsed(benchmark):
    """libphonenumber's geocoder on numbers parsed in advance (the parse is not timed)."""
    parsed = [phonenumbers.parse("+86" + (c[1:] if c.startswith("0") else c)) for c in callers()]
    describe = geocoder.description_for_number

    def batch():
        for number in parsed:
            describe(number, "zh")

    benchmark.extra_info.update(impl="phonenumbers", calls=BATCH)
    benchmark(batch)
