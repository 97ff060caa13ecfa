"""Plan validation: every mistake is a PlanError that says where and what."""

from __future__ import annotations

import copy
import json
import pathlib

import pytest

import tel400
from tel400 import pins

from .conftest import EXAMPLES, one_number, plans_from

GOOD_RULE = {"name": "r1", "targets": ["13901010001"]}


def expect_error(tree, *fragments):
    with pytest.raises(tel400.PlanError) as info:
        tel400.PlanSet.from_dict(tree, source="plans.toml")
    message = str(info.value)
    assert message.startswith("plans.toml: "), message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


@pytest.mark.parametrize(
    "rule_extra, fragments",
    [
        ({"time": "25:00-26:00"}, ["rule 'r1'", "field 'time'", "bad time '25:00'", "HH:MM"]),
        ({"provinces": ["Atlantis"]}, ["field 'provinces'", "unknown province 'Atlantis'", "CN-BJ"]),
        ({"strategy": "random"}, ["field 'strategy'", "expected one of weighted, round_robin, sequential, sticky"]),
        ({"days": "funday"}, ["field 'days'", "bad day 'funday'"]),
        ({"dates": "2026-12-31..2026-01-01"}, ["field 'dates'", "ends before it starts"]),
        ({"channel": "fax"}, ["field 'channel'", "voice, sms, any"]),
        ({"targets": []}, ["field 'targets'", "non-empty list"]),
        ({"targets": [{"to": "13901010001", "weight": -1}]}, ["targets[0].weight", "cannot be negative"]),
        ({"targets": [{"to": "13901010001", "weight": 0}]}, ["all weights are zero"]),
        ({"targets": [{"to": "13901010001", "weight": 0.3}]}, ["whole number", "30 and 70"]),
        ({"targets": ["13901010001", "13901010001"]}, ["listed twice"]),
        ({"priority": 1}, ["field 'rules[0].priority'", "unknown field"]),
        ({"action": "teleport"}, ["field 'action'", "bridge, reject, queue, conference"]),
        ({"action": "queue", "targets": None}, ["field 'queue'", "missing"]),
        ({"action": "queue"}, ["field 'targets'", "does not apply to action 'queue'"]),
        ({"action": "reject", "targets": ["1"]}, ["does not apply to action 'reject'"]),
    ],
)
def test_rule_mistakes(rule_extra, fragments):
    rule = {k: v for k, v in {**GOOD_RULE, **rule_extra}.items() if v is not None}
    expect_error(one_number(rules=[rule]), "number 4001012345", *fragments)


@pytest.mark.parametrize(
    "target",
    [
        "13901010001\r\nX-Evil: 1",
        "13901010001\n",
        "1390 1010001",
        "13901010001;transport=tcp",
        "<sip:13901010001@evil>",
        '"13901010001"',
        "13901010001|sofia/gateway/evil/1",
        "13901010001,13901010002",
        "{absolute_codec_string=PCMU}13901010001",
        "user@host:99999",
        "user@ho st",
        "",
        "sip:13901010001@gw",
    ],
)
def test_targets_that_could_smuggle_syntax(target):
    expect_error(one_number(rules=[{"name": "r1", "targets": [target]}]), "bad target", "rule 'r1'")


@pytest.mark.parametrize("target", ["13901010001", "+8613901010001", "*86", "#100", "agent.1@pbx.example.com:5060", "desk@10.0.0.5"])
def test_good_targets(target):
    plans = tel400.PlanSet.from_dict(one_number(rules=[{"name": "r1", "targets": [target]}]))
    assert plans.numbers[0].rules[0].action.targets[0].to == target


@pytest.mark.parametrize("prompt", ["closed\r\n", "clo sed", "a;b", "<x>", '"x"', "x" * 65, ""])
def test_prompts_that_could_smuggle_syntax(prompt):
    expect_error(one_number(default={"action": "reject", "prompt": prompt}), "bad prompt name", "field 'default.prompt'")
    expect_error(one_number(prompts={"closed": prompt}), "bad prompt name", "field 'prompts.closed'")


