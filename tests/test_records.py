"""Call records: the filters' errors, the hour and weekday of the report, the CSV export,
the upgrade of a previous version's file, and what pruning keeps."""

from __future__ import annotations

import csv
import io
import sqlite3
import zoneinfo

import pytest
from structlog.testing import capture_logs
from tel400_http.records import CSV_COLUMNS, OUTCOMES, SCHEMA_VERSION, CallRecords

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
MON_NOV_2_0930 = 1_793_583_000.0  # Monday 2026-11-02 09:30 in Shanghai (01:30 UTC)
NUMBER = "4001012345"


class Decision:
    def __init__(self, call_id, caller="13901012345", province="CN-BJ", action="bridge", reason="ok",
                 target="t1", number=NUMBER):
        self.call_id, self.number, self.caller, self.province = call_id, number, caller, province
        self.rule, self.action, self.reason, self.channel = "r", action, reason, "voice"
        self.targets = (target,) if target else ()


@pytest.fixture
def records(tmp_path):
    r = CallRecords(str(tmp_path / "r.db"), zone_of=lambda n: SHANGHAI, interval_s=3600, retention_days=1e6)
    yield r
    r.close()


@pytest.mark.parametrize("filters, field", [
    ({"since_day": "2026-13-01"}, "since_day"), ({"since_day": "yesterday"}, "since_day"),
    ({"until_day": "2026-02-30"}, "until_day"), ({"since_day": "2026-11-05", "until_day": "2026-11-01"}, "since_day"),
    ({"caller": "<script>alert(1)</script>"}, "caller"), ({"caller": "1" * 65}, "caller"), ({"caller": 139}, "caller"),
    ({"province": "Atlantis"}, "province"), ({"outcome": "maybe"}, "outcome"), ({"target": "x" * 201}, "target"),
    ({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"limit": True}, "limit"), ({"after": "garbage!"}, "after"),
    ({"after": "MjAyNi0xMS0wMnx4"}, "after"),  # "2026-11-02|x"
])
def test_each_bad_filter_is_a_value_error_naming_it(records, filters, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        records.find(NUMBER, **filters)
    if field not in ("limit", "after"):
        with pytest.raises(ValueError, match=f"^{field}: "):
            records.csv_lines(NUMBER, **filters)  # at the call, not midway through the stream


def test_outcomes_name_connected_each_action_and_each_reason():
    assert {"connected", "not_connected", "bridge", "reject", "queue", "conference", "collect_pin",
            "ok", "closed", "blacklisted"} <= set(OUTCOMES)
    assert len(OUTCOMES) == len(set(OUTCOMES))


def test_report_hours_and_heatmap_are_the_numbers_local_time(records):
    records._write([("d", Decision("a"), MON_NOV_2_0930), ("d", Decision("b"), MON_NOV_2_0930 + 60),
                    ("d", Decision("c", action="reject", reason="closed", target=None), MON_NOV_2_0930 + 86400 * 6)])
    report = records.report(NUMBER, "2026-11")
    assert report["by_hour"][9] == {"hour": 9, "calls": 3, "connected": 2}
    assert sum(h["calls"] for h in report["by_hour"]) == 3
    assert report["heatmap"][0][9] == 2 and report["heatmap"][6][9] == 1  # Monday, then Sunday 2026-11-08
    assert sum(map(sum, report["heatmap"])) == 3
    assert records.month_totals(NUMBER, "2026-11") == {
        "calls": 3, "connected": 2, "minutes": 0.0, "cost": "0.00", "talk_minutes": 0.0}


def test_an_end_moves_its_calls_amounts_without_counting_it_twice(records):
    records._write([("d", Decision("a"), MON_NOV_2_0930)])
    records._write([("e", "a", 50.0, 60, 100_000, None)])
    records._write([("e", "a", 170.0, 180, 300_000, "t2")])  # a corrected end: replaces, answered by t2
    report = records.report(NUMBER, "2026-11")
    assert (report["calls"], report["minutes"], report["cost"], report["talk_minutes"]) == (1, 3.0, "0.30", 2.83)
    assert report["by_target"] == [{"target": "t2", "calls": 1, "minutes": 3.0, "cost": "0.30"}]


def test_csv_has_a_bom_the_documented_header_and_chinese_names(records):
    records._write([("d", Decision("a", province="CN-GD"), MON_NOV_2_0930),
                    ("d", Decision("b", caller="<script>"), MON_NOV_2_0930 + 1)])
    lines = records.csv_lines(NUMBER)
    first = next(lines)
    assert first.startswith(b"\xef\xbb\xbf") and first.decode("utf-8-sig") == ",".join(CSV_COLUMNS) + "\r\n"
    rows = list(csv.DictReader(io.StringIO(b"".join([first, *lines]).decode("utf-8-sig"))))
    assert [(r["call_id"], r["province_name"], r["caller"]) for r in rows] == [
        ("b", "北京", "<script>"), ("a", "广东", "13901012345")]


def test_csv_cells_from_outside_never_run_as_excel_formulas(records):
    records._write([("d", Decision("=1+1", caller='=HYPERLINK("http://x","y")'), MON_NOV_2_0930),
                    ("d", Decision("b", caller="+8613901012345", target="@t"), MON_NOV_2_0930 + 1)])
    rows = list(csv.DictReader(io.StringIO(b"".join(records.csv_lines(NUMBER)).decode("utf-8-sig"))))
    assert [(r["call_id"], r["caller"], r["target"]) for r in rows] == [
        ("b", "+8613901012345", "'@t"), ("'=1+1", '\'=HYPERLINK("http://x","y")', "t1")]


def test_csv_streams_the_first_line_before_it_reads_the_records(records):
    lines = records.csv_lines(NUMBER)
    next(lines)  # the header, with nothing written yet
    records._write([("d", Decision("late"), MON_NOV_2_0930)])
    assert b"late" in b"".join(lines)


def test_find_pages_newest_first_with_an_opaque_cursor(records):
    records._write([("d", Decision(f"c{i}"), MON_NOV_2_0930 + i * 43200) for i in range(5)])
    first, cursor = records.find(NUMBER, limit=2)
    assert [r["call_id"] for r in first] == ["c4", "c3"] and cursor and "|" not in cursor
    second, cursor = records.find(NUMBER, limit=2, after=cursor)
    last, cursor = records.find(NUMBER, limit=2, after=cursor)
    assert [r["call_id"] for r in second + last] == ["c2", "c1", "c0"] and cursor is None
    assert records.find("4009999999") == ([], None)


OLD_SCHEMA = """
CREATE TABLE records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id TEXT, number TEXT, caller TEXT, province TEXT, rule TEXT, target TEXT,
    action TEXT NOT NULL, reason TEXT NOT NULL, channel TEXT NOT NULL,
    started REAL NOT NULL, day TEXT NOT NULL,
    duration_s REAL, billed_s INTEGER, cost_micro INTEGER
);
CREATE INDEX records_number_day ON records (number, day);
CREATE INDEX records_call_id ON records (call_id);
"""


def test_a_previous_versions_file_is_upgraded_and_its_rollups_rebuilt(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # what the previous version wrote
        db.executescript(OLD_SCHEMA)
        db.executemany(
            "INSERT INTO records (call_id, number, caller, province, rule, target, action, reason, channel, started, "
            "day, duration_s, billed_s, cost_micro) VALUES (?, ?, ?, ?, 'r', ?, ?, ?, 'voice', ?, ?, ?, ?, ?)",
            [(f"c{i}", NUMBER, f"1390000000{i % 3}", "CN-SH", "t1" if i % 4 else None, "bridge" if i % 4 else "reject",
              "ok" if i % 4 else "closed", MON_NOV_2_0930 + i * 3600, "2026-11-02" if i < 15 else "2026-11-03",
              59.0 if i % 4 else None, 60 if i % 4 else None, 100_000 if i % 4 else None) for i in range(20)])
    monkeypatch.setattr("tel400_http.records.CHUNK", 7)  # three batches
    with capture_logs() as logs:
        records = CallRecords(str(path), zone_of=lambda n: SHANGHAI, interval_s=3600, retention_days=1e6)
    try:
        events = [e["event"] for e in logs]
        assert events.count("records_upgrade_progress") == 3 and "records_upgrade_finished" in events
        report = records.report(NUMBER, "2026-11")
        assert (report["calls"], report["connected"], report["minutes"], report["cost"]) == (20, 15, 15.0, "1.50")
        assert [(d["day"], d["calls"]) for d in report["by_day"]] == [("2026-11-02", 15), ("2026-11-03", 5)]
        assert report["by_hour"][9]["calls"] == 1 and sum(h["calls"] for h in report["by_hour"]) == 20
        assert records.callers(NUMBER, "2026-11")["repeat_within_day"] == 3
        records._write([("d", Decision("new"), MON_NOV_2_0930)])
        assert records.report(NUMBER, "2026-11")["calls"] == 21
        assert records.find(NUMBER, outcome="closed", limit=100)[0][0]["call_id"] == "c16"
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        records.close()
    with capture_logs() as logs:  # opened again: nothing to rebuild
        CallRecords(str(path), zone_of=lambda n: SHANGHAI, interval_s=3600).close()
    assert not [e for e in logs if e["event"].startswith("records_upgrade")]


def _counts(records, month):
    c = records.callers(NUMBER, month)
    return c["callers"], c["new_callers"], c["returning_callers"], c["repeat_within_day"], c["by_province"]


def test_a_caller_month_written_before_an_earlier_one_becomes_returning(records):
    dec, nov = MON_NOV_2_0930 + 30 * 86400, MON_NOV_2_0930
    records._write([("d", Decision("a-dec", province="CN-GD"), dec)])
    assert _counts(records, "2026-12")[1:3] == (1, 0)
    records._write([("d", Decision("a-nov"), nov)])  # late: an earlier month of the same caller
    assert _counts(records, "2026-12") == (1, 0, 1, 0, [{"province": "CN-GD", "callers": 1}])
    assert _counts(records, "2026-11") == (1, 1, 0, 0, [{"province": "CN-BJ", "callers": 1}])
    # The December caller's province moves to the first by code; the summary moves with it.
    records._write([("d", Decision("a-dec2", province="CN-BJ"), dec + 60)])
    assert _counts(records, "2026-12") == (1, 0, 1, 1, [{"province": "CN-BJ", "callers": 1}])


def _downgrade_to_v2(path):
    """What version 2 wrote: the caller rollup without its flag, no summaries, no index by calls."""
    with sqlite3.connect(path) as db:
        db.executescript("DROP TABLE roll_caller_summary; DROP INDEX roll_caller_top; "
                         "ALTER TABLE roll_caller_month DROP COLUMN returning_caller; PRAGMA user_version = 2;")


def test_a_version_2_file_gets_its_returning_flags_and_summaries(tmp_path):
    path = tmp_path / "v2.db"
    records = CallRecords(str(path), zone_of=lambda n: SHANGHAI, interval_s=3600, retention_days=1e6)
    months = {"2026-10": MON_NOV_2_0930 - 20 * 86400, "2026-11": MON_NOV_2_0930, "2026-12": MON_NOV_2_0930 + 35 * 86400}
    try:
        records._write([("d", Decision(f"{month}-{i}", caller=f"1390000000{i % 4 + int(month[-1])}",
                                       province=("CN-BJ", "CN-GD", None)[i % 3]), at + i * 60)
                        for month, at in months.items() for i in range(6)])
        before = {month: records.callers(NUMBER, month) for month in months}
    finally:
        records.close()
    assert [(before[m]["new_callers"], before[m]["returning_callers"]) for m in months] == [(4, 0), (1, 3), (1, 3)]
    _downgrade_to_v2(path)
    with capture_logs() as logs:
        records = CallRecords(str(path), zone_of=lambda n: SHANGHAI, interval_s=3600, retention_days=1e6)
    try:
        events = [e["event"] for e in logs]
        assert "records_upgrade_callers_finished" in events and "records_upgrade_started" not in events
        assert {month: records.callers(NUMBER, month) for month in months} == before
        records._write([("d", Decision("new", caller="13800000000"), MON_NOV_2_0930)])
        assert records.callers(NUMBER, "2026-11")["new_callers"] == before["2026-11"]["new_callers"] + 1
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        records.close()


def test_pruning_an_earlier_month_makes_its_callers_new_in_the_months_kept(tmp_path):
    now = [MON_NOV_2_0930 + 30 * 86400]  # 2026-12-02: thirty days kept, November's caller rollup with them
    records = CallRecords(str(tmp_path / "r.db"), zone_of=lambda n: SHANGHAI, interval_s=3600, retention_days=30,
                          clock=lambda: now[0])
    oct_25, nov_20, dec_1 = MON_NOV_2_0930 - 8 * 86400, MON_NOV_2_0930 + 18 * 86400, now[0] - 86400
    try:
        records._write([("d", Decision("a-oct", caller="139A"), oct_25), ("d", Decision("a-nov", caller="139A"), nov_20),
                        ("d", Decision("b-oct", caller="139B"), oct_25), ("d", Decision("b-dec", caller="139B"), dec_1),
                        ("d", Decision("c-nov", caller="139C"), nov_20), ("d", Decision("c-dec", caller="139C"), dec_1)])
        assert _counts(records, "2026-11")[1:3] == (1, 1) and _counts(records, "2026-12")[1:3] == (0, 2)
        records.prune()
        assert _counts(records, "2026-10")[0] == 0
        assert _counts(records, "2026-11")[1:3] == (2, 0)  # A's October is gone: A is new in November
        assert _counts(records, "2026-12")[1:3] == (1, 1)  # B new (October gone), C returning (November kept)
        records._write([("d", Decision("a-oct2", caller="139A"), oct_25)])  # a late October call after pruning
        assert _counts(records, "2026-11")[1:3] == (1, 1)
    finally:
        records.close()


def test_pruning_drops_rows_and_caller_rollups_but_the_report_keeps_history(tmp_path):
    now = [MON_NOV_2_0930 + 60 * 86400]  # 2027-01-01
    records = CallRecords(str(tmp_path / "r.db"), zone_of=lambda n: SHANGHAI, interval_s=3600, retention_days=30,
                          clock=lambda: now[0])
    try:
        records._write([("d", Decision(f"old{i}"), MON_NOV_2_0930 + i) for i in range(3)]
                       + [("d", Decision("new", caller="13800000000"), now[0] - 86400)])
        assert records.prune() == 3
        assert [r["call_id"] for r in records.find(NUMBER, limit=10)[0]] == ["new"]
        assert records.report(NUMBER, "2026-11")["calls"] == 3  # the report outlives its rows
        assert records.callers(NUMBER, "2026-11")["callers"] == 0  # caller analysis follows retention
        assert records.callers(NUMBER, "2026-12")["new_callers"] == 1
        with sqlite3.connect(tmp_path / "r.db") as db:  # per-day caller counts: the last few days only
            assert db.execute("SELECT day FROM roll_caller_day").fetchall() == [("2026-12-31",)]
        now[0] += 1200 * 86400  # past the rollups' own retention
        records.prune()
        assert records.report(NUMBER, "2026-11")["calls"] == 0
    finally:
        records.close()


def test_a_call_to_an_unknown_number_is_recorded_with_its_end_and_no_rollup_fails(records):
    # An unknown dialed number has no plan and so no number: its record is
    # kept (the operator's listing), but it belongs to no number's report.
    class End:
        call_id, duration_s, billed_s, cost, target = "u1", 30.0, 60, None, "13900000000"

    records._write([("d", Decision("u1", number=None, action="reject", reason="unknown_number", target=None),
                     MON_NOV_2_0930)])
    records._write([("d", Decision("u2", number=None, action="reject", reason="unknown_number", target=None),
                     MON_NOV_2_0930), ("e", "u2", 30.0, 60, None, "13900000000")])
    records._write([("e", "u1", 30.0, 60, None, "13900000000")])
    db = records._db()
    assert db.execute("SELECT call_id, billed_s FROM records WHERE number IS NULL ORDER BY call_id").fetchall() == [
        ("u1", 60), ("u2", 60)]
    for table in ("roll_day", "roll_hour", "roll_province", "roll_target", "roll_reason", "roll_caller_day",
                  "roll_caller_month"):
        assert db.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,), table
    assert records.errors == 0


def test_an_old_file_with_calls_to_unknown_numbers_upgrades(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE records (id INTEGER PRIMARY KEY AUTOINCREMENT, call_id TEXT, number TEXT, caller TEXT,
            province TEXT, rule TEXT, target TEXT, action TEXT NOT NULL, reason TEXT NOT NULL, channel TEXT NOT NULL,
            started REAL NOT NULL, day TEXT NOT NULL, duration_s REAL, billed_s INTEGER, cost_micro INTEGER);
        INSERT INTO records (call_id, number, caller, action, reason, channel, started, day)
            VALUES ('u', NULL, '139', 'reject', 'unknown_number', 'voice', 1793583000.0, '2026-11-02'),
                   ('k', '4001012345', '139', 'reject', 'closed', 'voice', 1793583000.0, '2026-11-02');
    """)
    db.commit()
    db.close()
    r = CallRecords(str(path), zone_of=lambda n: SHANGHAI, interval_s=3600, retention_days=1e6)
    try:
        assert r.report(NUMBER, "2026-11")["calls"] == 1
        assert r._db().execute("SELECT COUNT(*) FROM records WHERE connected IS NULL").fetchone() == (0,)
    finally:
        r.close()
