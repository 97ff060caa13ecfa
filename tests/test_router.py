"""The router: design.md's decision order, one feature of the manual at a time."""

from __future__ import annotations

import datetime as dt
import threading
import zoneinfo
from collections import Counter
from decimal import Decimal

import pytest
import structlog.testing

import tel400
from tel400 import pins

from .conftest import EXAMPLES, SHANGHAI, at, one_number

BJ, SH, GD, TJ = "13901012345", "02112345678", "02087654321", "13902001234"
TUESDAY_10 = at(2026, 11, 24, 10, 0)


def bridge(*targets, **extra):
    return {"targets": list(targets), **extra}


# --- 1. the number --------------------------------------------------------------


def test_unknown_number(make_router):
    router = make_router(one_number(rules=[bridge("13901010001")]))
    d = router.route("4009999999", BJ, at=TUESDAY_10)
    assert (d.action, d.reason, d.prompt, d.targets, d.rule) == ("reject", "unknown_number", "unknown_number", (), None)
    assert d.province == "CN-BJ"  # filled whatever the decision
    assert router.route("garbage", BJ).reason == "unknown_number"
    assert router.route("", None).reason == "unknown_number"


def test_dialed_number_in_any_form_and_sms_access_code(make_router):
    router = make_router(one_number(rules=[bridge("13901010001")]))
    for dialed in ("4001012345", "400-101-2345", "+86 400 101 2345", "106574001012345"):
        d = router.route(dialed, BJ, at=TUESDAY_10, channel="sms" if dialed.startswith("10657") else "voice")
        assert d.action == "bridge", dialed
        assert d.number == "4001012345"


def test_global_unknown_number_prompt_renamed(make_router):
    router = make_router({"prompts": {"unknown_number": "no_such_number"}, **one_number()})
    assert router.route("4009999999", BJ).prompt == "no_such_number"


# --- 2. blacklist and callers without a number ------------------------------------


def test_blacklists_exact_prefix_global_anonymous(make_router):
    router = make_router(
        {
            "blacklist": ["+86 138-0000-0000"],
            **one_number(blacklist=["1710*", "021 1234 5678", "anonymous"], rules=[bridge("13901010001")]),
        }
    )
    for caller in ("13800000000", "8613800000000", "17101234567", "+86 21 1234 5678", None, "", "anonymous", "x"):
        d = router.route("4001012345", caller, at=TUESDAY_10)
        assert (d.action, d.reason, d.prompt) == ("reject", "blacklisted", "blacklisted"), caller
    assert router.route("4001012345", "17111234567", at=TUESDAY_10).action == "bridge"


def test_blacklist_comes_before_everything_else(make_router):
    router = make_router(one_number(blacklist=["13901012345"], pin="1234", rules=[bridge("13901010001")]))
    d = router.route("4001012345", BJ, pin="1234", at=TUESDAY_10)
    assert d.reason == "blacklisted"


def test_callers_without_a_number(make_router):
    rules = [bridge("13901010001", provinces=["CN-BJ"], name="bj"), bridge("13901010002", name="rest")]
    router = make_router(one_number(rules=rules))
    for caller in (None, "", "anonymous", "not a number", "+86 12"):
        d = router.route("4001012345", caller, at=TUESDAY_10)
        assert (d.rule, d.province, d.caller) == ("rest", None, None), caller
    strict = make_router(one_number(rules=rules, reject_unknown_callers=True))
    d = strict.route("4001012345", "anonymous", at=TUESDAY_10)
    assert (d.action, d.reason, d.prompt) == ("reject", "bad_caller", "bad_caller")
    assert strict.route("4001012345", BJ, at=TUESDAY_10).rule == "bj"


# --- 3. PIN ---------------------------------------------------------------------


@pytest.fixture(params=["clear", "hashed"])
def pin_plan(request):
    secret = "4821"
    field = {"pin": secret} if request.param == "clear" else {"pin_hash": pins.make_hash(secret, n=1 << 4)}
    return one_number(rules=[bridge("13901010001")], **field), secret


def test_pin_required_then_accepted(make_router, pin_plan):
    tree, secret = pin_plan
    router = make_router(tree)
    d = router.route("4001012345", BJ, at=TUESDAY_10)
    assert (d.action, d.reason, d.prompt, d.targets) == ("collect_pin", "pin_required", "enter_pin", ())
    assert router.route("4001012345", BJ, pin=secret, at=TUESDAY_10).action == "bridge"
    wrong = router.route("4001012345", BJ, pin="0000", at=TUESDAY_10)
    assert (wrong.action, wrong.reason, wrong.prompt) == ("reject", "bad_pin", "bad_pin")
    assert router.route("4001012345", BJ, pin="48211", at=TUESDAY_10).reason == "bad_pin"
    assert router.route("4001012345", BJ, pin="", at=TUESDAY_10).reason == "bad_pin"


def test_pin_lockout_after_five_failures_for_an_hour(make_router, pin_plan):
    tree, secret = pin_plan
    router = make_router(tree)
    t0 = TUESDAY_10.timestamp()
    reasons = [router.route("4001012345", BJ, pin="0000", at=t0 + i).reason for i in range(5)]
    assert reasons == ["bad_pin"] * 4 + ["pin_locked"]
    # Locked even with the right PIN, and without one.
    assert router.route("4001012345", BJ, pin=secret, at=t0 + 60).reason == "pin_locked"
    assert router.route("4001012345", BJ, at=t0 + 60).reason == "pin_locked"
    # Other callers are not locked out.
    assert router.route("4001012345", SH, pin=secret, at=t0 + 60).action == "bridge"
    # An hour after the first failure the lock is gone.
    assert router.route("4001012345", BJ, pin=secret, at=t0 + 3599).reason == "pin_locked"
    assert router.route("4001012345", BJ, pin=secret, at=t0 + 3600).action == "bridge"


def test_right_pin_clears_the_failures(make_router, pin_plan):
    tree, secret = pin_plan
    router = make_router(tree)
    t0 = TUESDAY_10.timestamp()
    for i in range(4):
        router.route("4001012345", BJ, pin="0000", at=t0 + i)
    assert router.route("4001012345", BJ, pin=secret, at=t0 + 5).action == "bridge"
    assert [router.route("4001012345", BJ, pin="0000", at=t0 + 10 + i).reason for i in range(4)] == ["bad_pin"] * 4


def _rotating_guesses(router, t0, guesses, per_caller=4, start_pin=0):
    """The observed attack: a new caller id every ``per_caller`` guesses, PINs tried in order."""
    reasons = []
    for i in range(guesses):
        caller = f"139{(start_pin + i) // per_caller:08d}"
        reasons.append(router.route("4001012345", caller, pin=f"{start_pin + i:04d}", at=t0 + i).reason)
    return reasons


def test_rotating_callers_lock_the_number_for_everyone(make_router, pin_plan):
    tree, secret = pin_plan
    router = make_router(tree)
    t0 = TUESDAY_10.timestamp()
    # 1,239 guesses found the PIN through four guesses per caller id; now the
    # twentieth wrong PIN to the number locks it, whoever the callers are.
    reasons = _rotating_guesses(router, t0, 60, start_pin=5000)
    assert reasons == ["bad_pin"] * 19 + ["pin_locked"] * 41
    assert router.decision_counts()[("4001012345", "reject", "bad_pin")] == 19
    # for everyone, the right PIN included, with or without a PIN, for 10 minutes from the first failure
    assert router.route("4001012345", SH, pin=secret, at=t0 + 60).reason == "pin_locked"
    assert router.route("4001012345", GD, at=t0 + 60).reason == "pin_locked"
    assert router.route("4001012345", GD, pin=secret, at=t0 + 599).reason == "pin_locked"
    assert router.route("4001012345", GD, pin=secret, at=t0 + 600).action == "bridge"
    # other numbers are not touched
    assert router.pin_event_counts() == {("number_locked", "4001012345"): 1}


class _FailingPinCounters(tel400.MemoryCounters):
    """A counter backend whose PIN counts fail, as a dead Redis or a full memory:// table does."""

    def pin_failures(self, key, now, window_s):
        raise tel400.BackendError("down")

    def add_pin_failure(self, key, now, window_s):
        raise tel400.BackendError("down")