@pytest.mark.parametrize("pin, message", [("123", "4 to 8 digits"), ("123456789", "4 to 8 digits"), ("12a4", "4 to 8 digits"), (1234, "as a string")])
def test_bad_pins(pin, message):
    expect_error(one_number(pin=pin), "field 'pin'", message)


def test_pin_and_hash_are_exclusive_and_hash_checked():
    expect_error(one_number(pin="1234", pin_hash=pins.make_hash("1234", n=2)), "not both")
    expect_error(one_number(pin_hash="md5$abc$def"), "field 'pin_hash'", "scrypt:N:r:p$salt$hexhash")


_SALT_AND_KEY = "$salt$" + "ab" * 32


@pytest.mark.parametrize("head, fragments", [
    ("scrypt:32768:8:120", ["N*r*p", "at most 524288", "tel400 pin-hash"]),   # 8.4 s a try, observed
    ("scrypt:1048576:8:1", ["N*r*p", "at most 524288"]),
    ("scrypt:65536:8:2", ["N*r*p"]),
    ("scrypt:32768:9999999999999999999:1", ["N*r*p"]),
    ("pbkdf2:sha256:1000000000000000000000", ["iterations", "at most 600000"]),  # 500 on every try, observed
    ("pbkdf2:sha256:600001", ["iterations", "at most 600000"]),
    ("pbkdf2:sha512:300000", ["iterations", "at most 250000"]),
])
def test_pin_hash_cost_is_bounded(head, fragments):
    expect_error(one_number(pin_hash=head + _SALT_AND_KEY), "field 'pin_hash'", *fragments)


def test_pbkdf2_cost_counts_every_output_block():
    # 128 bytes of sha256 output are four derivations of 600,000 iterations each
    four_blocks = "pbkdf2:sha256:600000$salt$" + "ab" * 128
    expect_error(one_number(pin_hash=four_blocks), "field 'pin_hash'", "4 blocks")
    tel400.PlanSet.from_dict(one_number(pin_hash="pbkdf2:sha256:150000$salt$" + "ab" * 128))


@pytest.mark.parametrize("head", ["scrypt:32768:8:1", "scrypt:65536:8:1", "scrypt:32768:8:2", "scrypt:16:1:1",
                                  "pbkdf2:sha256:600000", "pbkdf2:sha512:250000", "pbkdf2:sha256:1"])
def test_pin_hash_costs_at_the_bounds_are_accepted(head):
    plans = tel400.PlanSet.from_dict(one_number(pin_hash=head + _SALT_AND_KEY))
    assert plans.numbers[0].pin_hash.startswith(head + "$")


def test_default_pin_hash_is_within_the_bounds():
    pins.check_hash_format(pins.make_hash("4821"))


@pytest.mark.parametrize(
    "cap, fragments",
    [
        ({"metric": "calls", "per": "fortnight", "limit": 1}, ["caps[0].per", "hour, day, week, month"]),
        ({"metric": "sms", "per": "day", "limit": 1}, ["caps[0].metric", "calls, minutes, cost"]),
        ({"metric": "calls", "per": "day", "limit": -1}, ["caps[0].limit", "from 0"]),
        ({"metric": "calls", "per": "day", "limit": 1.5}, ["caps[0].limit", "whole number"]),
        ({"metric": "calls", "per": "day"}, ["caps[0].limit", "missing"]),
        ({"metric": "cost", "per": "day", "limit": 10}, ["caps[0].metric", "needs the number's tariff"]),
        ({"metric": "calls", "per": "day", "limit": 1, "scope": "world"}, ["caps[0].scope", "number, caller"]),
    ],
)
def test_cap_mistakes(cap, fragments):
    expect_error(one_number(caps=[cap]), *fragments)


