"""The week view (tel400.simulate.week_grid, ``tel400 simulate --week``) and Router.cap_usage."""

from __future__ import annotations

import datetime as _dt
import json
import zoneinfo
from decimal import Decimal

import pytest

import tel400
from tel400 import provinces
from tel400.cli import main
from tel400.compiler import cap_key
from tel400.simulate import MAX_GRID_DAYS, representative_caller, week_grid
from tel400.workdays import OfficialCalendar

from .conftest import EXAMPLES

MANUAL = str(EXAMPLES / "manual.toml")
NUMBER = "4001012345"
SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")


@pytest.fixture(scope="module")
def plans():
    return tel400.load_plans(MANUAL)


def test_grid_equals_explain_cell_by_cell(plans):
    grid = week_grid(plans, NUMBER, "北京", start=_dt.date(2026, 11, 23))
    router = tel400.Router(plans, seed=0)  # the same plan, the same seed: the same weighted picks
    caller = grid.caller
    assert len(grid.days) == 7 and all(len(day.cells) == 24 for day in grid.days)
    for day in grid.days:
        for hour, cell in enumerate(day.cells):
            at = _dt.datetime.combine(day.day, _dt.time(hour), SHANGHAI)
            assert cell.at == at
            decision = router.explain(NUMBER, caller, at=at)
            assert (cell.rule, cell.action, cell.reason) == (decision.rule, decision.action, decision.reason)
            assert cell.target == (decision.targets[0] if decision.targets else None)
    # the manual's plan: Beijing callers reach the Beijing line 08:00-19:59, nobody at night
    monday = grid.days[0]
    assert (monday.cells[9].rule, monday.cells[9].target) == ("beijing", "13901010001")
    assert monday.cells[3].action == "reject"


def test_grid_follows_the_province(plans):
    start = _dt.date(2026, 11, 23)
    shanghai = week_grid(plans, NUMBER, "Shanghai", start=start)
    assert shanghai.province == "CN-SH"
    assert shanghai.days[0].cells[9].rule == "shanghai"
    assert shanghai.rule_index("shanghai") == [r.name for r in plans.get(NUMBER).rules].index("shanghai")
    assert shanghai.rule_index(None) is None


def test_representative_caller_is_located_in_its_province(plans):
    router = tel400.Router(plans)
    for code in ("CN-BJ", "CN-GD", "CN-XZ", "CN-NM"):
        caller = representative_caller(router.prefixes, code)
        assert caller == representative_caller(router.prefixes, provinces.CHINESE_NAMES[code])
        assert router.explain(NUMBER, caller, at=_dt.datetime(2026, 11, 23, 3)).province == code
    with pytest.raises(ValueError, match="not a province"):
        representative_caller(router.prefixes, "Atlantis")


def test_holidays_and_adjusted_working_days_are_marked(plans):
    # National Day 2026: 1-7 October off; Sunday 20 September and Saturday 10 October are worked (调休)
    grid = week_grid(plans, NUMBER, "北京", start=_dt.date(2026, 9, 28), days=14)
    kinds = {day.day: day.kind for day in grid.days}
    assert kinds[_dt.date(2026, 9, 30)] == "workday"
    assert all(kinds[_dt.date(2026, 10, d)] == "holiday" for d in range(1, 8))
    assert kinds[_dt.date(2026, 10, 10)] == "adjusted_workday"
    assert grid.days[12].adjusted_workday and grid.days[3].holiday
    assert kinds[_dt.date(2026, 10, 11)] == "weekend"
    assert OfficialCalendar().day_kind(_dt.date(2026, 9, 20).toordinal()) == "adjusted_workday"


def test_the_plans_calendar_additions_count(plans):
    import attrs

    plan = plans.get(NUMBER)
    spec = attrs.evolve(plan.calendar, holidays=(_dt.date(2026, 11, 25),), workdays=(_dt.date(2026, 11, 29),))
    changed = attrs.evolve(plans, numbers=(attrs.evolve(plan, calendar=spec),))
    grid = week_grid(changed, NUMBER, "北京", start=_dt.date(2026, 11, 23))
    assert [d.kind for d in grid.days] == ["workday", "workday", "holiday", "workday", "workday", "weekend",
                                           "adjusted_workday"]