@pytest.mark.parametrize("policy", ["allow", "reject"])
def test_a_failing_backend_never_gives_a_guesser_more_tries(make_router, pin_plan, policy):
    """With the counts unreadable, on_backend_error = "allow" let every guess through to the
    PIN check: unlimited guesses.  The router then counts wrong PINs per number itself."""
    tree, secret = pin_plan
    tree["numbers"][0]["on_backend_error"] = policy
    router = make_router(tree, _FailingPinCounters())
    t0 = TUESDAY_10.timestamp()
    reasons = _rotating_guesses(router, t0, 40, start_pin=5000)
    if policy == "reject":
        assert set(reasons) == {"backend_error"}  # nothing is checked: no guess at all
        return
    assert reasons == ["bad_pin"] * 19 + ["pin_locked"] * 21
    assert router.route("4001012345", SH, pin=secret, at=t0 + 60).reason == "pin_locked"
    assert router.route("4001012345", SH, pin=secret, at=t0 + 600).action == "bridge"  # the window passed
    assert router.pin_event_counts() == {("number_locked", "4001012345"): 1}


def test_a_full_memory_table_never_gives_a_guesser_more_tries(make_router, impl, pin_plan):
    """Strangers fill memory:// first, so the number-wide key cannot be made: the lockout still holds."""
    tree, _secret = pin_plan
    counters = impl.MemoryCounters(max_keys=2)
    counters.add("filler-1", 1, 1, 3600)
    counters.add("filler-2", 1, 1, 3600)
    router = make_router(tree, counters)
    reasons = _rotating_guesses(router, TUESDAY_10.timestamp(), 30, start_pin=5000)
    assert reasons == ["bad_pin"] * 19 + ["pin_locked"] * 11


def test_number_lockout_is_logged_once_per_lockout(make_router, pin_plan):
    tree, _secret = pin_plan
    router = make_router(tree)
    t0 = TUESDAY_10.timestamp()
    with structlog.testing.capture_logs() as logs:
        _rotating_guesses(router, t0, 40)
        _rotating_guesses(router, t0 + 600, 25, start_pin=100)  # the next window: locked again, logged again
    locked = [e for e in logs if e["event"] == "pin_number_locked"]
    assert [(e["number"], e["failures"], e["window_s"], e["log_level"]) for e in locked] == \
        [("4001012345", 20, 600, "warning")] * 2
    assert router.pin_event_counts() == {("number_locked", "4001012345"): 2}


