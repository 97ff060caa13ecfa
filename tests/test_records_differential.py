"""The rollups and the keyset listing against a naive recomputation from the rows.

Random records (two numbers in different time zones, callers that repeat,
unknown provinces, every kind of outcome) and their ends (in the same batch
as the decision, in a later batch, twice) are written through the writer's
own path in random batches; then the month report, the caller analysis, every
page of random filters and the CSV export must equal what a plain Python
filter / sort / sum of all the rows gives, and the caller analysis, once
October's caller rollups are pruned, what the rows of the months kept give.
"""

from __future__ import annotations

import collections
import csv
import datetime as dt
import io
import tempfile
import zoneinfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tel400_http.records import ACTIONS, CONNECTS, CallRecords, _minutes, _money

ZONES = {"4001012345": zoneinfo.ZoneInfo("Asia/Shanghai"), "4008888888": zoneinfo.ZoneInfo("America/New_York")}
OCT_20 = 1_792_454_400.0  # 2026-10-20 UTC: records run into December
CALLERS = ("13901010001", "13901010002", "13901010003", "02155550004", None)
PROVINCES = ("CN-BJ", "CN-GD", None)
TARGETS = ("t1", "t2", "t3")
OUTCOMES = (("bridge", "ok"), ("queue", "ok"), ("conference", "ok"), ("reject", "closed"),
            ("reject", "blacklisted"), ("collect_pin", "pin_required"))


class Decision:
    def __init__(self, call_id, number, caller, province, action, reason, target):
        self.call_id, self.number, self.caller, self.province = call_id, number, caller, province
        self.rule, self.action, self.reason, self.channel = "r", action, reason, "voice"
        self.targets = (target,) if target else ()


record_st = st.tuples(
    st.sampled_from(sorted(ZONES)), st.sampled_from(CALLERS), st.sampled_from(PROVINCES),
    st.sampled_from(OUTCOMES), st.sampled_from(TARGETS),
    st.floats(min_value=0, max_value=60 * 86400, allow_nan=False),  # seconds after OCT_20
)
end_st = st.tuples(st.integers(0, 10**6), st.integers(0, 900), st.sampled_from((None, "t1", "t9")),
                   st.integers(0, 3))  # (which record, seconds, answering target, how many batches later)


def write_all(records, decisions, ends, cuts):
    """Write decisions and ends as the writer would; returns the naive rows (id → dict)."""
    rows: dict[int, dict] = {}
    queue = []
    for i, (number, caller, province, (action, reason), target, offset) in enumerate(decisions):
        started = OCT_20 + offset
        d = Decision(f"c{i}", number, caller, province, action, reason, target)
        queue.append((i, ("d", d, started)))
    # Ends after their decision: the same batch, or a later one.
    for which, seconds, target, later in ends:
        i = which % len(decisions)
        cost = seconds * 1000 if decisions[i][3][0] in CONNECTS else None
        at = min(i + 1 + later * 3, len(queue))
        queue.insert(at, (None, ("e", f"c{i}", float(seconds), seconds, cost, target)))
    items = [item for _, item in queue]
    batches, start = [], 0
    for cut in sorted(set(cuts)) + [len(items)]:
        if start < cut <= len(items):
            batches.append(items[start:cut])
            start = cut
    next_id = 1
    by_call: dict[str, int] = {}
    for batch in batches:
        records._write(batch)
        for item in batch:  # the model: inserts first, then ends, per batch
            if item[0] == "d":
                _, d, started = item
                local = dt.datetime.fromtimestamp(started, ZONES[d.number])
                rows[next_id] = {
                    "id": next_id, "number": d.number, "caller": d.caller, "province": d.province,
                    "action": d.action, "reason": d.reason, "started": started,
                    "target": d.targets[0] if d.targets and d.action in CONNECTS else None,
                    "day": local.date().isoformat(), "hour": local.hour, "billed": None, "cost": None, "dur": None}
                by_call[d.call_id] = next_id
                next_id += 1
        for item in batch:
            if item[0] == "e":
                _, call_id, dur, billed, cost, target = item
                if call_id in by_call:
                    row = rows[by_call[call_id]]
                    row.update(dur=dur, billed=billed, cost=cost, target=target or row["target"])
    return rows


def naive_report(rows, number, month):
    mine = [r for r in rows.values() if r["number"] == number and r["day"][:7] == month]
    conn = sum(r["action"] in CONNECTS for r in mine)
    by_day = collections.defaultdict(list)
    for r in mine:
        by_day[r["day"]].append(r)
    by_hour = [{"hour": h, "calls": sum(r["hour"] == h for r in mine),
                "connected": sum(r["hour"] == h and r["action"] in CONNECTS for r in mine)} for h in range(24)]
    heat = [[0] * 24 for _ in range(7)]
    for r in mine:
        heat[dt.date.fromisoformat(r["day"]).weekday()][r["hour"]] += 1
    prov = collections.Counter(r["province"] or "" for r in mine)
    prov_conn = collections.Counter(r["province"] or "" for r in mine if r["action"] in CONNECTS)
    tgt = collections.defaultdict(lambda: [0, 0, 0])
    for r in mine:
        if r["target"] is not None:
            t = tgt[r["target"]]
            t[0] += 1
            t[1] += r["billed"] or 0
            t[2] += r["cost"] or 0
    reasons = collections.Counter((r["action"], r["reason"]) for r in mine)
    return {
        "number": number, "month": month, "calls": len(mine), "connected": conn,
        "minutes": _minutes(sum(r["billed"] or 0 for r in mine)), "cost": _money(sum(r["cost"] or 0 for r in mine)),
        "talk_minutes": round(sum(r["dur"] or 0 for r in mine) / 60, 2),
        "by_day": [{"day": day, "calls": len(rs), "connected": sum(r["action"] in CONNECTS for r in rs),
                    "minutes": _minutes(sum(r["billed"] or 0 for r in rs)),
                    "cost": _money(sum(r["cost"] or 0 for r in rs))} for day, rs in sorted(by_day.items())],
        "by_hour": by_hour, "heatmap": heat,
        "by_province": [{"province": p or "unknown", "calls": n, "connected": prov_conn[p]}
                        for p, n in sorted(prov.items(), key=lambda kv: (-kv[1], kv[0]))],
        "by_target": [{"target": t, "calls": v[0], "minutes": _minutes(v[1]), "cost": _money(v[2])}
                      for t, v in sorted(tgt.items(), key=lambda kv: (-kv[1][0], kv[0]))],
        "by_reason": [{"action": a, "reason": why, "calls": n}
                      for (a, why), n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))],
    }