def test_number_level_mistakes():
    expect_error({"numbers": [{"number": "400x"}]}, "numbers[0].number", "not a telephone number")
    expect_error({"numbers": [{"timezone": "UTC"}]}, "numbers[0].number", "missing")
    expect_error(one_number(timezone="Mars/Olympus"), "field 'timezone'", "unknown time zone")
    expect_error(one_number(on_backend_error="maybe"), "on_backend_error", "allow, reject")
    expect_error(one_number(blacklist=["not-a-number"]), "blacklist[0]", "anonymous")
    expect_error(one_number(blacklist=["17x*"]), "blacklist[0]", "bad prefix")
    expect_error(one_number(prompts={"goodbye": "x"}), "prompts.goodbye", "unknown field")
    expect_error(one_number(prompts={"unknown_number": "x"}), "prompts.unknown_number", "top-level prompts")
    expect_error(one_number(calendar={"years": ["2027"]}), "calendar.years", "[2027]")
    expect_error(one_number(tariff={"local": 0.1}), "tariff.long_distance", "missing")
    expect_error(one_number(tariff={"local": -1, "long_distance": 1}), "tariff.local", "at least 0")
    expect_error(one_number(calendar={"holidays": ["2027-01-01"], "workdays": ["2027-01-01"]}), "field 'calendar'", "both")
    expect_error(one_number(rules=[GOOD_RULE, GOOD_RULE]), "rule 'r1'", "two rules have this name")
    expect_error(one_number(rules=[{"name": "a b", "targets": ["1"]}]), "bad rule name")
    expect_error({"numbers": [{"number": "+14155552671"}]}, "foreign number")
    expect_error({"numbers": "4001012345"}, "field 'numbers'", "list")
    expect_error({"number": "4001012345"}, "field 'number'", "unknown field")
    expect_error([], "expected a plan set as a table")


def test_duplicate_numbers_after_normalisation():
    err = expect_error(
        {"numbers": [{"number": "4001012345"}, {"number": "400-101-2345"}]},
        "number 4001012345",
        "duplicate number (also numbers[0])",
    )
    assert err.number == "4001012345" and err.field == "number"


def test_plan_error_parts_are_attributes():
    err = expect_error(one_number(rules=[{**GOOD_RULE, "time": "08:00-25:00"}]), "bad time")
    assert (err.source, err.number, err.rule, err.field) == ("plans.toml", "4001012345", "r1", "time")
    assert isinstance(err, ValueError)


def test_province_names_in_every_form():
    plans = plans_from(one_number(rules=[{**GOOD_RULE, "provinces": ["CN-BJ", "上海", "上海市", "Guangdong", "inner mongolia"]}]))
    assert plans.numbers[0].rules[0].provinces == {"CN-BJ", "CN-SH", "CN-GD", "CN-NM"}


def test_defaults():
    plans = plans_from(one_number(rules=[{"targets": ["13901010001"]}], caps=[{"metric": "calls", "per": "day", "limit": 5}]))
    plan = plans.numbers[0]
    assert plan.timezone == "Asia/Shanghai"
    assert plan.default == tel400.Action("reject")
    rule = plan.rules[0]
    assert rule.name == "rule-1" and rule.channel == "any" and rule.action.strategy == "weighted"
    assert rule.action.targets[0].weight == 1
    cap = plan.caps[0]
    assert cap.scope == "number" and cap.prompt is None  # the plan's limit_reached prompt
    assert plan.on_backend_error == "allow"


def test_formats_give_the_same_plans(tmp_path):
    toml_plans = tel400.load_plans(EXAMPLES / "manual.toml")
    tree = toml_plans.to_dict()
    (tmp_path / "p.json").write_text(json.dumps(tree, ensure_ascii=False), encoding="utf-8")
    import yaml

    (tmp_path / "p.yaml").write_text(yaml.safe_dump(tree, allow_unicode=True), encoding="utf-8")
    assert tel400.load_plans(tmp_path / "p.json") == toml_plans
    assert tel400.load_plans(tmp_path / "p.yaml") == toml_plans
    assert tel400.PlanSet.from_dict(copy.deepcopy(tree)) == toml_plans


def test_yaml_native_dates_and_times(tmp_path):
    path = tmp_path / "p.yml"
    path.write_text(
        "numbers:\n- number: '4001012345'\n  rules:\n  - name: xmas\n    dates: [2026-12-24, 2026-12-25]\n"
        "    time: 08:00-11:59\n    targets: ['13901010001']\n",
        encoding="utf-8",
    )
    rule = tel400.load_plans(path).numbers[0].rules[0]
    assert rule.dates.text == "2026-12-24,2026-12-25"
    assert rule.time.text == "08:00-11:59"


