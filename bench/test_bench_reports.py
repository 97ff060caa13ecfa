"""Call records at scale: one number with a million records in a month.

    .venv/bin/pytest bench/test_bench_reports.py --benchmark-enable --benchmark-columns=median,iqr

Sizes and the kept files come from the environment:

    TEL400_BENCH_RECORDS   the busy number's records in November 2026 (default 1,000,000);
                           other numbers get a fifth as many, interleaved
    TEL400_BENCH_DIR       where the generated database is kept between runs (default:
                           $TMPDIR/tel400-bench-records); its name carries the schema version
                           and the size, so a rerun opens it at once

The records are written through :class:`CallRecords`' own write path (its
``_write``, batches of 2,000 as the writer thread makes them), so the
rollups are the ones the service maintains.  Each timed call is one
question a page asks: the month report, the first page of records, a
filtered page, a deep page by cursor, the CSV export's first line and first
chunk of rows, the caller analysis, and the JSON API's listing.  The target
is 300 ms each at a million records (docs/performance.md, "Reports at scale").
"""

from __future__ import annotations

import os
import pathlib
import random
import tempfile

import pytest
from tel400_http import records as records_module
from tel400_http.records import CallRecords

BUSY = "4001012345"
MONTH = "2026-11"
NOV_1 = 1_793_462_400.0  # 2026-11-01 00:00 in Asia/Shanghai
TARGETS = ("010-5550001", "010-5550002", "021-5550003", "13800000004", "13800000005")
PROVINCES = ("CN-GD", "CN-BJ", "CN-SH", "CN-ZJ", "CN-JS", "CN-SD", "CN-SC", "CN-HB", None, "CN-XZ")


class Decision:
    """What the writer reads of a :class:`tel400.Decision`."""

    __slots__ = ("action", "call_id", "caller", "channel", "number", "province", "reason", "rule", "targets")

    def __init__(self, call_id, number, caller, province, action, reason, target):
        self.call_id, self.number, self.caller, self.province = call_id, number, caller, province
        self.rule, self.action, self.reason, self.channel = "day", action, reason, "voice"
        self.targets = (target,) if target else ()