def naive_callers(rows, number, month):
    mine = [r for r in rows.values() if r["number"] == number and r["caller"]]
    this = [r for r in mine if r["day"][:7] == month]
    calls = collections.Counter(r["caller"] for r in this)
    earlier = {r["caller"] for r in mine if r["day"][:7] < month}
    per_day = collections.Counter((r["caller"], r["day"]) for r in this)
    repeat = {caller for (caller, _), n in per_day.items() if n >= 2}
    province = {}
    for caller in calls:
        known = sorted(r["province"] for r in this if r["caller"] == caller and r["province"])
        province[caller] = known[0] if known else ""
    by_prov = collections.Counter(province.values())
    return {"number": number, "month": month, "callers": len(calls),
            "new_callers": len(set(calls) - earlier), "returning_callers": len(set(calls) & earlier),
            "repeat_within_day": len(repeat),
            "top_callers": sorted(calls.items(), key=lambda kv: (-kv[1], kv[0]))[:20],
            "by_province": [{"province": p or "unknown", "callers": n}
                            for p, n in sorted(by_prov.items(), key=lambda kv: (-kv[1], kv[0]))]}


filters_st = st.fixed_dictionaries({}, optional={
    "since_day": st.sampled_from(("2026-10-25", "2026-11-01", "2026-11-15")),
    "until_day": st.sampled_from(("2026-11-15", "2026-11-30", "2026-12-31")),
    "caller": st.sampled_from(CALLERS[:4]),
    "province": st.sampled_from(("CN-BJ", "广东", "beijing", "unknown")),
    "outcome": st.sampled_from(("connected", "not_connected", "bridge", "reject", "closed", "ok", "pin_required")),
    "target": st.sampled_from(("t1", "t2", "t9")),
})
PROVINCE_CODES = {"CN-BJ": "CN-BJ", "广东": "CN-GD", "beijing": "CN-BJ", "unknown": None}


def naive_find(rows, number, f):
    def keep(r):
        if r["number"] != number:
            return False
        if "since_day" in f and r["day"] < f["since_day"]:
            return False
        if "until_day" in f and r["day"] > f["until_day"]:
            return False
        if "caller" in f and r["caller"] != f["caller"]:
            return False
        if "province" in f and r["province"] != PROVINCE_CODES[f["province"]]:
            return False
        if "target" in f and r["target"] != f["target"]:
            return False
        outcome = f.get("outcome")
        if outcome == "connected" and r["action"] not in CONNECTS:
            return False
        if outcome == "not_connected" and r["action"] in CONNECTS:
            return False
        if outcome in ACTIONS and r["action"] != outcome:
            return False
        return outcome not in ("closed", "ok", "pin_required") or r["reason"] == outcome

    return [r["id"] for r in sorted(filter(keep, rows.values()), key=lambda r: (r["day"], r["id"]), reverse=True)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(decisions=st.lists(record_st, min_size=1, max_size=60), ends=st.lists(end_st, max_size=40),
       cuts=st.lists(st.integers(1, 120), max_size=6), filters=st.lists(filters_st, min_size=1, max_size=4),
       limit=st.integers(1, 7))
def test_rollups_and_listing_equal_the_rows(decisions, ends, cuts, filters, limit):
    with tempfile.TemporaryDirectory() as tmp:
        records = CallRecords(f"{tmp}/r.db", zone_of=ZONES.get, interval_s=3600, retention_days=1e6)
        try:
            rows = write_all(records, decisions, ends, cuts)
            for number in ZONES:
                for month in ("2026-10", "2026-11", "2026-12"):
                    assert records.report(number, month) == naive_report(rows, number, month)
                    assert records.callers(number, month) == naive_callers(rows, number, month)
                for f in filters:
                    expected = naive_find(rows, number, f)
                    seen, after = [], None
                    while True:
                        page, after = records.find(number, limit=limit, after=after, **f)
                        assert len(page) <= limit
                        seen += [r["id"] for r in page]
                        if after is None:
                            break
                        assert len(page) == limit
                    assert seen == expected
                    lines = list(csv.reader(io.StringIO(b"".join(records.csv_lines(number, **f)).decode("utf-8-sig"))))
                    assert [int(line[0]) for line in lines[1:]] == expected
            # Retention drops October's caller rollups: the caller analysis is then that of the months kept.
            records._prune_caller_months(records._db(), "2026-11")
            kept = {rid: r for rid, r in rows.items() if r["day"][:7] >= "2026-11"}
            for number in ZONES:
                for month in ("2026-10", "2026-11", "2026-12"):
                    assert records.callers(number, month) == naive_callers(kept, number, month)
        finally:
            records.close()
