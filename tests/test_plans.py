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