@pytest.mark.parametrize(
    "name, content, fragments",
    [
        ("bad.toml", "[[numbers]\nnumber=1", ["bad.toml", "invalid TOML"]),
        ("bad.json", '{"numbers": [}', ["bad.json", "invalid JSON at line 1"]),
        ("bad.yaml", "numbers: [\n", ["bad.yaml", "invalid YAML at line"]),
        ("bad.ini", "", ["bad.ini", "unknown plan file type"]),
        ("deep.json", "[" * 100000 + "]" * 100000, ["deep.json"]),
    ],
)
def test_broken_files(tmp_path, name, content, fragments):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(tel400.PlanError) as info:
        tel400.load_plans(path)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(tel400.PlanError, match="cannot read plan file"):
        tel400.load_plans(tmp_path / "missing.toml")
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# \xe9\n")
    with pytest.raises(tel400.PlanError, match="not UTF-8"):
        tel400.load_plans(path)


def test_segments_path_is_relative_to_the_plan_file(tmp_path):
    (tmp_path / "ops.csv").write_text("1390101,CN-SH\n", encoding="utf-8")
    (tmp_path / "p.toml").write_text('segments = "ops.csv"\n[[numbers]]\nnumber = "4001012345"\n', encoding="utf-8")
    plans = tel400.load_plans(tmp_path / "p.toml")
    assert pathlib.Path(plans.segments) == tmp_path / "ops.csv"
    (tmp_path / "q.toml").write_text('segments = "missing.csv"\n', encoding="utf-8")
    with pytest.raises(tel400.PlanError, match="field 'segments'"):
        tel400.load_plans(tmp_path / "q.toml")


def test_with_and_without_number():
    plans = tel400.load_plans(EXAMPLES / "manual.toml")
    extra = tel400.PlanSet.from_dict({"numbers": [{"number": "4009990000"}]}).numbers[0]
    bigger = plans.with_number(extra)
    assert bigger.get("400-999-0000") == extra
    assert bigger.without_number("4009990000") == plans
    assert plans.get("not a number") is None


@pytest.mark.parametrize(
    "entry, stored",
    [("1710*", "1710*"), ("+86 1710*", "1710*"), ("+86 21*", "021*"), ("0086 10*", "010*"), ("0571*", "0571*"), ("021-*", "021*")],
)
def test_blacklist_prefixes_are_written_like_normalised_numbers(entry, stored):
    plans = tel400.PlanSet.from_dict(one_number(blacklist=[entry]))
    assert plans.numbers[0].blacklist == (stored,)


def test_plan_repr_hides_the_pin():
    plans = tel400.PlanSet.from_dict(one_number(pin="8642"))
    assert "8642" not in repr(plans)


# -- bounds: every number a plan carries fits both engines; a plan's size is bounded -----------

BRIDGE = {"action": "bridge", "targets": ["13901010001"]}
TARIFF = {"local": "0.1", "long_distance": "0.3"}


@pytest.mark.parametrize(
    "fields, fragments",
    [
        ({"caps": [{"metric": "minutes", "per": "day", "limit": "1e30"}]}, ["caps[0].limit", "at most 1000000000"]),
        ({"caps": [{"metric": "minutes", "per": "day", "limit": 2 * 10**17}]}, ["caps[0].limit", "at most"]),
        ({"tariff": TARIFF, "caps": [{"metric": "cost", "per": "month", "limit": "9.3e12"}]}, ["caps[0].limit"]),
        ({"caps": [{"metric": "calls", "per": "day", "limit": 10**13}]}, ["caps[0].limit", "0 to 1000000000000"]),
        ({"tariff": {"local": "1e30", "long_distance": "1"}}, ["tariff.local", "at most 1000"]),
        ({"tariff": {"local": "1", "long_distance": "1001"}}, ["tariff.long_distance", "at most 1000"]),
        # shm:// slots hold 40-bit values: a cost cap of 1.1e6 units (1.1e12 millionths) would never be reached
        ({"tariff": TARIFF, "caps": [{"metric": "cost", "per": "month", "limit": "1000001"}]},
         ["caps[0].limit", "at most 1000000"]),
        ({"tariff": {"local": "0." + "0" * 60 + "1", "long_distance": "1"}}, ["tariff.local", "at most 32 characters"]),
        ({"tariff": {**TARIFF, "increment_s": 3601}}, ["tariff.increment_s", "1 to 3600"]),
        ({"default": {"action": "bridge", "targets": [{"to": "13901010001", "weight": 10**6 + 1}]}},
         ["default.targets[0].weight", "0 to 1000000"]),
    ],
)
def test_numbers_a_plan_carries_are_bounded(fields, fragments):
    expect_error(one_number(**fields), *fragments)