def test_a_brute_force_gets_twenty_guesses_per_window(make_router):
    router = make_router(one_number(rules=[bridge("1")], pin="9999"))
    t0 = TUESDAY_10.timestamp()
    reasons = _rotating_guesses(router, t0, 10_000, per_caller=1)  # every PIN, a new caller each, within 10,000 s
    assert reasons.count("ok") == 0
    assert reasons.count("bad_pin") <= 19 * (10_000 // 600 + 1)


def test_number_lockout_is_tunable_and_can_be_turned_off(make_router):
    tree = one_number(rules=[bridge("1")], pin="4821")
    t0 = TUESDAY_10.timestamp()
    strict = make_router(tree, pin_policy=pins.PinPolicy(number_failures=3, number_window_s=60))
    assert _rotating_guesses(strict, t0, 5, per_caller=1) == ["bad_pin"] * 2 + ["pin_locked"] * 3
    assert strict.route("4001012345", SH, pin="4821", at=t0 + 60).action == "bridge"
    off = make_router(tree, pin_policy=pins.PinPolicy(number_failures=0))
    assert _rotating_guesses(off, t0, 100) == ["bad_pin"] * 100
    per_caller = make_router(tree, pin_policy=pins.PinPolicy(caller_failures=2, caller_window_s=10))
    assert _rotating_guesses(per_caller, t0, 4, per_caller=4) == ["bad_pin", "pin_locked", "pin_locked", "pin_locked"]
    assert per_caller.route("4001012345", "13900000000", pin="4821", at=t0 + 10).action == "bridge"


@pytest.mark.parametrize("options, message", [
    ({"number_failures": -1}, "number_failures: expected a whole number from 0 to 100000"),
    ({"caller_failures": 0}, "caller_failures: expected a whole number from 1 to 1000"),
    ({"derivations": 0}, "derivations"),
    ({"derivations": 65}, "derivations"),
    ({"number_window_s": 1.5}, "number_window_s"),
    ({"number_window_s": 86401}, "number_window_s: expected a whole number from 1 to 86400"),
    ({"caller_window_s": 10**30}, "caller_window_s"),
    ({"number_failures": True}, "number_failures"),
])
def test_pin_policy_bounds(options, message):
    with pytest.raises(ValueError, match=message):
        pins.PinPolicy(**options)


@pytest.mark.parametrize("text, expected", [("20/600", (20, 600)), ("0/1", (0, 1))])
def test_pin_policy_from_options(text, expected):
    policy = pins.PinPolicy.from_options(text, 3)
    assert (policy.number_failures, policy.number_window_s, policy.derivations) == (*expected, 3)


@pytest.mark.parametrize("text", ["20", "20/", "/600", "x/600", "20/6.5", "²/600", "20/0"])
def test_pin_policy_from_bad_options(text):
    with pytest.raises(ValueError):
        pins.PinPolicy.from_options(text)


@pytest.mark.parametrize("caller", [None, "", "anonymous", "-number", "number", "13901012345", "*"])
def test_number_key_cannot_be_a_callers_key(caller):
    assert pins.number_key("4001012345") != pins.caller_key("4001012345", caller)
    assert pins.number_key("4001012345").startswith("tel400:{4001012345}:")


def test_explain_counts_nothing_towards_the_number_lockout(make_router):
    router = make_router(one_number(rules=[bridge("1")], pin="4821"))
    for i in range(30):
        assert router.explain("4001012345", f"139{i:08d}", pin="0000", at=TUESDAY_10).reason == "bad_pin"
    assert router.route("4001012345", BJ, pin="4821", at=TUESDAY_10).action == "bridge"
    assert router.pin_event_counts() == {}


def test_pin_compare_is_constant_time_by_construction():
    """A clear PIN is compared as a fixed-length digest with hmac.compare_digest."""
    check = pins.PinCheck(pin="4821")
    assert check("4821") and not check("4820") and not check("482") and not check(None)
    assert check._clear_digest is not None and len(check._clear_digest) == 32


@pytest.fixture
def derivations(monkeypatch) -> Counter:
    """Key derivations of hashed PINs, counted by candidate."""
    calls = Counter()
    real = pins._derive

    def counting(pin_hash, candidate):
        calls[candidate] += 1
        return real(pin_hash, candidate)

    monkeypatch.setattr(pins, "_derive", counting)
    return calls


def test_hashed_pin_derives_once_per_candidate(derivations):
    calls = derivations
    check = pins.PinCheck(pin_hash=pins.make_hash("4821", n=1 << 4))
    assert all(check("4821") for _ in range(5))
    assert not any(check("1111") for _ in range(5))
    assert calls == {"4821": 1, "1111": 1}


def test_right_pin_stays_cached_whatever_is_guessed(derivations):
    calls = derivations
    check = pins.PinCheck(pin_hash=pins.make_hash("4821", n=1 << 4))
    assert check("4821")
    assert not any(check(f"{i:04d}") for i in range(1000, 1000 + 3 * pins.PinCheck._CACHE_SIZE))
    assert check("4821") and calls["4821"] == 1


def test_verified_pins_survive_a_reload(make_router, derivations, monkeypatch):
    """A reload (any tenant's PUT) used to rebuild every PinCheck: each right PIN derived again."""
    calls = derivations
    tree = one_number(rules=[bridge("13901010001")], pin_hash=pins.make_hash("4821", n=1 << 4))
    other = {"numbers": tree["numbers"] + one_number(number="4007654321")["numbers"]}
    router = make_router(tree)
    assert router.route("4001012345", BJ, pin="4821", at=TUESDAY_10).action == "bridge"
    assert router.route("4001012345", BJ, pin="1111", at=TUESDAY_10).reason == "bad_pin"
    _failing_reload(router, monkeypatch, pins.make_hash("5555", n=1 << 4))
    router.reload(tel400.PlanSet.from_dict(tree, source="test"))
    router.reload(tel400.PlanSet.from_dict(other, source="test"))  # another number added
    assert router.route("4001012345", BJ, pin="4821", at=TUESDAY_10).action == "bridge"
    assert router.route("4001012345", BJ, pin="1111", at=TUESDAY_10).reason == "bad_pin"
    assert calls == {"4821": 1, "1111": 1}
    changed = one_number(rules=[bridge("13901010001")], pin_hash=pins.make_hash("5555", n=1 << 4))
    router.reload(tel400.PlanSet.from_dict(changed, source="test"))
    assert router.route("4001012345", SH, pin="4821", at=TUESDAY_10).reason == "bad_pin"
    assert router.route("4001012345", SH, pin="5555", at=TUESDAY_10).action == "bridge"
    router.reload(tel400.PlanSet.from_dict(one_number(number="4007654321"), source="test"))
    assert router._shared.pin_checks == {}  # kept only for the numbers and PINs in the plans


def _failing_reload(router, monkeypatch, pin_hash):
    """A reload that changes the PIN, then fails compiling the next number: nothing may change."""
    from tel400 import compiler

    real = compiler.Compiler.compile

    def compile_number(self, plan, **kwargs):
        if plan.number == "4007654321":
            raise ValueError("cannot compile this one")
        return real(self, plan, **kwargs)

    tree = {"numbers": one_number(rules=[bridge("13901010001")], pin_hash=pin_hash)["numbers"]
            + one_number(number="4007654321")["numbers"]}
    with monkeypatch.context() as m:
        m.setattr(compiler.Compiler, "compile", compile_number)
        with pytest.raises(tel400.PlanError, match="4007654321"):
            router.reload(tel400.PlanSet.from_dict(tree, source="test"))


@pytest.fixture
def slow_derivations(monkeypatch):
    """Key derivations that wait until the test lets them finish."""
    release = threading.Event()
    started = threading.Semaphore(0)
    real = pins._derive

    def slow(pin_hash, candidate):
        started.release()
        assert release.wait(30)
        return real(pin_hash, candidate)

    monkeypatch.setattr(pins, "_derive", slow)
    yield started, release
    release.set()


def test_derivations_in_flight_are_bounded(make_router, slow_derivations):
    started, release = slow_derivations
    tree = one_number(rules=[bridge("1")], pin_hash=pins.make_hash("4821", n=1 << 4))
    router = make_router(tree, pin_policy=pins.PinPolicy(derivations=2))
    release.set()
    assert router.route("4001012345", BJ, pin="4821", at=TUESDAY_10).action == "bridge"  # verified once: cached
    release.clear()
    guesses = [threading.Thread(target=router.route, args=("4001012345", f"1390000000{i}"),
                                kwargs={"pin": f"000{i}", "at": TUESDAY_10}) for i in range(2)]
    for thread in guesses:
        thread.start()
    for _ in guesses:
        assert started.acquire(timeout=30)  # both slots derive and wait
    # a third derivation is not started: answered at once, nothing counted against the caller
    busy = router.route("4001012345", SH, pin="9999", at=TUESDAY_10)
    assert (busy.action, busy.reason, busy.prompt) == ("reject", "backend_error", "backend_error")
    assert router.route("4001012345", BJ, pin="4821", at=TUESDAY_10).action == "bridge"  # cached: no slot needed
    assert router.route("4001012345", GD, at=TUESDAY_10).action == "collect_pin"
    release.set()
    for thread in guesses:
        thread.join(30)
    assert router.pin_event_counts() == {"busy": 1}
    counts = router.decision_counts()
    assert counts[("4001012345", "reject", "bad_pin")] == 2
    assert counts[("4001012345", "reject", "backend_error")] == 1
    assert router.backend_error_counts() == {}  # not a counter backend failure
    assert router.route("4001012345", SH, pin="9999", at=TUESDAY_10).reason == "bad_pin"  # slots free again


def test_busy_pin_check_ignores_on_backend_error_allow(make_router, slow_derivations):
    """A PIN that could not be checked is never waived, whatever the plan's policy."""
    started, release = slow_derivations
    tree = one_number(rules=[bridge("1")], pin_hash=pins.make_hash("4821", n=1 << 4), on_backend_error="allow")
    router = make_router(tree, pin_policy=pins.PinPolicy(derivations=1))
    guess = threading.Thread(target=router.route, args=("4001012345", BJ), kwargs={"pin": "0000", "at": TUESDAY_10})
    guess.start()
    assert started.acquire(timeout=30)
    assert router.route("4001012345", SH, pin="4821", at=TUESDAY_10).reason == "backend_error"
    d = router.explain("4001012345", SH, pin="4822", at=TUESDAY_10)
    assert d.reason == "backend_error" and "busy" in d.explain[-1].detail
    release.set()
    guess.join(30)


def test_werkzeug_style_pbkdf2_hash():
    import hashlib

    salt = "saltsalt"
    key = hashlib.pbkdf2_hmac("sha256", b"2468", salt.encode(), 1000)
    check = pins.PinCheck(pin_hash=f"pbkdf2:sha256:1000${salt}${key.hex()}")
    assert check("2468") and not check("2469")


# --- 4. rules: province, time, days, calendar, dates, channel -------------------


def manual_province_plan():
    return one_number(
        rules=[
            bridge("13901010001", name="beijing", provinces=["北京"]),
            bridge("02161234567", name="shanghai", provinces=["上海"]),
            bridge("02087654321", name="guangzhou", provinces=["广东"]),
        ],
        default={"action": "bridge", "targets": ["4008000000"]},
    )


@pytest.mark.parametrize(
    "caller, target, rule",
    [(BJ, "13901010001", "beijing"), (SH, "02161234567", "shanghai"), (GD, "02087654321", "guangzhou"), (TJ, "4008000000", None)],
)
def test_route_by_caller_province(make_router, caller, target, rule):
    d = make_router(manual_province_plan()).route("4001012345", caller, at=TUESDAY_10)
    assert (d.action, d.targets, d.rule, d.reason) == ("bridge", (target,), rule, "ok")


def manual_time_plan():
    return one_number(
        rules=[bridge("13901010001", name="A", time="08:00-11:59"), bridge("13901010002", name="B", time="12:00-19:59")],
        default={"action": "reject", "prompt": "closed"},
    )


@pytest.mark.parametrize(
    "hour, minute, expected",
    [(8, 0, "A"), (11, 59, "A"), (12, 0, "B"), (19, 59, "B"), (20, 0, None), (23, 30, None), (0, 0, None), (7, 59, None)],
)
def test_route_by_time_slot_to_the_minute(make_router, hour, minute, expected):
    d = make_router(manual_time_plan()).route("4001012345", BJ, at=at(2026, 11, 24, hour, minute))
    assert d.rule == expected
    if expected is None:
        assert (d.action, d.reason, d.prompt) == ("reject", "closed", "closed")


def test_slot_wrapping_midnight_with_weekdays(make_router):
    """design.md: 20:00-07:59 on mon-fri matches Friday 23:00 and Monday 02:00, not Saturday 02:00."""
    router = make_router(one_number(rules=[bridge("13901010001", name="night", days="mon-fri", time="20:00-07:59")]))
    assert router.route("4001012345", BJ, at=at(2026, 11, 27, 23, 0)).rule == "night"  # Friday
    assert router.route("4001012345", BJ, at=at(2026, 11, 23, 2, 0)).rule == "night"  # Monday
    assert router.route("4001012345", BJ, at=at(2026, 11, 28, 2, 0)).rule is None  # Saturday


def test_week_schedule_and_official_calendar(make_router):
    router = make_router(
        one_number(
            rules=[
                bridge("13901010001", name="workdays", days="workday", time="09:00-17:59"),
                bridge("13901010002", name="weekend", days="sat,sun"),
                bridge("13901010003", name="holidays", days="holiday"),
            ]
        )
    )
    assert router.route("4001012345", BJ, at=at(2026, 11, 24, 10)).rule == "workdays"  # Tuesday
    assert router.route("4001012345", BJ, at=at(2026, 10, 10, 10)).rule == "workdays"  # Saturday, 调休 working day
    assert router.route("4001012345", BJ, at=at(2026, 10, 1, 10)).rule == "holidays"  # National Day, Thursday
    assert router.route("4001012345", BJ, at=at(2026, 11, 28, 10)).rule == "weekend"  # ordinary Saturday
    assert router.route("4001012345", BJ, at=at(2026, 11, 24, 19)).rule is None  # workday, after hours


def test_plan_calendar_additions(make_router):
    tree = one_number(rules=[bridge("13901010001", name="open", days="workday")])
    tree["calendar"] = {"holidays": ["2026-11-24"]}  # a company holiday
    tree["numbers"][0]["calendar"] = {"workdays": ["2026-11-28"]}
    router = make_router(tree)
    assert router.route("4001012345", BJ, at=at(2026, 11, 24, 10)).rule is None
    assert router.route("4001012345", BJ, at=at(2026, 11, 28, 10)).rule == "open"
    assert router.route("4001012345", BJ, at=at(2026, 11, 25, 10)).rule == "open"


def test_date_ranges(make_router):
    router = make_router(
        one_number(rules=[bridge("13901010001", name="promo", dates="2026-12-01..2026-12-31", time="08:00-11:59")])
    )
    assert router.route("4001012345", BJ, at=at(2026, 12, 1, 8)).rule == "promo"
    assert router.route("4001012345", BJ, at=at(2026, 12, 31, 11, 59)).rule == "promo"
    assert router.route("4001012345", BJ, at=at(2026, 12, 31, 12)).rule is None
    assert router.route("4001012345", BJ, at=at(2027, 1, 1, 9)).rule is None
    assert router.route("4001012345", BJ, at=at(2026, 11, 30, 9)).rule is None


def test_channel_voice_and_sms(make_router):
    router = make_router(
        one_number(rules=[bridge("13901010009", name="sms", channel="sms"), bridge("13901010001", name="voice", channel="voice")])
    )
    assert router.route("4001012345", BJ, channel="sms").rule == "sms"
    assert router.route("106574001012345", BJ, channel="sms").targets == ("13901010009",)
    assert router.route("4001012345", BJ, channel="voice").rule == "voice"
    with pytest.raises(ValueError, match="channel"):
        router.route("4001012345", BJ, channel="fax")


def test_first_matching_rule_wins_and_rule_without_conditions_matches_all(make_router):
    router = make_router(one_number(rules=[bridge("1", name="first"), bridge("2", name="second")]))
    assert router.route("4001012345", None).rule == "first"


# --- time zones ------------------------------------------------------------------


def test_times_are_read_in_the_plans_zone(make_router):
    tree = {
        "numbers": [
            {"number": "4001012345", "timezone": "America/New_York", "rules": [bridge("1", name="office", time="09:00-16:59")]}
        ]
    }
    router = make_router(tree)
    new_york = zoneinfo.ZoneInfo("America/New_York")
    # 09:30 in New York is 13:30 UTC in summer (EDT) and 14:30 UTC in winter (EST).
    summer = dt.datetime(2026, 7, 1, 13, 30, tzinfo=dt.timezone.utc)
    winter = dt.datetime(2026, 12, 1, 14, 30, tzinfo=dt.timezone.utc)
    assert router.route("4001012345", BJ, at=summer).rule == "office"
    assert router.route("4001012345", BJ, at=winter).rule == "office"
    assert router.route("4001012345", BJ, at=dt.datetime(2026, 12, 1, 13, 30, tzinfo=dt.timezone.utc)).rule is None
    # The same instants as POSIX times, and as naive local times.
    assert router.route("4001012345", BJ, at=summer.timestamp()).rule == "office"
    assert router.route("4001012345", BJ, at=dt.datetime(2026, 3, 8, 9, 0)).rule == "office"  # DST starts at 02:00
    # Just after the spring-forward gap: 03:00 EDT is 07:00 UTC.
    assert router.route("4001012345", BJ, at=dt.datetime(2026, 3, 8, 7, 0, tzinfo=dt.timezone.utc)).rule is None
    assert dt.datetime(2026, 3, 8, 7, 0, tzinfo=dt.timezone.utc).astimezone(new_york).hour == 3


def test_at_none_means_now_and_bad_at_is_an_error(make_router):
    router = make_router(one_number(rules=[bridge("1")]))
    assert router.route("4001012345", BJ).action == "bridge"
    with pytest.raises(ValueError):
        router.route("4001012345", BJ, at=float("nan"))
    with pytest.raises(TypeError):
        router.route("4001012345", BJ, at="tomorrow")
    with pytest.raises(TypeError):  # refused whatever the rest of the call
        router.route("4009999999", BJ, at="tomorrow")


# Times a calendar (and datetime) can hold in every zone: years 1901 to 9998.
# Beyond, local dates overflow (253402272000 is 10000-01-01 in Shanghai).
@pytest.mark.parametrize("bad_at", [
    253402272000, 253402300799, 253402272000.5, 10**30, 1e300, -1e300, -10**12,
    dt.datetime(9999, 12, 31, 23, 0, tzinfo=dt.timezone.utc),
    dt.datetime(9999, 12, 31, 23, 0),
    dt.datetime(1, 1, 1, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
])
def test_at_outside_the_supported_years_is_a_value_error(make_router, bad_at):
    router = make_router(one_number(rules=[bridge("1")], caps=[{"metric": "calls", "per": "day", "limit": 5}]))
    for dialed in ("4001012345", "4009999999"):
        with pytest.raises(ValueError, match="at: expected a time from 1901 to 9998"):
            router.route(dialed, BJ, at=bad_at)
        with pytest.raises(ValueError, match="at: expected a time from 1901 to 9998"):
            router.explain(dialed, BJ, at=bad_at)


def test_at_at_the_edges_of_the_supported_years(make_router):
    router = make_router(one_number(rules=[bridge("1")]))
    first = dt.datetime(1901, 1, 1, tzinfo=dt.timezone.utc)
    last = dt.datetime(9998, 12, 31, 23, 59, tzinfo=dt.timezone.utc)
    for when in (first, last, first.timestamp(), last.timestamp(), int(last.timestamp())):
        assert router.route("4001012345", BJ, at=when).action == "bridge"


# --- selection ---------------------------------------------------------------------


def split_plan(strategy, weights=(30, 70), targets=("02150001000", "02150002000")):
    return one_number(
        rules=[{"name": "split", "strategy": strategy, "targets": [{"to": t, "weight": w} for t, w in zip(targets, weights)]}]
    )


def test_round_robin_gives_exactly_3_of_every_10(make_router):
    router = make_router(split_plan("round_robin"))
    picks = [router.route("4001012345", BJ, at=TUESDAY_10).targets[0] for _ in range(100)]
    for start in range(0, 100, 10):
        window = Counter(picks[start : start + 10])
        assert window == {"02150001000": 3, "02150002000": 7}
    # Smooth: A's three calls are spread out, never bunched.
    assert "".join("A" if p == "02150001000" else "B" for p in picks[:10]) == "BABBABBBAB"


def test_weighted_split_is_about_30_70(make_router):
    router = make_router(split_plan("weighted"), seed=7)
    n = 20000
    picks = Counter(router.route("4001012345", BJ, at=TUESDAY_10).targets[0] for _ in range(n))
    share = picks["02150001000"] / n
    # 30 % with a standard deviation of 0.32 %: six sigma either way.
    assert 0.281 < share < 0.319


def test_targets_list_every_target_once_pick_first_then_by_weight(make_router):
    targets = ("t1@a", "t2@a", "t3@a", "t4@a")
    router = make_router(split_plan("weighted", (10, 50, 50, 0), targets), seed=3)
    orders = {router.route("4001012345", BJ, at=TUESDAY_10).targets for _ in range(300)}
    assert orders == {
        ("t1@a", "t2@a", "t3@a", "t4@a"),
        ("t2@a", "t3@a", "t1@a", "t4@a"),
        ("t3@a", "t2@a", "t1@a", "t4@a"),
    }  # a zero weight is failover only: never first


def test_sequential_keeps_listed_order(make_router):
    router = make_router(split_plan("sequential", (1, 5, 9), ("a@x", "b@x", "c@x")))
    assert {router.route("4001012345", BJ).targets for _ in range(20)} == {("a@x", "b@x", "c@x")}
    spare_first = make_router(split_plan("sequential", (0, 5, 9), ("spare@x", "b@x", "c@x")))
    assert spare_first.route("4001012345", BJ).targets == ("b@x", "c@x", "spare@x")  # weight 0: failover only


def test_sticky_keeps_a_caller_and_moves_few_when_a_target_is_added(make_router):
    callers = [f"139{i:08d}" for i in range(2000)]
    three = make_router(split_plan("sticky", (1, 1, 1), ("a@x", "b@x", "c@x")))
    four = make_router(split_plan("sticky", (1, 1, 1, 1), ("a@x", "b@x", "c@x", "d@x")))
    before = {c: three.route("4001012345", c).targets for c in callers}
    assert all(three.route("4001012345", c).targets == before[c] for c in callers[:200])
    after = {c: four.route("4001012345", c).targets[0] for c in callers}
    moved = [c for c in callers if after[c] != before[c][0]]
    assert all(after[c] == "d@x" for c in moved)  # only to the new target
    assert 0.18 < len(moved) / len(callers) < 0.32  # about a quarter
    spread = Counter(before[c][0] for c in callers)
    assert all(550 < spread[t] < 790 for t in ("a@x", "b@x", "c@x"))


def test_sticky_respects_weights(make_router):
    router = make_router(split_plan("sticky", (1, 3), ("a@x", "b@x")))
    counts = Counter(router.route("4001012345", f"139{i:08d}").targets[0] for i in range(4000))
    assert 0.70 < counts["b@x"] / 4000 < 0.80


def test_queue_and_conference(make_router):
    router = make_router(
        one_number(
            rules=[{"name": "q", "channel": "voice", "action": "queue", "queue": "sales"}],
            default={"action": "conference", "room": "4001"},
        )
    )
    assert router.route("4001012345", BJ).targets == ("sales",)
    d = router.route("4001012345", BJ, channel="sms")
    assert (d.action, d.targets, d.reason, d.rule) == ("conference", ("4001",), "ok", None)


def test_rule_reject_reason_and_prompt(make_router):
    router = make_router(one_number(rules=[{"name": "no", "action": "reject", "prompt": "maintenance"}]))
    d = router.route("4001012345", BJ)
    assert (d.action, d.reason, d.prompt, d.rule) == ("reject", "rule_reject", "maintenance", "no")


def test_prompts_table_renames_standard_prompts(make_router):
    router = make_router(
        one_number(
            prompts={"closed": "after_hours", "limit_reached": "too_busy", "blacklisted": "go_away"},
            blacklist=["13800000000"],
            caps=[{"metric": "calls", "per": "day", "limit": 0}],
            rules=[bridge("1", time="08:00-08:59")],
        )
    )
    assert router.route("4001012345", BJ, at=at(2026, 11, 24, 20)).prompt == "after_hours"
    assert router.route("4001012345", BJ, at=at(2026, 11, 24, 8)).prompt == "too_busy"
    assert router.route("4001012345", "13800000000").prompt == "go_away"


def test_prompts_written_in_the_plan_are_used_as_written(make_router):
    router = make_router(
        one_number(
            prompts={"closed": "after_hours", "limit_reached": "too_busy"},
            caps=[{"metric": "calls", "per": "day", "limit": 0, "prompt": "limit_reached"}],
            rules=[bridge("1", time="08:00-08:59")],
            default={"action": "reject", "prompt": "closed"},
        )
    )
    assert router.route("4001012345", BJ, at=at(2026, 11, 24, 20)).prompt == "closed"
    assert router.route("4001012345", BJ, at=at(2026, 11, 24, 8)).prompt == "limit_reached"


# --- 5. caps ------------------------------------------------------------------------


def test_calls_cap_admits_exactly_n_per_day_in_the_plans_zone(make_router):
    router = make_router(one_number(rules=[bridge("1")], caps=[{"metric": "calls", "per": "day", "limit": 3}]))
    day = [router.route("4001012345", BJ, at=at(2026, 11, 24, 23, 59)) for _ in range(5)]
    assert [d.reason for d in day] == ["ok"] * 3 + ["cap_exceeded"] * 2
    assert (day[-1].action, day[-1].prompt, day[-1].rule) == ("reject", "limit_reached", "rule-1")
    # Local midnight in Shanghai (16:00 UTC) opens a new period.
    assert router.route("4001012345", BJ, at=at(2026, 11, 25, 0, 0)).reason == "ok"


@pytest.mark.parametrize(
    "per, same, next_",
    [
        ("hour", at(2026, 11, 24, 10, 59), at(2026, 11, 24, 11, 0)),
        ("week", at(2026, 11, 29, 23, 59), at(2026, 11, 30, 0, 0)),  # Sunday → Monday
        ("month", at(2026, 11, 30, 23, 59), at(2026, 12, 1, 0, 0)),
    ],
)
def test_cap_periods(make_router, per, same, next_):
    router = make_router(one_number(rules=[bridge("1")], caps=[{"metric": "calls", "per": per, "limit": 1}]))
    assert router.route("4001012345", BJ, at=at(2026, 11, 24, 10, 0)).reason == "ok"
    assert router.route("4001012345", BJ, at=same).reason == "cap_exceeded"
    assert router.route("4001012345", BJ, at=next_).reason == "ok"


def test_caller_scoped_cap(make_router):
    router = make_router(one_number(rules=[bridge("1")], caps=[{"metric": "calls", "per": "day", "limit": 1, "scope": "caller"}]))
    assert router.route("4001012345", BJ, at=TUESDAY_10).reason == "ok"
    assert router.route("4001012345", BJ, at=TUESDAY_10).reason == "cap_exceeded"
    assert router.route("4001012345", SH, at=TUESDAY_10).reason == "ok"
    assert router.route("4001012345", None, at=TUESDAY_10).reason == "ok"
    assert router.route("4001012345", "anonymous", at=TUESDAY_10).reason == "cap_exceeded"


def test_caps_are_all_or_nothing_and_first_reached_gives_the_prompt(make_router):
    router = make_router(
        one_number(
            rules=[bridge("1")],
            caps=[
                {"metric": "calls", "per": "day", "limit": 5, "prompt": "day_full"},
                {"metric": "calls", "per": "day", "limit": 2, "scope": "caller", "prompt": "you_again"},
                {"metric": "calls", "per": "hour", "limit": 3, "prompt": "hour_full"},
            ],
        )
    )
    results = [router.route("4001012345", BJ, at=TUESDAY_10) for _ in range(3)]
    assert [(d.reason, d.prompt) for d in results] == [("ok", None), ("ok", None), ("cap_exceeded", "you_again")]
    # The rejected call counted in no cap: the hour cap still has one place.
    assert router.route("4001012345", SH, at=TUESDAY_10).reason == "ok"
    d = router.route("4001012345", GD, at=TUESDAY_10)
    assert (d.reason, d.prompt) == ("cap_exceeded", "hour_full")
    router2 = make_router(
        one_number(rules=[bridge("1")], caps=[{"metric": "calls", "per": "day", "limit": 0, "prompt": "a"},
                                               {"metric": "calls", "per": "day", "limit": 0, "scope": "caller", "prompt": "b"}])
    )
    assert router2.route("4001012345", BJ).prompt == "a"


def test_rejected_calls_count_nothing(make_router):
    router = make_router(
        one_number(rules=[bridge("1", time="08:00-08:59")], caps=[{"metric": "calls", "per": "day", "limit": 1}])
    )
    for _ in range(5):
        assert router.route("4001012345", BJ, at=at(2026, 11, 24, 20)).reason == "closed"
    assert router.route("4001012345", BJ, at=at(2026, 11, 24, 8)).reason == "ok"


def test_cap_channel(make_router):
    router = make_router(one_number(rules=[bridge("1")], caps=[{"metric": "calls", "per": "day", "limit": 1, "channel": "sms"}]))
    assert all(router.route("4001012345", BJ, channel="voice", at=TUESDAY_10).reason == "ok" for _ in range(3))
    assert router.route("4001012345", BJ, channel="sms", at=TUESDAY_10).reason == "ok"
    assert router.route("4001012345", BJ, channel="sms", at=TUESDAY_10).reason == "cap_exceeded"


def test_minutes_cap_charged_at_call_end(make_router):
    router = make_router(one_number(rules=[bridge("1")], caps=[{"metric": "minutes", "per": "day", "limit": 5}]))
    assert router.route("4001012345", BJ, at=TUESDAY_10, call_id="c1").reason == "ok"
    charge = router.call_ended("c1", 181)  # 3 min 1 s → 4 started minutes
    assert charge.billed_s == 240 and charge.minutes == 4 and charge.cost is None
    assert router.route("4001012345", BJ, at=TUESDAY_10, call_id="c2").reason == "ok"  # 4 < 5
    router.call_ended("c2", 30)
    assert router.route("4001012345", BJ, at=TUESDAY_10, call_id="c3").reason == "cap_exceeded"
    assert router.call_ended("c3", 10) is None  # rejected calls are not remembered
    assert router.call_ended("c1", 10) is None  # ended twice
    assert router.call_ended("never", 10) is None


def test_every_connected_call_with_an_id_can_be_ended(make_router):
    """Plans without minutes or cost caps still report the call's charge (for call records)."""
    router = make_router(one_number(rules=[bridge("13901010001")]))
    router.route("4001012345", BJ, at=TUESDAY_10, call_id="plain")
    charge = router.call_ended("plain", 59)
    assert (charge.number, charge.target, charge.billed_s, charge.cost, charge.province) == (
        "4001012345", "13901010001", 60, None, "CN-BJ"
    )


def test_call_end_charges_the_period_it_was_routed_in(make_router):
    router = make_router(one_number(rules=[bridge("1")], caps=[{"metric": "minutes", "per": "day", "limit": 1}]))
    router.route("4001012345", BJ, at=at(2026, 11, 24, 23, 59), call_id="late")
    router.call_ended("late", 600)  # ends the next day
    assert router.route("4001012345", BJ, at=at(2026, 11, 24, 23, 59)).reason == "cap_exceeded"
    assert router.route("4001012345", BJ, at=at(2026, 11, 25, 0, 5)).reason == "ok"


def test_a_call_in_an_earlier_or_later_period_leaves_the_current_one_alone(make_router):
    """Issue #11 item 10: one call dated yesterday used to reset today's full cap."""
    router = make_router(one_number(rules=[bridge("1")], caps=[{"metric": "calls", "per": "day", "limit": 3}]))
    today = [router.route("4001012345", BJ, at=TUESDAY_10).reason for _ in range(4)]
    assert today == ["ok"] * 3 + ["cap_exceeded"]
    yesterday = dt.datetime(2026, 11, 23, 23, 59, 59, tzinfo=SHANGHAI)
    assert router.route("4001012345", BJ, at=yesterday).reason == "ok"  # counted in yesterday's own period
    assert router.route("4001012345", BJ, at=TUESDAY_10).reason == "cap_exceeded"
    assert router.route("4001012345", BJ, at=at(2026, 11, 25, 10)).reason == "ok"  # tomorrow
    assert router.route("4001012345", BJ, at=TUESDAY_10).reason == "cap_exceeded"
    # Yesterday holds its one call: two more places there, then none.
    assert [router.route("4001012345", BJ, at=yesterday).reason for _ in range(3)] == ["ok", "ok", "cap_exceeded"]


def test_a_late_charge_to_the_previous_period_keeps_the_new_periods_count(make_router):
    router = make_router(one_number(rules=[bridge("1")], caps=[{"metric": "minutes", "per": "day", "limit": 1}]))
    router.route("4001012345", BJ, at=at(2026, 11, 24, 23, 59), call_id="late")
    router.route("4001012345", BJ, at=at(2026, 11, 25, 0, 5), call_id="next")
    router.call_ended("next", 60)  # today's minute used up
    router.call_ended("late", 600)  # yesterday's call ends after midnight: charged to yesterday
    assert router.route("4001012345", BJ, at=at(2026, 11, 25, 0, 20)).reason == "cap_exceeded"
    assert router.route("4001012345", BJ, at=at(2026, 11, 24, 23, 59)).reason == "cap_exceeded"


def test_cost_cap_with_local_and_long_distance_tariff(make_router):
    tree = one_number(
        rules=[bridge("13901010001", "02161234567", strategy="sequential")],
        tariff={"local": "0.1", "long_distance": "0.3", "increment_s": 6},
        caps=[{"metric": "cost", "per": "month", "limit": 1}],
    )
    router = make_router(tree)
    router.route("4001012345", BJ, at=TUESDAY_10, call_id="local")
    local = router.call_ended("local", 60)  # Beijing caller, Beijing target: 1 min local
    assert (local.long_distance, local.cost, local.billed_s) == (False, Decimal("0.1"), 60)
    router.route("4001012345", BJ, at=TUESDAY_10, call_id="far")
    far = router.call_ended("far", 61, target="02161234567")  # answered by the Shanghai failover
    assert (far.long_distance, far.billed_s, far.cost) == (True, 66, Decimal("0.33"))
    router.route("4001012345", None, at=TUESDAY_10, call_id="anon")
    assert router.call_ended("anon", 120).long_distance  # unknown caller province counts as long distance
    # 0.1 + 0.33 + 0.6 = 1.03 ≥ 1: the month is full
    assert router.route("4001012345", BJ, at=TUESDAY_10).reason == "cap_exceeded"
    assert router.route("4001012345", BJ, at=at(2026, 12, 1, 10)).reason == "ok"


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), 1e18, "60", None, True])
def test_call_ended_rejects_bad_durations(make_router, bad):
    router = make_router(one_number(rules=[bridge("1")]))
    with pytest.raises(ValueError, match="duration_s"):
        router.call_ended("x", bad)