def write_month(records, busy_calls: int, *, seed: int = 13, batch: int = 2000) -> None:
    """``busy_calls`` records for :data:`BUSY` over November 2026 and a fifth as many for 100 other numbers.

    Callers are skewed (a few call often, most once or twice: about a
    fifth as many distinct callers as calls); 85% of calls connect, and
    nearly all of those get their end (billed seconds and cost) in the
    same or the next batch.
    """
    rng = random.Random(seed)
    others = busy_calls // 5
    total = busy_calls + others
    span = 30 * 86400 / total
    callers = max(busy_calls // 5, 10)
    items, pending_ends = [], []
    for i in range(total):
        number = BUSY if i % 6 else f"400200{i % 100:04d}"
        started = NOV_1 + i * span
        caller = f"139{int(callers * rng.random() ** 2):08d}"
        draw = rng.random()
        if draw < 0.80:
            action, reason = "bridge", "ok"
        elif draw < 0.85:
            action, reason = "queue", "ok"
        else:
            action, reason = "reject", rng.choice(("closed", "blacklisted", "cap_exceeded"))
        target = rng.choice(TARGETS) if action != "reject" else None
        call_id = f"c{i}"
        items.append(("d", Decision(call_id, number, caller, rng.choice(PROVINCES), action, reason, target), started))
        if target and rng.random() < 0.95:
            billed = rng.randrange(60, 600, 60)
            pending_ends.append(("e", call_id, billed - rng.random() * 50, billed, billed * 1000, None))
        if len(items) >= batch:
            records._write(items + pending_ends[: len(pending_ends) // 2])
            items, pending_ends = [], pending_ends[len(pending_ends) // 2:]
    records._write(items + pending_ends)


def open_records(directory: pathlib.Path, busy_calls: int, module=records_module) -> CallRecords:
    """The generated database in ``directory`` (written once per schema version and size), opened."""
    path = directory / f"records-v{getattr(module, 'SCHEMA_VERSION', 1)}-{busy_calls}.db"
    complete = path.with_name(path.name + ".complete")  # written last: a run cut short starts again
    if not complete.exists():
        for stale in directory.glob(path.name + "*"):
            stale.unlink()
        records = module.CallRecords(str(path), zone_of=lambda n: None, retention_days=1e6)
        write_month(records, busy_calls)
        records.close()
        complete.touch()
    return module.CallRecords(str(path), zone_of=lambda n: None, retention_days=1e6, interval_s=3600)


@pytest.fixture(scope="module")
def busy():
    size = int(os.environ.get("TEL400_BENCH_RECORDS", "1000000"))
    kept = os.environ.get("TEL400_BENCH_DIR")
    directory = pathlib.Path(kept) if kept else pathlib.Path(tempfile.gettempdir()) / "tel400-bench-records"
    directory.mkdir(parents=True, exist_ok=True)
    records = open_records(directory, size)
    yield size, records
    records.close()


def _run(benchmark, busy, fn, rounds=10):
    size, _ = busy
    benchmark.extra_info.update(impl="sqlite", records=size, calls=1)
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


def test_records_month_report(benchmark, busy):
    report = _run(benchmark, busy, lambda: busy[1].report(BUSY, MONTH))
    assert report["calls"] == busy[0] and sum(report["by_hour"][h]["calls"] for h in range(24)) == busy[0]


def test_records_first_page(benchmark, busy):
    page, cursor = _run(benchmark, busy, lambda: busy[1].find(BUSY, limit=50))
    assert len(page) == 50 and cursor and page[0]["day"] == "2026-11-30"


def test_records_filtered_page(benchmark, busy):
    page, _ = _run(benchmark, busy, lambda: busy[1].find(
        BUSY, since_day="2026-11-10", until_day="2026-11-20", province="广东", outcome="connected", limit=50))
    assert len(page) == 50 and {(r["province"], r["action"] != "reject") for r in page} == {("CN-GD", True)}


def test_records_rare_filter_page(benchmark, busy):
    """The most selective filters: one caller, one rare reason in the Tibet province."""
    records = busy[1]
    caller = records.callers(BUSY, MONTH)["top_callers"][0][0]
    page, _ = _run(benchmark, busy, lambda: (records.find(BUSY, caller=caller, limit=50),
                                             records.find(BUSY, province="CN-XZ", outcome="cap_exceeded"))[0])
    assert page and {r["caller"] for r in page} == {caller}


def test_records_deep_page(benchmark, busy):
    size, records = busy
    day, rid = records._db().execute(
        "SELECT day, id FROM records WHERE number = ? ORDER BY day DESC, id DESC LIMIT 1 OFFSET ?",
        (BUSY, size // 2)).fetchone()
    deep = records_module._encode_cursor(day, rid)
    page, _ = _run(benchmark, busy, lambda: records.find(BUSY, limit=50, after=deep))
    assert len(page) == 50 and page[0]["id"] < rid


def test_records_csv_first_line(benchmark, busy):
    first = _run(benchmark, busy, lambda: next(busy[1].csv_lines(BUSY)))
    assert first.startswith(b"\xef\xbb\xbfid,")


def test_records_csv_first_rows(benchmark, busy):
    def first_rows():
        lines = busy[1].csv_lines(BUSY)
        return next(lines), next(lines)

    _, chunk = _run(benchmark, busy, first_rows)
    assert chunk.count(b"\n") == min(records_module.CHUNK, busy[0])


def test_records_callers(benchmark, busy):
    analysis = _run(benchmark, busy, lambda: busy[1].callers(BUSY, MONTH), rounds=5)
    assert analysis["callers"] == analysis["new_callers"] + analysis["returning_callers"] > 0


def test_records_json_listing_deep(benchmark, busy):
    size, records = busy
    middle = records.calls(BUSY, limit=1)[0]["id"] - size // 2
    page = _run(benchmark, busy, lambda: records.calls(BUSY, limit=100, before_id=middle))
    assert len(page) == 100 and page[0]["id"] < middle
