"""Every example plan loads, and each shows the feature it is named after."""

from __future__ import annotations

from collections import Counter

import pytest

import tel400

from .conftest import EXAMPLES, at

ALL = sorted(EXAMPLES.glob("*.toml"))


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_example_loads_and_round_trips(path):
    plans = tel400.load_plans(path)
    assert plans.numbers
    assert tel400.PlanSet.from_dict(plans.to_dict()) == plans


@pytest.fixture
def router(make_router):
    return lambda name: make_router(tel400.load_plans(EXAMPLES / name))


def test_province_example(router):
    r = router("province.toml")
    assert r.route("4001012345", "13901012345").targets == ("13901010001",)
    assert r.route("4001012345", "021 6123 4567").targets == ("02161234567",)
    assert r.route("4001012345", "020 8765 4321").targets == ("02087654321",)
    assert r.route("4001012345", "13902001234").targets == ("4008000000",)  # Tianjin: head office


def test_time_slots_example(router):
    r = router("time_slots.toml")
    assert r.route("4001012345", "13901012345", at=at(2026, 11, 24, 8)).targets == ("13901010001",)
    assert r.route("4001012345", "13901012345", at=at(2026, 11, 24, 12)).targets == ("13901010002",)
    assert r.route("4001012345", "13901012345", at=at(2026, 11, 24, 20)).prompt == "closed"
    assert r.route("4001012346", "13901012345", at=at(2027, 1, 2, 3)).rule == "new-year-hotline"
    assert r.route("4001012346", "13901012345", at=at(2026, 10, 10, 10)).rule == "office"  # 调休 Saturday
    assert r.route("4001012346", "13901012345", at=at(2026, 11, 28, 10)).rule == "weekend-desk"


def test_split_example_exact_30_70(router):
    r = router("split.toml")
    picks = Counter(r.route("4001012345", "13901012345").targets[0] for _ in range(10))
    assert picks == {"02150001000": 3, "02150002000": 7}


def test_caps_example(router):
    r = router("caps.toml")
    reasons = [r.route("4001012345", "13901012345", at=at(2026, 11, 24, 10)) for _ in range(4)]
    assert [d.reason for d in reasons] == ["ok", "ok", "ok", "cap_exceeded"]
    assert reasons[-1].prompt == "too_many_calls"


def test_blacklist_example(router):
    r = router("blacklist.toml")
    for caller in ("13800000000", "13900000000", "17109876543", "0571 8888 8888", "anonymous"):
        assert r.route("4001012345", caller).reason == "blacklisted", caller
    assert r.route("4001012345", "13901012345").reason == "ok"


def test_pin_example(router):
    r = router("pin.toml")
    assert r.route("4001012345", "13901012345").action == "collect_pin"
    assert r.route("4001012345", "13901012345", pin="1234").action == "bridge"


def test_calendar_example(router):
    r = router("calendar.toml")
    assert r.route("4001012345", "13901012345", at=at(2026, 12, 24, 10)).reason == "closed"
    assert r.route("4001012345", "13901012345", at=at(2026, 12, 23, 10)).reason == "ok"
    assert r.route("4001012345", "13901012345", at=at(2027, 1, 1, 10)).reason == "closed"
