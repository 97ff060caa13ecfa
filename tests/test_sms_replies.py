"""SMS auto-replies and opt-outs in the plan; Router.answer_sms and Router.admit_sms (both engines)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

import tel400
from tel400 import limits
from tel400.plans import DEFAULT_SMS, SmsReply
from tests.conftest import at, one_number, plans_from

NUMBER = "4001012345"
SMS_NUMBER = "10657" + NUMBER
PERSON = "13901012345"  # Beijing mobile
OTHER = "13801012345"
TUESDAY_10 = at(2026, 12, 1, 10, 0)
SATURDAY_10 = at(2026, 12, 5, 10, 0)

HOTEL = """
[[numbers]]
number = "4001012345"

  [[numbers.rules]]
  name    = "sms-desk"
  channel = "sms"
  targets = ["13901010009"]

  [[numbers.sms_replies]]
  name     = "where"
  keywords = ["你的酒店在哪", "地址", "hotel"]
  match    = "contains"
  reply    = "{province}的朋友您好：酒店在北京路1号。今天{date} {weekday}，现在{time}。订房请回复“订房”。"

  [[numbers.sms_replies]]
  name         = "booking"
  keywords     = "订房"
  reply        = "订房请拨打{number}，前台24小时为您服务。"
  days         = "workday"
  time         = "09:00-17:59"
  route_onward = true