def test_building_a_grid_counts_nothing(plans):
    counters = tel400.MemoryCounters() if hasattr(tel400, "MemoryCounters") else None
    router = tel400.Router(plans, counters or "memory://")
    at = _dt.datetime(2026, 11, 23, 9, tzinfo=SHANGHAI)
    before = router.cap_usage(NUMBER, at=at)
    week_grid(router.plans, NUMBER, "北京", start=_dt.date(2026, 11, 23))
    assert router.cap_usage(NUMBER, at=at) == before
    assert [u.used for u in before] == [Decimal(0), Decimal(0)]


def test_grid_rejects_bad_requests(plans):
    start = _dt.date(2026, 11, 23)
    with pytest.raises(ValueError, match="has no plan"):
        week_grid(plans, "4009999999", "北京", start=start)
    with pytest.raises(ValueError, match="days"):
        week_grid(plans, NUMBER, "北京", start=start, days=MAX_GRID_DAYS + 1)
    with pytest.raises(ValueError, match="channel"):
        week_grid(plans, NUMBER, "北京", start=start, channel="fax")
    with pytest.raises(ValueError, match="province"):
        week_grid(plans, NUMBER, "nowhere", start=start)


def test_sms_grid_uses_the_sms_rule(plans):
    grid = week_grid(plans, NUMBER, "北京", start=_dt.date(2026, 11, 23), days=1, channel="sms")
    assert {cell.rule for cell in grid.days[0].cells} == {"sms-desk"}


def test_cli_week_json_is_the_grid(plans, capsys):
    assert main(["simulate", MANUAL, "--week", "--number", NUMBER, "--province", "CN-BJ",
                 "--start", "2026-09-28", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == week_grid(plans, NUMBER, "CN-BJ", start=_dt.date(2026, 9, 28)).as_dict()
    assert shown["days"][3]["kind"] == "holiday"


def test_cli_week_table_and_errors(capsys):
    assert main(["simulate", MANUAL, "--week", "--number", NUMBER, "--province", "Beijing",
                 "--start", "2026-09-28"]) == 0
    out = capsys.readouterr().out
    assert "2026-10-01 Thu 假" in out and "beijing>13901010001" in out
    assert main(["simulate", MANUAL, "--week", "--number", NUMBER]) == 2
    assert "--province" in capsys.readouterr().err
    assert main(["simulate", MANUAL, "--week", "--number", NUMBER, "--province", "Mars"]) == 2
    assert "Mars" in capsys.readouterr().err


# -- cap usage -----------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "shm"])
def test_cap_usage_reads_the_counters(plans, backend, tmp_path):
    url = "memory://" if backend == "memory" else f"shm://{tmp_path}/c?slots=1024"
    router = tel400.Router(plans, url)
    at = _dt.datetime(2026, 11, 23, 9, 30, tzinfo=SHANGHAI)
    caller = representative_caller(router.prefixes, "CN-BJ")
    for i in range(3):
        decision = router.route(NUMBER, caller, at=at, call_id=f"c{i}")
        assert decision.connects
    router.call_ended("c0", 125.0)  # 3 billed minutes, local (Beijing to Beijing) at 0.1
    usage = router.cap_usage(NUMBER, at=at)
    assert [(u.label, u.used, u.limit) for u in usage] == [
        ("calls/day/number", Decimal(3), Decimal(1000)),
        ("cost/month/number", Decimal("0.3"), Decimal(5000)),
    ]
    # the counter read is the one cap_key names
    plan = router.plan_of(NUMBER)
    assert router.counters.value(cap_key(NUMBER, plan.caps[0], 1), usage[0].period) == 3
    # the next day starts a new daily period; the month's cost stays
    tomorrow = router.cap_usage(NUMBER, at=at + _dt.timedelta(days=1))
    assert [u.used for u in tomorrow] == [Decimal(0), Decimal("0.3")]
    assert router.cap_usage("4009999999") == []
    router.counters.close()


def test_cap_usage_of_a_per_caller_cap_has_no_single_value():
    per_caller = tel400.PlanSet.from_dict({"numbers": [{
        "number": NUMBER, "rules": [{"name": "all", "targets": ["13901010001"]}],
        "caps": [{"metric": "calls", "per": "hour", "limit": 2, "scope": "caller"},
                 {"metric": "calls", "per": "hour", "limit": 5}],
    }]})
    router = tel400.Router(per_caller)
    at = _dt.datetime(2026, 11, 23, 9, 30, tzinfo=SHANGHAI)
    router.route(NUMBER, "13901012345", at=at)
    usage = router.cap_usage(NUMBER, at=at)
    assert [(u.label, u.used) for u in usage] == [("calls/hour/caller", None), ("calls/hour/number", Decimal(1))]