# --- call ends that must not lose or inflate a charge (issue #11, items 2 and 6) ------------


def minutes_plan(limit=60):
    return one_number(rules=[bridge("13901010001")], tariff={"local": "0.1", "long_distance": "0.3"},
                      caps=[{"metric": "minutes", "per": "month", "limit": limit}])


@pytest.mark.parametrize("huge", [43201, 1e9, 1e18, 9.3e18, 1e300])
def test_call_end_longer_than_the_longest_call_is_refused_and_the_call_kept(make_router, huge):
    """1e9 s used to spend a month's cap in one report; 1e18 failed after forgetting the call."""
    router = make_router(minutes_plan())
    router.route("4001012345", BJ, at=TUESDAY_10, call_id="c1")
    with pytest.raises(ValueError, match=r"duration_s: expected seconds from 0 to 43200"):
        router.call_ended("c1", huge)
    assert router.calls_in_progress == 1  # nothing charged, still waiting
    charge = router.call_ended("c1", 43200)  # the longest call is accepted: the corrected retry
    assert charge.billed_s == 43200
    assert router.call_ended("c1", 60) is None


def test_the_longest_call_is_the_registrys_age_bound(make_router):
    from tel400.calls import CallRegistry

    router = make_router(minutes_plan(), calls=CallRegistry(max_age_s=3600))
    router.route("4001012345", BJ, at=TUESDAY_10, call_id="c1")
    with pytest.raises(ValueError, match="from 0 to 3600"):
        router.call_ended("c1", 3601)
    assert router.call_ended("c1", 3600).billed_s == 3600