"""


def error_of(tree) -> str:
    with pytest.raises(tel400.PlanError) as exc:
        tel400.PlanSet.from_dict(tree)
    return str(exc.value)


def replies(*items, **fields):
    return one_number(sms_replies=list(items), **fields)


# -- the plan -------------------------------------------------------------------------------------------


def test_defaults():
    plan = plans_from(replies({"keywords": "hi", "reply": "hello"})).numbers[0]
    (reply,) = plan.sms_replies
    assert reply == SmsReply("reply-1", ("hi",), "hello")
    assert plan.sms == DEFAULT_SMS
    assert DEFAULT_SMS.opt_out_words == ("TD", "退订", "T", "STOP", "取消")
    assert DEFAULT_SMS.opt_in_words == ("订阅", "START")
    assert (DEFAULT_SMS.reply_limit, DEFAULT_SMS.reply_window_s) == (5, 600)


@pytest.mark.parametrize("reply, field, message", [
    ({"keywords": "a", "reply": "x", "match": "regex"}, "sms_replies[1].match", "expected one of exact, prefix, contains"),
    ({"reply": "x"}, "sms_replies[1].keywords", "missing"),
    ({"keywords": "a"}, "sms_replies[1].reply", "missing"),
    ({"keywords": [], "reply": "x"}, "sms_replies[1].keywords", "non-empty list"),
    ({"keywords": ["ok", "？！ "], "reply": "x"}, "sms_replies[1].keywords[1]", "empty once spaces and punctuation"),
    ({"keywords": "a" * 71, "reply": "x"}, "sms_replies[1].keywords", "at most 70 characters"),
    ({"keywords": ["k"] * 101, "reply": "x"}, "sms_replies[1].keywords", "at most 100 keywords"),
    ({"keywords": "a", "reply": "{0.__class__}"}, "sms_replies[1].reply", "bad placeholder"),
    ({"keywords": "a", "reply": "{a!r}"}, "sms_replies[1].reply", "bad placeholder"),
    ({"keywords": "a", "reply": "hi {name}"}, "sms_replies[1].reply", "unknown placeholder {name}"),
    ({"keywords": "a", "reply": "hi {"}, "sms_replies[1].reply", "unbalanced"),
    ({"keywords": "a", "reply": "字" * 660 + "{caller}"}, "sms_replies[1].reply", "more than 10 SMS parts"),
    ({"keywords": "a", "reply": "  "}, "sms_replies[1].reply", "the text is empty"),
    ({"keywords": "a", "reply": "x", "name": "two words"}, "sms_replies[1].name", "bad reply name"),
    ({"keywords": "a", "reply": "x", "name": "first"}, "sms_replies[1].name", "unique"),
    ({"keywords": "a", "reply": "x", "time": "08:00-24:00"}, "sms_replies[1].time", "24:00"),
    ({"keywords": "a", "reply": "x", "days": "someday"}, "sms_replies[1].days", "someday"),
    ({"keywords": "a", "reply": "x", "dates": "2026-12-31..2026-12-01"}, "sms_replies[1].dates", "ends before"),
    ({"keywords": "a", "reply": "x", "provinces": ["Manchuria"]}, "sms_replies[1].provinces", "unknown province"),
    ({"keywords": "a", "reply": "x", "route_onward": "yes"}, "sms_replies[1].route_onward", "true or false"),
    ({"keywords": "a", "reply": "x", "channel": "sms"}, "sms_replies[1].channel", "unknown field"),
])
def test_reply_mistakes_name_the_field(reply, field, message):
    text = error_of(replies({"name": "first", "keywords": "x", "reply": "y"}, reply))
    assert f"number {NUMBER}: field '{field}'" in text
    assert message in text


def test_at_most_200_replies():
    many = [{"name": f"r{i}", "keywords": f"k{i}", "reply": "x"} for i in range(limits.MAX_SMS_REPLIES + 1)]
    assert "at most 200 SMS replies" in error_of(replies(*many))
    plans_from(replies(*many[:limits.MAX_SMS_REPLIES]))


@pytest.mark.parametrize("sms, field, message", [
    ({"opt_in_words": ["订阅", "ｔｄ"]}, "sms.opt_in_words", "both an opt-out and an opt-in word"),
    ({"reply_limit": 0}, "sms.reply_limit", "from 1 to 100"),
    ({"reply_limit": 101}, "sms.reply_limit", "from 1 to 100"),
    ({"reply_window_s": 59}, "sms.reply_window_s", "from 60 to 86400"),
    ({"reply_window_s": 86401}, "sms.reply_window_s", "from 60 to 86400"),
    ({"opt_out_reply": "{number.real}"}, "sms.opt_out_reply", "bad placeholder"),
    ({"opt_out_words": "？"}, "sms.opt_out_words", "empty once"),
    ({"opt_out_words": ["w"] * 51}, "sms.opt_out_words", "at most 50"),
    ({"colour": "red"}, "sms.colour", "unknown field"),
])
def test_sms_settings_mistakes_name_the_field(sms, field, message):
    text = error_of(one_number(sms=sms))
    assert f"field '{field}'" in text and message in text


def test_sms_part_is_validated():
    tariff = {"local": 0.1, "long_distance": 0.3}
    assert plans_from(one_number(tariff=tariff)).numbers[0].tariff.sms_part == 0
    assert plans_from(one_number(tariff=tariff | {"sms_part": "0.05"})).numbers[0].tariff.sms_part == Decimal("0.05")
    assert "field 'tariff.sms_part'" in error_of(one_number(tariff=tariff | {"sms_part": 1001}))
    assert "field 'tariff.sms_part'" in error_of(one_number(tariff=tariff | {"sms_part": -1}))


def test_the_plan_round_trips_through_to_dict_and_every_store(tmp_path):
    plans = plans_from(HOTEL)
    plans = plans.with_number(tel400.PlanSet.from_dict(one_number(
        tariff={"local": 0.1, "long_distance": 0.3, "sms_part": "0.05"},
        sms={"opt_out_words": ["不要了"], "reply_limit": 2, "reply_window_s": 3600, "opt_in_reply": "又见{number}"},
        sms_replies=[{"keywords": ["ＨＩ"], "match": "prefix", "reply": "hi", "provinces": "北京",
                      "dates": "2026-12-01..2026-12-31"}],
    )).numbers[0])
    assert tel400.PlanSet.from_dict(plans.to_dict()) == plans
    store = tel400.open_store(f"sqlite:///{tmp_path}/plans.db")
    store.replace_all(plans)
    assert store.load_number(NUMBER) == plans.numbers[0]
    assert store.load() == plans


# -- answering ------------------------------------------------------------------------------------------


@pytest.fixture
def hotel(make_router):
    return make_router(HOTEL)


@pytest.mark.parametrize("text", ["你的酒店在哪？", "请问你的酒店在哪", "ＨＯＴＥＬ！", "  Hotel ", "【地址】"])
def test_keyword_variants_get_the_reply(hotel, text):
    a = hotel.answer_sms(SMS_NUMBER, PERSON, text, TUESDAY_10)
    assert (a.kind, a.reason, a.rule) == ("reply", "ok", "where")
    assert a.reply == "北京的朋友您好：酒店在北京路1号。今天2026-12-01 周二，现在10:00。订房请回复“订房”。"
    assert a.parts == 1 and a.number == NUMBER and a.province == "CN-BJ" and a.route is None


def test_exact_prefix_and_contains(make_router):
    router = make_router(replies({"name": "e", "keywords": "价格", "reply": "E"},
                                 {"name": "p", "keywords": "房", "match": "prefix", "reply": "P"},
                                 {"name": "c", "keywords": "早餐", "match": "contains", "reply": "C"}))
    answer = lambda text: router.answer_sms(NUMBER, PERSON, text, TUESDAY_10).rule  # noqa: E731
    assert answer("价格？") == "e" and answer("价格多少") is None
    assert answer("房价") == "p" and answer("订房") is None
    assert answer("有早餐吗") == "c"


def test_conditions_are_the_rules_own_in_the_numbers_zone(hotel):
    a = hotel.answer_sms(SMS_NUMBER, PERSON, "订房", TUESDAY_10)
    assert (a.kind, a.rule, a.reply) == ("reply", "booking", "订房请拨打4001012345，前台24小时为您服务。")
    assert a.route is not None and a.route.targets == ("13901010009",) and a.route.channel == "sms"
    # Saturday is no workday: no reply matches, and the message goes onward as today.
    a = hotel.answer_sms(SMS_NUMBER, PERSON, "订房", SATURDAY_10)
    assert (a.kind, a.reason, a.reply) == ("none", "no_match", None)
    assert a.route.action == "bridge" and a.route.rule == "sms-desk"
    # A POSIX time is read in the number's zone: 02:00 UTC is 10:00 in Shanghai.
    a = hotel.answer_sms(SMS_NUMBER, PERSON, "订房", dt.datetime(2026, 12, 1, 2, 0, tzinfo=dt.timezone.utc).timestamp())
    assert a.rule == "booking"


def test_unknown_number_and_blacklist(make_router):
    router = make_router(replies({"keywords": "hi", "reply": "x"}, blacklist=[OTHER]))
    a = router.answer_sms("4009999999", PERSON, "hi")
    assert (a.number, a.kind, a.reply, a.reason, a.route) == ("4009999999", "none", None, "unknown_number", None)
    a = router.answer_sms(NUMBER, OTHER, "hi")
    assert (a.kind, a.reply, a.reason, a.route) == ("none", None, "blacklisted", None)
    a = router.answer_sms(NUMBER, OTHER, "TD")
    assert (a.kind, a.reason) == ("none", "blacklisted")


def test_opt_out_and_opt_in_words(make_router):
    router = make_router(replies({"keywords": "td please", "reply": "x"}))
    for i, word in enumerate(("TD", "ｔｄ", " 退订。", "T", "stop!", "取消")):
        a = router.answer_sms(NUMBER, f"1390101234{i}", word, TUESDAY_10)
        assert (a.kind, a.reason, a.rule) == ("opt_out", "ok", None), word
        assert a.reply == "您已退订4001012345的短信，不会再收到自动回复。回复“订阅”可恢复。"
    a = router.answer_sms(NUMBER, OTHER, "订阅", TUESDAY_10)
    assert (a.kind, a.reply) == ("opt_in", "您已重新订阅4001012345的短信。回复“TD”可退订。")
    # Words match exactly: a keyword reply that contains one is not an opt-out.
    assert router.answer_sms(NUMBER, "13701012345", "td please", TUESDAY_10).kind == "reply"


def test_own_words_replace_the_defaults(make_router):
    router = make_router(one_number(sms={"opt_out_words": ["不要了"], "opt_out_reply": "好的，{number}不再打扰。"}))
    assert router.answer_sms(NUMBER, PERSON, "TD").kind == "none"
    a = router.answer_sms(NUMBER, PERSON, "不要了！")
    assert (a.kind, a.reply) == ("opt_out", "好的，4001012345不再打扰。")


@pytest.mark.parametrize("sender, kind", [
    ("10086", "service"), ("106575551234567", "service"), (SMS_NUMBER, "service"), (NUMBER, "toll_free"),
    ("4008888888", "toll_free"), ("95588", "local"), ("+14155550100", "foreign"), ("anonymous", None),
    ("", None), (None, None), ("<script>", None),
])
def test_no_reply_to_what_is_not_a_persons_number(hotel, sender, kind):
    a = hotel.answer_sms(SMS_NUMBER, sender, "hotel", TUESDAY_10)
    assert (a.kind, a.reply, a.parts, a.reason, a.rule) == ("reply", None, 0, "not_replied", "where")
    assert tel400.numbers.kind_of(sender) == kind


def test_a_fixed_line_gets_a_reply(hotel):
    assert hotel.answer_sms(SMS_NUMBER, "010-12345678", "hotel", TUESDAY_10).reason == "ok"


def test_flood_guard_one_sender_gets_reply_limit_per_window(make_router):
    router = make_router(replies({"keywords": "hi", "reply": "hello"}, sms={"reply_limit": 3, "reply_window_s": 600}))
    start = TUESDAY_10.timestamp() // 600 * 600  # the start of a window
    reasons = [router.answer_sms(NUMBER, PERSON, "hi", start + i).reason for i in range(100)]
    assert reasons[:3] == ["ok"] * 3 and set(reasons[3:]) == {"flood_limited"}
    assert router.answer_sms(NUMBER, OTHER, "hi", start + 100).reason == "ok"  # per sender
    assert router.answer_sms(NUMBER, PERSON, "hi", start + 600).reason == "ok"  # the next window
    assert router.sms_answer_counts() == {"ok": 5, "flood_limited": 97}
    # An opt-out from a flooding sender is still an opt-out (the adapter records it); only the reply is held back.
    for second in (601, 602):  # the window's second and third replies
        a = router.answer_sms(NUMBER, PERSON, "TD", start + second)
        assert a.kind == "opt_out" and a.reason == "ok"
    a = router.answer_sms(NUMBER, PERSON, "TD", start + 603)
    assert (a.kind, a.reply, a.reason) == ("opt_out", None, "flood_limited")


def test_a_bot_answering_every_reply_gets_no_more_than_the_limit(make_router):
    router = make_router(replies({"keywords": "hi", "match": "contains", "reply": "hi there"}))
    sent = 0
    start = TUESDAY_10.timestamp() // 600 * 600
    text = "hi"
    for i in range(50):
        a = router.answer_sms(NUMBER, PERSON, text, start + i)
        if a.reply is None:
            continue
        sent += 1
        text = a.reply  # the bot echoes
    assert sent == 5


def test_parts_count_against_sms_caps(make_router):
    long_reply = "字" * 100  # two parts
    router = make_router(replies({"keywords": "hi", "reply": long_reply}, caps=[
        {"metric": "calls", "per": "day", "limit": 5, "channel": "sms"},
        {"metric": "calls", "per": "day", "limit": 1, "channel": "voice"},
        {"metric": "minutes", "per": "day", "limit": 0, "channel": "sms"},
    ]))
    reasons = [router.answer_sms(NUMBER, f"1390101234{i}", "hi", TUESDAY_10) for i in range(4)]
    assert [(a.reason, a.parts) for a in reasons] == [("ok", 2), ("ok", 2), ("cap_exceeded", 0), ("cap_exceeded", 0)]
    # 4 parts of 5 used: one more part is admitted, two are not.
    assert not router.admit_sms(NUMBER, PERSON, 2, TUESDAY_10).admitted
    assert router.admit_sms(NUMBER, PERSON, 1, TUESDAY_10) == tel400.SmsAdmission(True, "ok", Decimal(0))
    assert router.admit_sms(NUMBER, PERSON, 1, TUESDAY_10).reason == "cap_exceeded"
    assert router.admit_sms(NUMBER, PERSON, 1, at(2026, 12, 2)).admitted  # the next day
    # The voice cap and the minutes cap were not touched by SMS.
    assert router.route(NUMBER, PERSON, TUESDAY_10).action == "reject"  # (no rule: closed, not cap_exceeded)
    usage = {u.label: u.used for u in router.cap_usage(NUMBER, TUESDAY_10)}
    assert usage == {"calls/day/number/sms": 5, "calls/day/number/voice": 0, "minutes/day/number/sms": 0}


def test_a_refused_reply_does_not_use_the_senders_allowance(make_router):
    router = make_router(replies({"keywords": "hi", "reply": "x"}, sms={"reply_limit": 1},
                                 caps=[{"metric": "calls", "per": "hour", "limit": 0, "channel": "sms"}]))
    assert router.answer_sms(NUMBER, PERSON, "hi", TUESDAY_10).reason == "cap_exceeded"
    router.reload(plans_from(replies({"keywords": "hi", "reply": "x"}, sms={"reply_limit": 1})))
    assert router.answer_sms(NUMBER, PERSON, "hi", TUESDAY_10).reason == "ok"  # the reload is seen at once
    assert router.answer_sms(NUMBER, PERSON, "hi", TUESDAY_10).reason == "flood_limited"


def test_cost_caps_count_parts_at_the_sms_tariff(make_router):
    router = make_router(one_number(
        tariff={"local": 0.1, "long_distance": 0.3, "sms_part": "0.1"},
        caps=[{"metric": "cost", "per": "month", "limit": "0.5", "channel": "sms"},
              {"metric": "cost", "per": "month", "limit": 0, "channel": "any"}],
    ))
    assert router.admit_sms(NUMBER, PERSON, 3, TUESDAY_10) == tel400.SmsAdmission(True, "ok", Decimal("0.3"))
    assert router.admit_sms(NUMBER, PERSON, 3, TUESDAY_10) == tel400.SmsAdmission(False, "cap_exceeded", Decimal("0.3"))
    assert router.admit_sms(NUMBER, PERSON, 2, TUESDAY_10).admitted
    assert not router.admit_sms(NUMBER, PERSON, 1, TUESDAY_10).admitted


def test_per_recipient_caps_and_unknown_numbers(make_router):
    router = make_router(one_number(caps=[{"metric": "calls", "per": "day", "limit": 2, "scope": "caller",
                                           "channel": "sms"}]))
    assert router.admit_sms(NUMBER, PERSON, 2, TUESDAY_10).admitted
    assert not router.admit_sms(NUMBER, PERSON, 1, TUESDAY_10).admitted
    assert router.admit_sms(NUMBER, OTHER, 2, TUESDAY_10).admitted
    assert router.admit_sms("4009999999", PERSON, 1) == tel400.SmsAdmission(False, "unknown_number", Decimal(0))
    for parts in (0, 11, 1.0, True, "1"):
        with pytest.raises(ValueError, match="parts"):
            router.admit_sms(NUMBER, PERSON, parts)


class DeadCounters(tel400.MemoryCounters):
    def acquire(self, checks, *, dry_run=False):
        raise tel400.BackendError("redis timed out after 20 ms")


@pytest.mark.parametrize("policy", ["allow", "reject"])
def test_backend_errors_follow_the_plans_policy(make_router, policy):
    router = make_router(replies({"keywords": "hi", "reply": "x"}, on_backend_error=policy,
                                 caps=[{"metric": "calls", "per": "day", "limit": 9, "channel": "sms"}]),
                         DeadCounters())
    a = router.answer_sms(NUMBER, PERSON, "hi", TUESDAY_10)
    admission = router.admit_sms(NUMBER, PERSON, 1, TUESDAY_10)
    # H2: the flood guard fails closed whatever the policy; only admit_sms's caps follow it.
    assert (a.reply, a.reason) == (None, "backend_error")
    if policy == "allow":
        assert admission.admitted
        assert router.backend_error_counts() == {**router.backend_error_counts(), "allow": 1, "reject": 1}
    else:
        assert admission == tel400.SmsAdmission(False, "backend_error", Decimal(0))
        assert router.backend_error_counts()["reject"] == 2


def test_a_full_counter_backend_does_not_turn_the_flood_guard_off(make_router):
    """H2: with max_keys reached the memory backend refuses new keys; a bot must still get no reply."""
    router = make_router(replies({"keywords": "hi", "reply": "x"}, on_backend_error="allow"),
                         tel400.MemoryCounters(max_keys=50))
    for i in range(60):  # one-off senders fill the backend
        router.answer_sms(NUMBER, f"139{i:08d}", "hi", TUESDAY_10)
    bot = [router.answer_sms(NUMBER, "13700000001", "hi", TUESDAY_10) for _ in range(100)]
    assert sum(a.reply is not None for a in bot) == 0
    assert {a.reason for a in bot} == {"backend_error"}


@pytest.mark.parametrize("part, limit, admitted", [("0.0000015", "0.00001", 5), ("0.0000009", "0.000005", 5),
                                                    ("0.05", "0.10", 2)])
def test_cost_caps_round_a_part_up_as_billing_does(make_router, part, limit, admitted):
    """L2: a part of 0.0000015 counts 0.000002 (ROUND_CEILING to the millionth, like a call), not 0.000001."""
    router = make_router(replies({"keywords": "hi", "reply": "x"}, tariff={"local": 0.1, "long_distance": 0.3,
                                                                           "sms_part": Decimal(part)},
                                 caps=[{"metric": "cost", "per": "day", "limit": Decimal(limit), "channel": "sms"}]))
    got = [router.admit_sms(NUMBER, PERSON, 1, TUESDAY_10) for _ in range(20)]
    assert sum(a.admitted for a in got) == admitted
    assert got[0].cost == Decimal(part).quantize(Decimal("0.000001"), rounding="ROUND_CEILING")


def test_explain_traces_and_counts_nothing(hotel):
    a = hotel.answer_sms(SMS_NUMBER, PERSON, "订房", SATURDAY_10, explain=True)
    assert a.reason == "no_match"
    trace = "\n".join(a.trace)
    assert "reply 'where': no keyword matches (contains)" in trace
    assert "reply 'booking': keyword '订房' matched but day sat (holiday) not in workday" in trace
    assert a.route.explain is not None  # the onward decision is explained too
    for _ in range(10):
        a = hotel.answer_sms(SMS_NUMBER, PERSON, "hotel", TUESDAY_10, explain=True)
        assert a.reason == "ok" and a.reply and any("dry run" in line for line in a.trace)
    assert hotel.sms_answer_counts() == {}
    assert hotel.answer_sms(SMS_NUMBER, PERSON, "hotel", TUESDAY_10).trace == ()
    flood = hotel.answer_sms(SMS_NUMBER, "10086", "hotel", TUESDAY_10, explain=True)
    assert any("not a person's number (service)" in line for line in flood.trace)


def test_hostile_text_is_answered_not_raised(hotel):
    for text in ("", "\x00\x01", "{number}", "{0.__class__}", "🙂" * 5000, "hotel" + "x" * 1_000_000, "\ud800"):
        a = hotel.answer_sms(SMS_NUMBER, PERSON, text, TUESDAY_10)
        assert a.kind in ("reply", "none")
    # A sender's text never reaches a template: a reply to "{number}" is the plan's text.
    assert hotel.answer_sms(SMS_NUMBER, OTHER, "hotel {caller}{{", TUESDAY_10).reply.startswith("北京的朋友")
    with pytest.raises(ValueError, match="text"):
        hotel.answer_sms(SMS_NUMBER, PERSON, None)
    with pytest.raises(ValueError):
        hotel.answer_sms(SMS_NUMBER, PERSON, "hi", float("nan"))


def test_only_the_first_characters_are_compared(make_router):
    router = make_router(replies({"keywords": "end", "match": "contains", "reply": "x"}))
    assert router.answer_sms(NUMBER, PERSON, "a" * (limits.SMS_MATCH_CHARS - 3) + "end").rule == "reply-1"
    assert router.answer_sms(NUMBER, PERSON, "a" * limits.SMS_MATCH_CHARS + "end").reason == "no_match"


def test_a_routers_programs_are_bounded_and_follow_updates(make_router):
    router = make_router({"numbers": [{"number": f"40010{i:05d}", "sms_replies": [{"keywords": "hi", "reply": f"n{i}"}]}
                                      for i in range(5)]})
    router._sms_programs.size = 2
    for i in range(5):
        assert router.answer_sms(f"40010{i:05d}", PERSON, "hi").reply == f"n{i}"
    assert len(router._sms_programs) == 2
    plan = tel400.plans.validate_number({"number": "4001000001", "sms_replies": [{"keywords": "hi", "reply": "new"}]},
                                        router.settings)
    router.update([plan])
    assert router.answer_sms("4001000001", OTHER, "hi").reply == "new"
    router.update(removed=["4001000001"])
    assert router.answer_sms("4001000001", OTHER, "hi").reason == "unknown_number"


def test_a_router_from_a_store_answers(tmp_path, impl):
    store = tel400.open_store(f"sqlite:///{tmp_path}/plans.db")
    store.replace_all(plans_from(HOTEL))
    router = tel400.Router.from_store(store, implementation=impl.name)
    assert router.answer_sms(SMS_NUMBER, PERSON, "hotel", TUESDAY_10).rule == "where"


def test_cli_answers_an_sms(tmp_path, capsys):
    from tel400 import cli

    path = tmp_path / "hotel.toml"
    path.write_text(HOTEL, encoding="utf-8")
    assert cli.main(["route", str(path), SMS_NUMBER, PERSON, "--sms", "ＨＯＴＥＬ？", "--at", "2026-12-01T10:00",
                     "--explain"]) == 0
    out = capsys.readouterr().out
    assert "kind:     reply" in out and "rule:     where" in out and "北京的朋友您好" in out
    assert "reply 'where': keyword 'hotel' (contains) matched at 2026-12-01 Tue 10:00" in out
    assert cli.main(["route", str(path), SMS_NUMBER, PERSON, "--sms", "hi", "--json"]) == 0
    import json

    answer = json.loads(capsys.readouterr().out)
    assert answer["reason"] == "no_match" and answer["route"]["targets"] == ["13901010009"]
    assert cli.main(["check", str(path)]) == 0
    assert "4001012345: 1 rules, 2 SMS replies" in capsys.readouterr().out


def test_answers_are_counted_by_reason_in_the_metrics(make_router):
    from prometheus_client import CollectorRegistry, generate_latest

    import tel400.metrics

    router = make_router(replies({"keywords": "hi", "reply": "x"}, sms={"reply_limit": 2}))
    registry = CollectorRegistry()
    tel400.metrics.register(router, registry)
    for _ in range(5):
        router.answer_sms(NUMBER, PERSON, "hi", TUESDAY_10)
    router.answer_sms(NUMBER, "10086", "hi", TUESDAY_10)
    router.answer_sms(NUMBER, PERSON, "hi", TUESDAY_10, explain=True)  # counts nothing
    text = generate_latest(registry).decode()
    assert 'tel400_sms_replies_total{reason="ok"} 2.0' in text
    assert 'tel400_sms_replies_total{reason="flood_limited"} 3.0' in text
    assert 'tel400_sms_replies_total{reason="not_replied"} 1.0' in text


# -- both engines answer alike ----------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tel400 import _impl  # noqa: E402

from .test_differential import CALLERS, CODES, ZONES, a_date, cap, date_range, day_token, slot  # noqa: E402

KEYWORDS = ["hi", "价格", "订房", "hotel", "ＨＥＬＬＯ", "td please", "a"]
TEXTS = ["hi", "ＨＩ！", " hi ", "hi there", "价格多少？", "订房", "【hotel】", "hello", "TD", "ｔｄ", "订阅", "stop!",
         "start", "", "？？", "a", "td please"]
TEMPLATES = ["ok", "{province}{date}{time}{weekday}", "来自{caller}的{number}", "字" * 80, "a€" * 100,
             "{{x}} {caller}"]
SENDERS = ["13901012345"] * 20 + ["13801012345"] * 6 + CALLERS + ["106574001012345", "4001012345"]


@st.composite
def sms_reply(draw, index):
    out = {"name": f"r{index}", "keywords": draw(st.lists(st.sampled_from(KEYWORDS), min_size=1, max_size=3)),
           "reply": draw(st.sampled_from(TEMPLATES))}
    if draw(st.booleans()):
        out["match"] = draw(st.sampled_from(["exact", "prefix", "contains"]))
    if draw(st.integers(0, 3)) == 0:
        out["provinces"] = draw(st.lists(st.sampled_from(CODES), min_size=1, max_size=3, unique=True))
    if draw(st.integers(0, 3)) == 0:
        out["days"] = draw(day_token)
    if draw(st.integers(0, 3)) == 0:
        out["time"] = draw(st.lists(slot, min_size=1, max_size=2))
    if draw(st.integers(0, 5)) == 0:
        out["dates"] = draw(st.lists(date_range(), min_size=1, max_size=2))
    if draw(st.booleans()):
        out["route_onward"] = True
    return out


@st.composite
def sms_plan(draw, number):
    sms_caps = draw(st.lists(st.fixed_dictionaries({
        "metric": st.sampled_from(["calls", "cost", "minutes"]), "per": st.sampled_from(["hour", "day", "month"]),
        "limit": st.sampled_from([0, 1, 2, 3, 7, 100]), "scope": st.sampled_from(["number", "caller"]),
        "channel": st.just("sms")}), max_size=2))
    return {
        "number": number,
        "timezone": draw(st.sampled_from(ZONES)),
        "on_backend_error": draw(st.sampled_from(["allow", "reject"])),
        "tariff": {"local": "0.1", "long_distance": "0.3", "sms_part": draw(st.sampled_from(["0", "0.5", "1000"]))},
        "caps": sms_caps + draw(st.lists(cap(), max_size=1)),
        "rules": [{"name": "desk", "channel": "sms", "strategy": "sequential", "targets": ["13901010009"]}],
        "blacklist": draw(st.lists(st.sampled_from(["13800000000", "anonymous", "1390101234*"]), max_size=1)),
        "sms_replies": [draw(sms_reply(i)) for i in range(draw(st.integers(0, 4)))]
        + [{"name": "catch", "keywords": "hi", "match": "prefix", "reply": "ok"}],
        "sms": {"reply_limit": draw(st.integers(1, 3)), "reply_window_s": draw(st.sampled_from([60, 600])),
                **({"opt_out_words": ["TD", "hi"]} if draw(st.integers(0, 4)) == 0 else {})},
        **({"calendar": {"holidays": [str(draw(a_date))]}} if draw(st.integers(0, 4)) == 0 else {}),
    }


@st.composite
def sms_events(draw):
    return (draw(st.sampled_from(["answer", "answer", "answer", "explain", "admit"])),
            draw(st.sampled_from(["106574001012345"] * 4 + ["4001012345", "400-153-2532", "4009999999", "junk"])),
            draw(st.sampled_from(SENDERS)),
            draw(st.sampled_from(TEXTS + ["hi", "TD", "ＨＩ！"] * 3) | st.text(max_size=12)),
            # Most events in one window of the sender's allowance, a few across windows, hours and days.
            dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc).timestamp() + draw(st.sampled_from([0] * 6 + [86400]))
            + draw(st.sampled_from([0] * 6 + [5 * 3600])) + draw(st.sampled_from([0, 1, 2, 59, 60, 61, 599, 600])),
            draw(st.integers(1, 10)))


def _same(answer):
    """An answer or admission as fields; an onward decision without its explain steps."""
    import attrs

    fields = attrs.asdict(answer, recurse=False)
    route = fields.get("route")
    if route is not None:
        fields["route"] = {k: v for k, v in route._asdict().items() if k != "explain"}
    return fields


@pytest.mark.skipif("cython" not in _impl.ENGINES, reason="needs the compiled engine")
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.sampled_from(["4001012345", "4001532532"]), min_size=1, max_size=2, unique=True).map(
    lambda numbers: ["4001012345"] + [n for n in numbers if n != "4001012345"]).flatmap(
    lambda numbers: st.tuples(*[sms_plan(n) for n in numbers])), st.lists(sms_events(), min_size=1, max_size=30))
def test_both_engines_answer_sms_alike(plans, events):
    tree = {"numbers": list(plans)}
    routers = [tel400.Router(tel400.PlanSet.from_dict(tree), implementation=name, seed=1) for name in ("cython", "python")]
    for what, dialed, sender, text, when, parts in events:
        if what == "admit":
            got = [_same(r.admit_sms(dialed, sender, parts, when)) for r in routers]
        else:
            got = [_same(r.answer_sms(dialed, sender, text, when, explain=what == "explain")) for r in routers]
        assert got[0] == got[1], (what, dialed, sender, text, when)
    assert routers[0].sms_answer_counts() == routers[1].sms_answer_counts()
    usage = [[(u.label, u.used) for n in ("4001012345", "4001532532") for u in r.cap_usage(n, events[-1][4])]
             for r in routers]
    assert usage[0] == usage[1]


def test_the_portal_editors_form_carries_sms_replies_settings_and_the_sms_price():
    from tel400_http.portal.pages import editor_form as ef

    stored = tel400.plans.dumped_plan(plans_from(one_number(
        tariff={"local": 0.1, "long_distance": 0.3, "sms_part": "0.05"},
        sms_replies=[{"keywords": "hi", "reply": "hello {caller}"}], sms={"reply_limit": 2},
    )).numbers[0])
    fields = ef.model_to_fields(ef.tree_to_model(stored))
    assert fields["tariff.sms_part"] == ["0.05"]
    fields["tariff.sms_part"] = ["0.08"]
    tree = ef.model_to_tree(ef.fields_to_model(fields), kept=stored)
    plan = tel400.plans.validate_number(tree, tel400.PlanSet())
    assert plan.tariff.sms_part == Decimal("0.08")
    assert plan.sms_replies == plans_from({"numbers": [stored]}).numbers[0].sms_replies
    assert plan.sms.reply_limit == 2


def test_the_docs_examples_load_and_answer_as_shown(make_router):
    import re

    from tests.conftest import ROOT

    text = (ROOT / "docs" / "sms.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    router = make_router(blocks[0])
    a = router.answer_sms("106574001012345", "13901012345", "你的酒店在哪？")
    assert (a.kind, a.reason, a.rule, a.reply) == ("reply", "ok", "where", "北京的朋友您好：酒店在北京路1号。订房请回复“订房”。")
    assert router.answer_sms("106574001012345", "13901012345", "hello").route.targets == ("13901010009",)
    for block in blocks[1:]:  # the [numbers.sms] table and the caps, each in a number of its own
        body = block if "[[numbers]]" in block else '[[numbers]]\nnumber = "4001012345"\n' + block
        assert plans_from(body).numbers[0].number == NUMBER