def _rules(n):
    return [{"name": f"r{i}", "targets": ["13901010001"]} for i in range(n)]


@pytest.mark.parametrize(
    "fields, fragments",
    [
        ({"rules": _rules(tel400.limits.MAX_RULES + 1)}, ["field 'rules'", f"at most {tel400.limits.MAX_RULES} rules"]),
        ({"default": {"action": "bridge", "targets": [f"1390101{i:04d}" for i in range(tel400.limits.MAX_TARGETS + 1)]}},
         ["default.targets", f"at most {tel400.limits.MAX_TARGETS} targets"]),
        ({"blacklist": [f"1390101{i:04d}" for i in range(tel400.limits.MAX_BLACKLIST + 1)]},
         ["field 'blacklist'", f"at most {tel400.limits.MAX_BLACKLIST} entries"]),
        ({"caps": [{"metric": "calls", "per": "day", "limit": 1}] * (tel400.limits.MAX_CAPS + 1)},
         ["field 'caps'", f"at most {tel400.limits.MAX_CAPS} caps"]),
        ({"calendar": {"holidays": [f"{y}-01-01..{y}-12-31" for y in range(2001, 2040)]}},
         ["calendar.holidays", f"at most {tel400.limits.MAX_CALENDAR_DAYS} days"]),
        ({"calendar": {"years": [2027] * 1000}}, ["calendar.years"]),
        # a byte per day between the first and the last year in the compiled engine: 1.7 s and 3.6 MB before
        ({"calendar": {"holidays": ["0001-01-01", "9999-12-31"]}}, ["calendar.holidays", "from 1970 to 2100"]),
        ({"calendar": {"workdays": ["2101-01-01"]}}, ["calendar.workdays", "from 1970 to 2100"]),
        ({"calendar": {"years": [1969]}}, ["calendar.years", "from 1970 to 2100"]),
        ({"rules": [{"name": "r", "provinces": ["CN-BJ"] * 1000, "targets": ["13901010001"]}]},
         ["field 'provinces'", "at most"]),
    ],
)
def test_what_one_plan_may_hold_is_bounded(fields, fragments):
    expect_error(one_number(**fields), *fragments)


def test_the_issue_holiday_flood_is_refused_quickly():
    # 9,999 one-year ranges: 22-33 s and +400 MB before; now refused at the bound
    holidays = [f"{2000 + i % 150}-01-01..{2000 + i % 150}-12-31" for i in range(9_999)]
    expect_error(one_number(calendar={"holidays": holidays}), "calendar.holidays", "at most")


def test_a_plan_at_every_bound_validates():
    tel400.PlanSet.from_dict({"numbers": [at_the_bounds()]})


def at_the_bounds() -> dict:
    """One number with every size and number at its bound (shared with the differential test)."""
    from tests.plans_at_bounds import plan_at_the_bounds

    return plan_at_the_bounds()


@pytest.mark.parametrize("zone", ["America", "Asia", "Etc", "x" * 300, "Asia/" + "y" * 300, "../../etc/passwd",
                                  "/etc/localtime", "Asia//Shanghai", "", "Asia/Shanghai\x00"])
def test_time_zones_that_are_not_zones(zone):
    expect_error(one_number(timezone=zone), "field 'timezone'", "unknown time zone")