def test_a_charge_no_counter_can_hold_is_refused_before_anything_is_counted(make_router):
    from tel400._common import CallRecord, bill_call
    from tel400.plans import Tariff

    router = make_router(minutes_plan())
    charges = (("cost", "k", 1, 60),)
    # 1e30 cannot even be computed; 1e8 a minute for 12 h is beyond shm://'s 40-bit counters
    for rate in ("1e30", "1e8"):
        record = CallRecord("c", "4001012345", BJ, 1, ("13901010001",), "voice", 0.0,
                            Tariff(Decimal(rate), Decimal(rate), 60), charges, True)
        with pytest.raises(ValueError, match="duration_s: the charge"):
            bill_call(record, 43200, None, router.prefixes)
    record = CallRecord("c", "4001012345", BJ, 1, ("13901010001",), "voice", 0.0,
                        Tariff(Decimal("1e6"), Decimal("1e6"), 60), charges, True)
    assert bill_call(record, 60, None, router.prefixes)[1] == (("k", 1, 10**12, 60),)  # just under 2**40
    with pytest.raises(ValueError, match="beyond what a counter holds"):
        bill_call(record, 120, None, router.prefixes)


class FlakyCounters(tel400.MemoryCounters):
    """Counters whose next ``add`` fails with something that is not a BackendError."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fail_next = True

    def add(self, key, period, amount, ttl_s):
        if self.fail_next:
            self.fail_next = False
            raise OverflowError("Python int too large to convert to C long")
        return super().add(key, period, amount, ttl_s)


def test_a_charge_that_fails_keeps_the_call_for_the_retry(make_router):
    router = make_router(minutes_plan(limit=3), FlakyCounters())
    router.route("4001012345", BJ, at=TUESDAY_10, call_id="c1")
    with pytest.raises(OverflowError):
        router.call_ended("c1", 120)
    assert router.call_ended("c1", 120).billed_s == 120  # the switch's retry finds the call
    assert router.call_ended("c1", 120) is None  # and charges it once
    assert router.route("4001012345", BJ, at=TUESDAY_10, call_id="c2").reason == "ok"  # 2 min of 3
    router.call_ended("c2", 60)
    assert router.route("4001012345", BJ, at=TUESDAY_10).reason == "cap_exceeded"


class FailingAddCounters(tel400.MemoryCounters):
    """Counters whose ``add`` to keys containing ``fail_on`` raises BackendError ``failures`` times."""

    def __init__(self, fail_on, failures=1):
        super().__init__()
        self.fail_on, self.failures, self.added = fail_on, failures, Counter()

    def add(self, key, period, amount, ttl_s):
        if self.fail_on in key and self.failures:
            self.failures -= 1
            raise tel400.BackendError("counter backend unavailable")
        self.added[key.split(":cap:")[1].split(":")[0]] += amount
        return super().add(key, period, amount, ttl_s)


def minutes_and_cost_plan():
    return one_number(rules=[bridge("13901010001")], tariff={"local": "0.1", "long_distance": "0.3"},
                      caps=[{"metric": "minutes", "per": "month", "limit": 60},
                            {"metric": "cost", "per": "month", "limit": 100}])


def test_a_charge_the_backend_refuses_keeps_the_call_until_the_retry_adds_it(make_router):
    """Item 2: the charge used to be dropped (counted under the plan's policy) and the call forgotten."""
    counters = FailingAddCounters(":cap:cost:")
    router = make_router(minutes_and_cost_plan(), counters)
    router.route("4001012345", BJ, at=TUESDAY_10, call_id="c1")
    with pytest.raises(tel400.BackendError, match="charge"):
        router.call_ended("c1", 120)
    assert router.calls_in_progress == 1 and "c1" in router._shared.calls
    assert counters.added == {"minutes": 120}  # added once: the retry must not add it again
    charge = router.call_ended("c1", 120)  # the switch's retry
    assert charge.billed_s == 120 and charge.cost > 0
    assert counters.added == {"minutes": 120, "cost": int(charge.cost * 1_000_000)}
    assert router.call_ended("c1", 120) is None and router.calls_in_progress == 0


def test_a_backend_that_never_takes_the_charge_lets_the_call_expire(make_router):
    from tel400.calls import CallRegistry

    now = [0.0]
    counters = FailingAddCounters(":cap:", failures=10**9)
    router = make_router(minutes_and_cost_plan(), counters,
                         calls=CallRegistry(max_age_s=3600, clock=lambda: now[0]))
    router.route("4001012345", BJ, at=TUESDAY_10, call_id="c1")
    for now[0] in (10.0, 1000.0, 3599.0):  # the switch retries: the call keeps its age
        with pytest.raises(tel400.BackendError):
            router.call_ended("c1", 60)
    now[0] = 3600.0
    assert router.call_ended("c1", 60) is None  # forgotten at the registry's age, counted
    assert (router.calls_in_progress, router.calls_dropped) == (0, 1)


def test_a_full_call_registry_never_evicts_a_call_in_progress(make_router):
    """Item 6: fresh call ids filled the registry and pushed out a real call, never charged."""
    from tel400.calls import CallRegistry

    now = [0.0]
    router = make_router(minutes_plan(), calls=CallRegistry(max_calls=3, max_age_s=3600, clock=lambda: now[0]))
    router.route("4001012345", BJ, at=TUESDAY_10, call_id="real")
    for i in range(10):
        assert router.route("4001012345", BJ, at=TUESDAY_10, call_id=f"flood-{i}").action == "bridge"
    assert (router.calls_in_progress, router.calls_refused, router.calls_dropped) == (3, 8, 0)
    assert router.call_ended("real", 125).billed_s == 180  # still there, charged
    assert router.call_ended("flood-9", 60) is None  # admitted, not remembered: counted above
    now[0] = 3600  # the flood expires: room again
    router.route("4001012345", BJ, at=TUESDAY_10, call_id="next")
    assert router.calls_dropped == 2 and router.call_ended("next", 60).billed_s == 60


def test_forgotten_calls_are_logged_at_most_once_per_interval():
    import structlog.testing

    from tel400._common import CallRecord
    from tel400.calls import CallRegistry

    now = [0.0]
    reg = CallRegistry(max_calls=1, max_age_s=50, clock=lambda: now[0], log_interval_s=60)
    with structlog.testing.capture_logs() as logs:
        for i in range(50):
            reg.remember(CallRecord(f"c{i}", "4001012345", None, 0, (), "voice", 0.0, None, (), True))
        now[0] = 61
        reg.remember(CallRecord("late", "4001012345", None, 0, (), "voice", 0.0, None, (), True))
    lines = [e for e in logs if e["event"] == "calls_forgotten"]
    assert [(e["refused"], e["expired"]) for e in lines] == [(1, 0), (48, 1)]
    assert reg.refused == 49 and reg.dropped == 1


# --- backends that fail --------------------------------------------------------------


class BrokenCounters(tel400.MemoryCounters):
    def acquire(self, checks, *, dry_run=False):
        raise tel400.BackendError("redis timed out after 20 ms")

    def pin_failures(self, key, now, window_s):
        raise tel400.BackendError("redis timed out after 20 ms")

    def add_pin_failure(self, key, now, window_s):
        raise tel400.BackendError("redis timed out after 20 ms")

    def add(self, key, period, amount, ttl_s):
        raise tel400.BackendError("redis timed out after 20 ms")


@pytest.mark.parametrize("policy, expected", [("allow", ("bridge", "ok")), ("reject", ("reject", "backend_error"))])
def test_backend_failure_applies_the_plans_policy(make_router, policy, expected):
    router = make_router(
        one_number(rules=[bridge("1")], caps=[{"metric": "minutes", "per": "day", "limit": 1}], on_backend_error=policy),
        BrokenCounters(),
    )
    d = router.route("4001012345", BJ, at=TUESDAY_10, call_id="c")
    assert (d.action, d.reason) == expected
    if policy == "allow":  # the call connected; its charge is not dropped but kept for the retry
        with pytest.raises(tel400.BackendError):
            router.call_ended("c", 60)
        assert "c" in router._shared.calls and router.backend_error_counts()["charge_retry"] == 1
    assert router.backend_error_counts()[policy] >= 1


def test_backend_failure_during_pin_check(make_router):
    router = make_router(one_number(rules=[bridge("1")], pin="4821", on_backend_error="allow"), BrokenCounters())
    assert router.route("4001012345", BJ, pin="4821").action == "bridge"
    assert router.route("4001012345", BJ, pin="0000").reason == "bad_pin"
    strict = make_router(one_number(rules=[bridge("1")], pin="4821", on_backend_error="reject"), BrokenCounters())
    assert strict.route("4001012345", BJ, pin="4821").reason == "backend_error"


class UncountablePinFailures(tel400.MemoryCounters):
    def add_pin_failure(self, key, now, window_s):
        raise tel400.BackendError("write failed")


@pytest.mark.parametrize("policy, reason", [("allow", "bad_pin"), ("reject", "backend_error")])
def test_wrong_pin_that_cannot_be_counted(make_router, policy, reason):
    router = make_router(one_number(rules=[bridge("1")], pin="4821", on_backend_error=policy), UncountablePinFailures())
    assert router.route("4001012345", BJ, pin="0000").reason == reason
    assert router.route("4001012345", BJ, pin="4821").reason == "ok"


# --- explain ---------------------------------------------------------------------------


def test_explain_names_each_rule_and_the_first_failed_condition(make_router):
    router = make_router(
        one_number(
            rules=[
                bridge("1", name="sms-only", channel="sms"),
                bridge("1", name="shanghai", provinces=["CN-SH"]),
                bridge("1", name="december", dates="2026-12-01..2026-12-31"),
                bridge("1", name="weekend", days="sat,sun"),
                bridge("1", name="morning", time="08:00-09:59"),
                bridge("1", name="later", time="10:00-10:59"),
            ],
            caps=[{"metric": "calls", "per": "day", "limit": 10}],
        )
    )
    d = router.route("4001012345", BJ, at=TUESDAY_10, explain=True)
    text = d.explain_text()
    assert "rule sms-only: channel voice is not sms" in text
    assert "rule shanghai: province CN-BJ not in CN-SH" in text
    assert "rule december: date 2026-11-24 not in 2026-12-01..2026-12-31" in text
    assert "rule weekend: day tue not in sat,sun" in text
    assert "rule morning: time 10:00 not in 08:00-09:59" in text
    assert "✓ rule later: matched" in text
    assert "✓ cap calls/day/number: 1 of 10" in text
    assert [s.check for s in d.explain] == ["number"] + ["rule"] * 6 + ["select", "cap"]


def test_explain_without_counting(make_router):
    router = make_router(
        one_number(rules=[bridge("1")], pin="4821", caps=[{"metric": "calls", "per": "day", "limit": 1}])
    )
    for _ in range(10):
        d = router.explain("4001012345", BJ, at=TUESDAY_10, pin="0000")
        assert d.reason == "bad_pin"
        assert router.explain("4001012345", BJ, at=TUESDAY_10, pin="4821").reason == "ok"
    assert router.route("4001012345", BJ, at=TUESDAY_10, pin="4821").reason == "ok"  # not locked, not capped
    d = router.explain("4001012345", BJ, at=TUESDAY_10, pin="4821")
    assert d.reason == "cap_exceeded"
    assert "✗ cap calls/day/number: 1 of 1: limit reached" in d.explain_text()
    assert router.decision_counts() == {("4001012345", "bridge", "ok"): 1}


def test_explain_blacklist_and_default(make_router):
    router = make_router(one_number(blacklist=["1710*"], rules=[bridge("1", time="08:00-08:59")]))
    assert "caller matches 1710*" in router.route("4001012345", "17101234567", explain=True).explain_text()
    text = router.route("4001012345", BJ, at=TUESDAY_10, explain=True).explain_text()
    assert "default: no rule matched" in text


# --- reload -------------------------------------------------------------------------------


def test_reload_swaps_plans_and_keeps_counts_and_round_robin(make_router):
    tree = split_plan("round_robin")
    tree["numbers"][0]["caps"] = [{"metric": "calls", "per": "day", "limit": 4}]
    router = make_router(tree)
    first = [router.route("4001012345", BJ, at=TUESDAY_10).targets[0] for _ in range(3)]
    tree["numbers"][0]["default"] = {"action": "reject", "prompt": "changed"}
    router.reload(tel400.PlanSet.from_dict(tree))
    assert router.reloads == 1
    after = router.route("4001012345", BJ, at=TUESDAY_10)
    assert after.reason == "ok" and [*first, after.targets[0]] == [
        "02150002000", "02150001000", "02150002000", "02150002000"
    ]  # the round robin went on where it was
    assert router.route("4001012345", BJ, at=TUESDAY_10).reason == "cap_exceeded"  # the count went on too


def test_bad_reload_keeps_the_old_plans(make_router):
    router = make_router(one_number(rules=[bridge("1")]))
    with pytest.raises(TypeError):
        router.reload({"numbers": []})
    assert router.route("4001012345", BJ).action == "bridge"


def test_reload_while_routing_from_threads_never_mixes_plans(make_router):
    """Two plan sets of 2,000 numbers that differ in every target: while one
    compiles, threads keep routing from the other, and each decision is wholly
    one version or the other, never missing."""
    size = 2000

    def plans(version):
        return tel400.PlanSet.from_dict(
            {"numbers": [{"number": f"40010{i:05d}", "rules": [bridge(f"{version}{i:04d}", name=f"v{version}")]} for i in range(size)]}
        )

    a, b = plans(1), plans(2)
    router = make_router(a)
    errors = []
    routed = [0]
    stop = threading.Event()

    def worker(offset):
        i = offset
        while not stop.is_set():
            n = i % size
            d = router.route(f"40010{n:05d}", BJ)
            version = d.rule[1] if d.rule else "?"
            if d.action != "bridge" or d.targets != (f"{version}{n:04d}",):
                errors.append(d)
            routed[0] += 1
            i += 7

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    during = []
    for k in range(4):
        before = routed[0]
        router.reload(b if k % 2 == 0 else a)  # compiles 2,000 plans while the threads route
        during.append(routed[0] - before)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert all(count > 0 for count in during), during  # routing went on during every compile


# --- the manual's example plan -------------------------------------------------------------


def test_manual_example_plan(make_router):
    router = make_router(tel400.load_plans(EXAMPLES / "manual.toml"), seed=1)
    route = router.route
    assert route("4001012345", BJ, at=at(2026, 11, 24, 9)).targets == ("13901010001",)
    assert route("4001012345", "02161234567", at=at(2026, 11, 24, 9)).rule == "shanghai"
    assert route("4001012345", GD, at=at(2026, 11, 24, 9)).rule == "guangdong"
    assert route("4001012345", TJ, at=at(2026, 11, 24, 9)).rule == "morning-split"
    assert route("4001012345", TJ, at=at(2026, 11, 24, 13)).targets == ("13901010003", "13901010001")
    assert route("4001012345", TJ, at=at(2026, 11, 24, 21)).reason == "closed"
    assert route("4001012345", "13800000000").reason == "blacklisted"
    assert route("106574001012345", TJ, channel="sms").targets == ("13901010009",)
    assert route("4001532532", TJ).action == "collect_pin"
    assert route("4001532532", TJ, pin="1234").action == "conference"
    assert route("4001100868", TJ, at=at(2026, 10, 10, 10)).action == "queue"  # 调休 Saturday
    assert route("4001100868", TJ, at=at(2026, 10, 2, 10)).reason == "closed"  # National Day


def test_decision_as_dict_is_json_ready(make_router):
    import json

    d = make_router(one_number(rules=[bridge("1")])).route("4001012345", BJ, explain=True, call_id="abc")
    out = json.loads(json.dumps(d.as_dict()))
    assert out["action"] == "bridge" and out["call_id"] == "abc" and out["explain"]


def test_shanghai_default_zone():
    assert SHANGHAI.key == "Asia/Shanghai"


def test_a_call_can_end_in_another_process(make_router):
    """export_call() hands the call over; call_ended(record=...) charges it anywhere."""
    tree = one_number(rules=[bridge("13901010001")], tariff={"local": "0.1", "long_distance": "0.3"},
                      caps=[{"metric": "minutes", "per": "day", "limit": 2}])
    routing = make_router(tree)
    ending = make_router(tree, routing.counters)  # another worker, sharing the counters
    routing.route("4001012345", BJ, at=TUESDAY_10, call_id="k1")
    token = routing.export_call("k1")
    assert routing.export_call("k1") is None and routing.call_ended("k1", 10) is None  # handed over
    charge = ending.call_ended("k1", 150, record=token)
    assert (charge.billed_s, charge.cost, charge.province) == (180, Decimal("0.3"), "CN-BJ")
    assert routing.route("4001012345", BJ, at=TUESDAY_10).reason == "cap_exceeded"  # 3 min > 2, counted
    with pytest.raises(ValueError, match="another call"):
        ending.call_ended("other", 1, record=token)
    with pytest.raises(ValueError, match="not a call record"):
        ending.call_ended("k1", 1, record='{"v": 1}')
