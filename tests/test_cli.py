"""The tel400 command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import tel400
from tel400.cli import main

from .conftest import EXAMPLES, ROOT

MANUAL = str(EXAMPLES / "manual.toml")


def test_check_ok(capsys):
    assert main(["check", MANUAL]) == 0
    assert "ok:" in capsys.readouterr().out


def test_check_bad_plan_exits_1_with_the_plan_error(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[numbers]]\nnumber = "4001012345"\n[[numbers.rules]]\nname = "x"\ntime = "25:00-26:00"\ntargets = ["1"]\n')
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.toml: number 4001012345: rule 'x': field 'time': bad time '25:00'" in err


def test_route_with_explain(capsys):
    assert main(["route", MANUAL, "4001012345", "+86 139 0101 2345", "--at", "2026-11-24T09:00+08:00", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "action:   bridge" in out and "13901010001" in out and "rule:     beijing" in out
    assert "✗ rule sms-desk: channel voice is not sms" in out


def test_route_json_and_pin(capsys):
    assert main(["route", MANUAL, "4001532532", "13902001234", "--pin", "1234", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["action"] == "conference" and out["province"] == "CN-TJ"


def test_route_bad_at(capsys):
    with pytest.raises(SystemExit, match="--at"):
        main(["route", MANUAL, "4001012345", "1", "--at", "yesterday"])


def test_locate(capsys, tmp_path):
    assert main(["locate", "13901012345", "0571-8888-8888"]) == 0
    out = capsys.readouterr().out
    assert "13901012345 -> CN-BJ 北京 Beijing" in out and "057188888888 -> CN-ZJ" in out
    assert main(["locate", "junk"]) == 1
    csv = tmp_path / "ops.csv"
    csv.write_text("1390101,CN-SH\n")
    assert main(["locate", "13901012345", "--segments", str(csv)]) == 0
    assert "CN-SH" in capsys.readouterr().out
    import tel400

    tel400.use_segments(None)


def test_simulate_table_and_json(capsys):
    assert main(["simulate", MANUAL, "--calls", "2000", "--start", "2026-11-23", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "Simulated 2000 calls over the week from 2026-11-23 (seed 3)" in out
    for fragment in ("morning-split", "closed", "conference", "support-hours", "callers by province"):
        assert fragment in out
    assert main(["simulate", MANUAL, "--calls", "2000", "--start", "2026-11-23", "--seed", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sum(o["calls"] for o in report["outcomes"]) == 2000
    assert sum(report["reasons"].values()) == 2000
    assert report["minutes"] > 0


def test_simulate_is_deterministic_for_a_seed(capsys):
    main(["simulate", MANUAL, "--calls", "500", "--start", "2026-11-23", "--json"])
    first = capsys.readouterr().out
    main(["simulate", MANUAL, "--calls", "500", "--start", "2026-11-23", "--json"])
    assert capsys.readouterr().out == first


def test_calendar(capsys):
    assert main(["calendar", "--date", "2026-10-10"]) == 0
    out = capsys.readouterr().out
    assert "2026: chinese-calendar" in out and "2026-10-10: workday" in out
    assert main(["calendar", "--plans", str(EXAMPLES / "calendar.toml"), "--date", "2027-01-01"]) == 0
    out = capsys.readouterr().out
    assert "2027: fallback: Monday-Friday" in out and "2027-01-01: holiday" in out  # added, not complete
    assert main(["calendar", "--plans", str(EXAMPLES / "calendar.toml"), "--number", "4001012345", "--date", "2026-12-24"]) == 0
    assert "2026-12-24: holiday" in capsys.readouterr().out  # the number's own addition


def test_pin_hash_round_trip(capsys):
    assert main(["pin-hash", "2468"]) == 0
    from tel400.pins import PinCheck

    digest = capsys.readouterr().out.strip()
    assert PinCheck(pin_hash=digest)("2468")
    assert main(["pin-hash", "12"]) == 2


def test_console_script_runs_the_main_job():
    """The README's main job, as a subprocess: the installed console script."""
    exe = ROOT / ".venv" / "bin" / "tel400"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "tel400.cli"]
    result = subprocess.run(
        [*cmd, "simulate", MANUAL, "--calls", "1000"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Simulated 1000 calls" in result.stdout


def test_store_import_creates_the_database_and_its_directory(tmp_path, capsys):
    db = tmp_path / "var" / "lib" / "tel400" / "plans.db"  # no such directory yet (was a traceback)
    assert main(["store", "import", MANUAL, f"sqlite:///{db}"]) == 0
    assert db.exists()
    assert main(["check", f"sqlite:///{db}"]) == 0


def test_reading_a_missing_database_is_an_error_not_an_empty_store(tmp_path, capsys):
    typo = tmp_path / "plnas.db"
    for command in (["check", f"sqlite:///{typo}"], ["store", "export", f"sqlite:///{typo}"],
                    ["store", "import", f"sqlite:///{typo}", f"sqlite:///{tmp_path}/copy.db"]):
        assert main(command) == 3, command
        assert "no such database" in capsys.readouterr().err
    assert not typo.exists()  # a typo creates nothing


def test_store_import_into_a_place_it_cannot_write_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["store", "import", MANUAL, f"sqlite:///{blocker}/plans.db"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("tel400: ") and "Traceback" not in err


def test_store_import_export_audit(tmp_path, capsys):
    db = f"sqlite:///{tmp_path}/plans.db"
    assert main(["store", "import", MANUAL, db, "--actor", "ops"]) == 0
    assert "imported 3 numbers" in capsys.readouterr().out
    assert main(["check", db]) == 0
    assert "3 numbers" in capsys.readouterr().out
    assert main(["store", "export", db]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert sorted(n["number"] for n in exported["numbers"]) == ["4001012345", "4001100868", "4001532532"]
    assert main(["store", "audit", db]) == 0
    out = capsys.readouterr().out
    assert "ops" in out and "replace_all" in out
    assert main(["route", db, "4001532532", "13902001234", "--pin", "1234"]) == 0
    assert "conference" in capsys.readouterr().out
    assert main(["store", "import", MANUAL, MANUAL]) == 2  # a file is not a writable store
    assert "not a writable store" in capsys.readouterr().err


def test_store_export_and_import_json_lines(tmp_path, capsys):
    db, copy = f"sqlite:///{tmp_path}/plans.db", f"sqlite:///{tmp_path}/copy.db"
    assert main(["store", "import", MANUAL, db]) == 0
    capsys.readouterr()
    assert main(["store", "export", db, "--jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and "settings" in json.loads(lines[0])  # the settings, then one number a line
    (tmp_path / "plans.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["store", "import", str(tmp_path / "plans.jsonl"), copy]) == 0
    assert "imported 3 numbers" in capsys.readouterr().out
    assert main(["store", "export", copy]) == 0
    from_copy = capsys.readouterr().out
    assert main(["store", "export", db]) == 0
    assert capsys.readouterr().out == from_copy

    lines[2] = lines[2].replace('"rules"', '"rulez"')
    (tmp_path / "bad.ndjson").write_text("\n".join(lines + ["{oops"]) + "\n")
    assert main(["store", "import", str(tmp_path / "bad.ndjson"), copy]) == 1
    err = capsys.readouterr().err
    assert "2 numbers refused, nothing imported" in err and "bad.ndjson line 3: " in err and "rulez" in err
    assert "bad.ndjson line 5: not JSON" in err
    assert main(["store", "export", copy]) == 0
    assert capsys.readouterr().out == from_copy  # nothing written

    assert main(["store", "export", MANUAL, "--jsonl"]) == 0  # a file store too
    assert len(capsys.readouterr().out.splitlines()) == 4


LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{c}: &{c} [" + ",".join([f"*{chr(ord(c) - 1)}"] * 9) + "]" for c in "bcdefghi"]
    + ["numbers: [{number: '4001012345', blacklist: *i}]"]
) + "\n"


@pytest.mark.parametrize("name, content, fragment", [
    # zones that are directories or too long for the file system (before: IsADirectoryError / OSError tracebacks)
    ("zone.toml", '[[numbers]]\nnumber = "4001012345"\ntimezone = "America"\n', "unknown time zone 'America'"),
    ("zone.toml", '[[numbers]]\nnumber = "4001012345"\ntimezone = "Etc"\n', "unknown time zone 'Etc'"),
    ("zone.toml", '[[numbers]]\nnumber = "4001012345"\ntimezone = "%s"\n' % ("x" * 300), "unknown time zone"),
    # 376 bytes of YAML aliases (before: 53 s and 3 GB rendering the error message)
    ("laughs.yaml", LAUGHS, "values"),
    ("long.json", '{"numbers": [{"number": "4001012345", "tariff": {"local": %s}}]}' % ("9" * 5000), "too many digits"),
    ("cap.toml", '[[numbers]]\nnumber = "4001012345"\ncaps = [{ metric = "minutes", per = "day", limit = "1e30" }]\n',
     "caps[0].limit"),
])
def test_check_exits_1_with_a_message_never_a_traceback(tmp_path, capsys, name, content, fragment):
    path = tmp_path / name
    path.write_text(content)
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and len(err) < 1000


def test_check_reports_a_bad_number_in_a_store(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/p.db"
    assert main(["store", "import", MANUAL, url]) == 0
    db = tel400.SqliteStore(tmp_path / "p.db")._connect()
    db.execute("INSERT INTO plans (number, body, updated_at, updated_by) VALUES ('4007777777', ?, 0, 'old')",
               ('{"number": "4007777777", "caps": [{"metric": "minutes", "per": "day", "limit": "1e30"}]}',))
    capsys.readouterr()
    assert main(["check", url]) == 1
    assert "number 4007777777" in capsys.readouterr().err