def test_error_messages_never_render_more_than_they_show():
    laughs = ["lol"] * 10
    for _ in range(9):
        laughs = [laughs] * 10  # 10**10 strings, shared like YAML aliases
    expect_error(one_number(blacklist=laughs), "field 'blacklist[0]'", "...")
    expect_error(one_number(rules=[{"name": "r", "days": laughs, "targets": ["1"]}]), "field 'days'")
    expect_error(one_number(calendar={"holidays": laughs}), "calendar.holidays")
    error = expect_error({"numbers": laughs}, "numbers[0]")
    assert len(str(error)) < 300
    expect_error(one_number(rules=[{"name": "x" * 10**6, "targets": ["1"]}]), "bad rule name")
    assert len(str(expect_error(one_number(timezone="x" * 10**6), "timezone"))) < 300


def test_billion_laughs_yaml_is_refused_quickly(tmp_path):
    path = tmp_path / "laughs.yaml"
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        lines.append(f"{level}: &{level} [" + ",".join([f"*{previous}"] * 9) + "]")
    lines.append("numbers: [{number: '4001012345', blacklist: *i}]")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(tel400.PlanError, match="values"):
        tel400.load_plans(path)


@pytest.mark.parametrize("fmt, text", [("json", '{"numbers": %s}' % ("1" * 5000)), ("toml", "numbers = %s" % ("1" * 5000)),
                                       ("yaml", "numbers: %s" % ("1" * 5000))])
def test_integers_too_long_to_read(fmt, text):
    with pytest.raises(tel400.PlanError, match="digits"):
        tel400.loads_plans(text, fmt)


@pytest.mark.parametrize("value, shown", [
    ("short", "'short'"),
    ("x" * 100, "'" + "x" * 56 + "..."),
    (10**5000, "<a 16610-bit integer>"),  # str() would raise: more than 4300 digits
    ({"a": [1, (2, 3)], "b": None}, "{'a': [1, (2, 3)], 'b': None}"),
    (b"\x00" * 10**6, ("b'" + "\\x00" * 14)[:57] + "..."),
], ids=["short", "long", "huge-int", "nested", "bytes"])
def test_show_renders_at_most_what_it_shows(value, shown):
    from tel400._show import show

    assert show(value) == shown and len(show(value)) <= 60


def test_show_of_a_shared_tree_of_a_billion_values_is_short():
    from tel400._show import show

    tree = ["lol"]
    for _ in range(30):
        tree = [tree, tree]  # 2**30 leaves, 31 lists
    assert show(tree).endswith("...") and len(show(tree)) == 60


def test_size_bounds_are_tuned_by_environment_variables():
    import os
    import subprocess
    import sys

    code = ("import tel400; print(tel400.limits.MAX_RULES); "
            "tel400.PlanSet.from_dict({'numbers': [{'number': '4001012345', 'rules': "
            "[{'name': f'r{i}', 'targets': ['1']} for i in range(3)]}]})")
    env = {**os.environ, "TEL400_MAX_RULES": "2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "2" and "at most 2 rules" in out.stderr
    env["TEL400_MAX_RULES"] = "lots"
    out = subprocess.run([sys.executable, "-c", "import tel400"], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "TEL400_MAX_RULES: expected a whole number, got 'lots'" in out.stderr
    # beyond what the compiled engine's structures hold: refused at import, not when a plan overflows them
    env["TEL400_MAX_RULES"] = "1000"
    env["TEL400_MAX_CONDITION_ENTRIES"] = "70000"
    out = subprocess.run([sys.executable, "-c", "import tel400"], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "TEL400_MAX_CONDITION_ENTRIES: expected a whole number from 1 to 65535" in out.stderr
    env["TEL400_MAX_RULES"] = "600000"
    env["TEL400_MAX_CONDITION_ENTRIES"] = "1000"
    out = subprocess.run([sys.executable, "-c", "import tel400"], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "more than the compiled engine can hold" in out.stderr
    env["TEL400_MAX_RULES"] = "60000"  # the packed targets' text: rules x targets x the longest target
    env["TEL400_MAX_TARGETS"] = "200"
    out = subprocess.run([sys.executable, "-c", "import tel400"], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "TEL400_MAX_TARGETS (200) is more than the compiled engine can hold" in out.stderr
