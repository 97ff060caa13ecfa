"""The Kamailio adapter with the real parts: Kamailio 5.6 (Debian), sipp callers and targets.

One Kamailio with four workers serves a plan with a number per scenario;
sipp instances on loopback ports are the targets (``name@127.0.0.1:port``
targets) and the callers.  Counters are shared through shm://.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
import zoneinfo

import pytest

import tel400

from .kamailio_harness import Kamailio, SippUAS, answers, options_ping, sipp_uac

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
BEIJING_CALLERS = [f"1390101{i:04d}" for i in range(50)]  # CN-BJ segment
SHANGHAI_CALLERS = [f"0216123{i:04d}" for i in range(50)]
TIANJIN_CALLERS = [f"1390200{i:04d}" for i in range(50)]  # CN-TJ segment
CHILDREN = 4

FACTORY = '''
import tel400

class FailingRouter(tel400.Router):
    """Raises inside route() for one number, to show a failure is answered."""

    def route(self, dialed, caller, *args, **kwargs):
        if dialed == "4001000008":
            raise RuntimeError("simulated failure inside tel400")
        return super().route(dialed, caller, *args, **kwargs)


def make(store, counters):
    return FailingRouter(store.load(), counters)
'''


def slot_around_now(minutes: int) -> str:
    now = dt.datetime.now(SHANGHAI)
    start = (now - dt.timedelta(minutes=minutes)).strftime("%H:%M")
    end = (now + dt.timedelta(minutes=minutes)).strftime("%H:%M")
    return f"{start}-{end}"


def slot_far_from_now() -> str:
    now = dt.datetime.now(SHANGHAI)
    start = (now + dt.timedelta(hours=6)).strftime("%H:%M")
    end = (now + dt.timedelta(hours=7)).strftime("%H:%M")
    return f"{start}-{end}"


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sipp")
    uas = {
        "a": SippUAS(workdir, "uas_answer"),
        "b": SippUAS(workdir, "uas_answer"),
        "c": SippUAS(workdir, "uas_answer"),
        "busy": SippUAS(workdir, "uas_busy"),
        "sms": SippUAS(workdir, "uas_message"),
    }
    for server in uas.values():
        server.start()
    yield uas
    for server in uas.values():
        server.stop()


def at(uas, name: str) -> str:
    return f"{name}@127.0.0.1:{uas[name].port}"


@pytest.fixture(scope="module")
def kamailio(tmp_path_factory, targets):
    workdir = tmp_path_factory.mktemp("kamailio")
    t = targets
    plans = {
        "blacklist": ["13800000000"],
        "numbers": [
            {"number": "4001000001", "rules": [  # province routing
                {"name": "beijing", "provinces": ["北京"], "targets": [at(t, "a")]},
                {"name": "shanghai", "provinces": ["上海"], "targets": [at(t, "b")]},
            ], "default": {"action": "bridge", "targets": [at(t, "c")]}},
            {"number": "4001000010", "rules": [  # time routing
                {"name": "now", "time": slot_around_now(20), "targets": [at(t, "b")]},
                {"name": "later", "time": slot_far_from_now(), "targets": [at(t, "a")]},
            ]},
            {"number": "4001000002", "rules": [{"name": "split", "targets": [
                {"to": at(t, "a"), "weight": 30}, {"to": at(t, "b"), "weight": 70}]}]},
            {"number": "4001000003", "rules": [{"name": "exact", "strategy": "round_robin", "targets": [
                {"to": at(t, "a"), "weight": 30}, {"to": at(t, "b"), "weight": 70}]}]},
            {"number": "4001000005", "rules": [{"targets": [at(t, "c")]}],
             "caps": [{"metric": "calls", "per": "day", "limit": 50}]},
            {"number": "4001000006", "rules": [{"name": "failover", "strategy": "sequential",
                                                "targets": [at(t, "busy"), at(t, "c")]}]},
            {"number": "4001000007", "rules": [{"name": "sms", "channel": "sms", "targets": [at(t, "sms")]}]},
            {"number": "4001000008", "rules": [{"targets": [at(t, "c")]}]},
            {"number": "4001000009", "rules": [{"targets": [at(t, "c")]}],
             "tariff": {"local": "0.1", "long_distance": "0.3", "increment_s": 1},
             "caps": [{"metric": "minutes", "per": "day", "limit": "0.05"}]},  # 3 seconds
            {"number": "4001000011", "default": {"action": "reject", "prompt": "closed"}},
            {"number": "4001000015", "rules": [{"targets": [at(t, "c")]}],
             "caps": [{"metric": "calls", "per": "day", "limit": 3}]},
        ],
    }
    plan_file = workdir / "plans.json"
    plan_file.write_text(json.dumps(plans, ensure_ascii=False))
    (workdir / "tel400_test_factory.py").write_text(FACTORY)
    import sysconfig

    server = Kamailio(workdir, {
        "TEL400_PLANS": str(plan_file),
        "TEL400_COUNTERS": f"shm://{workdir}/counters?slots=4096",
        "TEL400_RING_TIMEOUT": "5",
        "TEL400_ROUTER_FACTORY": "tel400_test_factory:make",
        "TEL400_SITE_PACKAGES": f"{sysconfig.get_paths()['purelib']}:{workdir}",
    }, children=CHILDREN)
    server.start()
    yield server
    server.stop()
    assert "Traceback" not in server.log() or "simulated failure" in server.log()


def test_options_answered(kamailio):
    assert options_ping(kamailio.port).startswith("SIP/2.0 200")


def test_province_routing_reaches_the_right_target(kamailio, targets, tmp_path):
    before = {name: targets[name].calls() for name in ("a", "b", "c")}
    for callers, expected in ((BEIJING_CALLERS, "a"), (SHANGHAI_CALLERS, "b"), (TIANJIN_CALLERS, "c")):
        counts = sipp_uac(tmp_path, "uac_call", kamailio.port, "4001000001", callers[:10], calls=10)
        assert answers(counts) == {200: 10}, counts
    after = {name: targets[name].calls() for name in ("a", "b", "c")}
    assert {name: after[name] - before[name] for name in after} == {"a": 10, "b": 10, "c": 10}


def test_time_routing(kamailio, targets, tmp_path):
    before = targets["b"].calls()
    counts = sipp_uac(tmp_path, "uac_call", kamailio.port, "4001000010", TIANJIN_CALLERS[:5], calls=5)
    assert answers(counts) == {200: 5}
    assert targets["b"].calls() - before == 5


def _split(kamailio, targets, tmp_path, number):
    before = {n: targets[n].calls() for n in ("a", "b")}
    counts = sipp_uac(tmp_path, "uac_call", kamailio.port, number, TIANJIN_CALLERS, calls=1000, rate=400)
    assert answers(counts) == {200: 1000}
    after = {n: targets[n].calls() for n in ("a", "b")}
    return after["a"] - before["a"], after["b"] - before["b"]


def test_weighted_30_70_over_1000_calls(kamailio, targets, tmp_path):
    a, b = _split(kamailio, targets, tmp_path, "4001000002")
    assert a + b == 1000
    assert abs(a - 300) <= 5 * (1000 * 0.3 * 0.7) ** 0.5  # five standard deviations


def test_round_robin_30_70_is_exact_per_worker(kamailio, targets, tmp_path):
    a, b = _split(kamailio, targets, tmp_path, "4001000003")
    assert a + b == 1000
    # Each worker keeps its own round-robin position, exact over each 10 of its
    # calls: the total can be off by at most one call per worker.
    assert abs(a - 300) <= CHILDREN


def test_blacklisted_caller_gets_403(kamailio, tmp_path):
    counts = sipp_uac(tmp_path, "uac_call", kamailio.port, "4001000001", ["13800000000"], calls=3)
    assert answers(counts) == {403: 3}


def test_unknown_number_404_and_closed_480(kamailio, tmp_path):
    assert answers(sipp_uac(tmp_path, "uac_call", kamailio.port, "4009999999", BEIJING_CALLERS, calls=2)) == {404: 2}
    assert answers(sipp_uac(tmp_path, "uac_call", kamailio.port, "4001000011", BEIJING_CALLERS, calls=2)) == {480: 2}


def test_calls_cap_is_exact_across_workers(kamailio, targets, tmp_path):
    before = targets["c"].calls()
    counts = sipp_uac(tmp_path, "uac_call", kamailio.port, "4001000005", TIANJIN_CALLERS, calls=80, rate=400)
    assert answers(counts) == {200: 50, 486: 30}
    assert targets["c"].calls() - before == 50


def test_failover_on_486(kamailio, targets, tmp_path):
    busy_before, c_before = targets["busy"].calls(), targets["c"].calls()
    counts = sipp_uac(tmp_path, "uac_call", kamailio.port, "4001000006", BEIJING_CALLERS, calls=5)
    assert answers(counts) == {200: 5}
    assert targets["busy"].calls() - busy_before == 5
    assert targets["c"].calls() - c_before == 5


def test_sms_relayed(kamailio, targets, tmp_path):
    before = targets["sms"].calls()
    counts = sipp_uac(tmp_path, "uac_message", kamailio.port, "106574001000007", BEIJING_CALLERS, calls=5)
    assert counts.get("4_200_Recv") == 5, counts
    assert targets["sms"].calls() - before == 5


def test_a_python_failure_is_answered_500(kamailio, tmp_path):
    counts = sipp_uac(tmp_path, "uac_call", kamailio.port, "4001000008", BEIJING_CALLERS, calls=3)
    assert answers(counts) == {500: 3}
    assert "simulated failure inside tel400" in kamailio.log()
    # the workers are alive and keep routing
    assert answers(sipp_uac(tmp_path, "uac_call", kamailio.port, "4001000001", BEIJING_CALLERS, calls=4)) == {200: 4}


def test_call_end_charges_the_minutes_cap(kamailio, tmp_path):
    first = sipp_uac(tmp_path, "uac_call", kamailio.port, "4001000009", BEIJING_CALLERS, calls=1, duration_ms=4000)
    assert answers(first) == {200: 1}
    # 4 s were charged at the BYE (dialog:end), over the 3 s cap: the next call is refused
    second = sipp_uac(tmp_path, "uac_call", kamailio.port, "4001000009", BEIJING_CALLERS, calls=1)
    assert answers(second) == {486: 1}


def test_requests_kamailio_cannot_relay_get_400_and_use_no_cap_place(kamailio, targets, tmp_path):
    from .kamailio_harness import BROKEN_HEADERS, raw_invite

    # Twice the cap in broken requests: before the sanity check each was
    # routed and counted, then answered 500 by tm, and the cap refused real callers.
    for from_header, to_header in BROKEN_HEADERS * 2:
        status = raw_invite(kamailio.port, "4001000015", from_header, to_header=to_header)
        assert status.startswith("SIP/2.0 400 "), (from_header, to_header, status)
    before = targets["c"].calls()
    counts = sipp_uac(tmp_path, "uac_call", kamailio.port, "4001000015", TIANJIN_CALLERS, calls=3)
    assert answers(counts) == {200: 3}  # the cap of 3 is whole
    assert targets["c"].calls() - before == 3


@pytest.fixture(scope="module")
def redirecting(tmp_path_factory):
    """A second Kamailio: redirect mode, numbers sent to a gateway, a media server."""
    from .kamailio_harness import CapturingMediaServer

    media = CapturingMediaServer()
    workdir = tmp_path_factory.mktemp("kamailio-redirect")
    plans = {"numbers": [
        {"number": "4001000002", "rules": [{"name": "split", "strategy": "sequential", "targets": [
            {"to": "13901010001", "weight": 30}, {"to": "13901010002", "weight": 70}, {"to": "desk@pbx.example"}]}]},
        {"number": "4001000011", "default": {"action": "reject", "prompt": "closed"}},
        {"number": "4001000012", "pin": "2468", "default": {"action": "conference", "room": "4001"}},
        {"number": "4001000013", "rules": [{"name": "support", "action": "queue", "queue": "support"}]},
        {"number": "4001000014", "blacklist": ["13800000000"], "rules": [{"targets": ["13901010001"]}]},
    ]}
    plan_file = workdir / "plans.json"
    plan_file.write_text(json.dumps(plans))
    server = Kamailio(workdir, {
        "TEL400_PLANS": str(plan_file),
        "TEL400_COUNTERS": f"shm://{workdir}/counters?slots=1024",
        "TEL400_REPLY_MODE": "redirect",
        "TEL400_GATEWAY": "gw.example.net:5060",
        "TEL400_MEDIA_SERVER": f"sip:media@127.0.0.1:{media.port}",
    }, children=2)
    server.start()
    yield server, media
    server.stop()
    media.stop()


def test_redirect_mode_answers_302_with_contacts_in_failover_order(redirecting):
    from .kamailio_harness import invite

    server, _ = redirecting
    status, headers = invite(server.port, "4001000002", "13901012345")
    assert status == "SIP/2.0 302 Moved Temporarily"
    assert headers["contact"] == [
        "<sip:13901010001@gw.example.net:5060>;q=1, <sip:13901010002@gw.example.net:5060>;q=0.9, "
        "<sip:desk@pbx.example>;q=0.8"
    ]


def test_refusals_go_to_the_media_server_with_the_prompt(redirecting):
    from .kamailio_harness import invite

    server, media = redirecting
    cases = [
        ("4001000011", "13901012345", {"x-tel400-action": ["reject"], "x-tel400-reason": ["closed"],
                                       "x-tel400-prompt": ["closed"]}),
        ("4001000012", "13901012345", {"x-tel400-action": ["collect_pin"], "x-tel400-reason": ["pin_required"],
                                       "x-tel400-prompt": ["enter_pin"]}),
        ("4001000013", "13901012345", {"x-tel400-action": ["queue"], "x-tel400-target": ["support"],
                                       "x-tel400-rule": ["support"]}),
        ("4001000014", "13800000000", {"x-tel400-action": ["reject"], "x-tel400-reason": ["blacklisted"]}),
    ]
    for dialed, caller, expected in cases:
        before = len(media.invites)
        status, _ = invite(server.port, dialed, caller)
        assert status == "SIP/2.0 486 Busy Here"  # the media server's answer, relayed
        got = media.invites[before]
        assert {name: got.get(name) for name in expected} == expected
        assert got["x-tel400-number"] == [dialed]


def test_unknown_number_without_media_server_gets_404_and_the_reason(kamailio):
    from .kamailio_harness import invite

    status, headers = invite(kamailio.port, "4009999999", "13901012345")
    assert status == "SIP/2.0 404 Not Found"
    assert headers["x-tel400-reason"] == ["unknown_number"]


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A third Kamailio: plans in SQLite, counters in Redis, a target that answers 486."""
    from tel400.testing import RedisServer

    from .kamailio_harness import CapturingMediaServer

    target = CapturingMediaServer()
    redis = RedisServer().start()
    workdir = tmp_path_factory.mktemp("kamailio-stored")
    store = tel400.SqliteStore(workdir / "plans.db")
    store.replace_all(tel400.PlanSet.from_dict({"numbers": [
        {"number": "4001000021", "rules": [{"targets": [f"desk@127.0.0.1:{target.port}"]}],
         "caps": [{"metric": "calls", "per": "day", "limit": 1000}]},
        {"number": "4001000022", "rules": [{"targets": [f"desk@127.0.0.1:{target.port}"]}]},
    ]}), actor="test")
    server = Kamailio(workdir, {
        "TEL400_PLANS": store.url,
        "TEL400_COUNTERS": f"{redis.url}?timeout_ms=200&backoff_ms=100",
    }, children=2)
    server.start()
    yield server, store, redis
    server.stop()
    redis.stop()
    target.stop()


def _wait_for_log(server, text: str, send) -> str:
    """Send requests (``send()``) until ``text`` is in Kamailio's log; the log line."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        send()
        for line in server.log().splitlines():
            if text in line:
                return line
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never reached Kamailio's log:\n{server.log()[-3000:]}")


def test_a_refused_plan_change_reaches_kamailios_log(stored):
    from .kamailio_harness import invite

    server, store, _ = stored
    # A plan written behind the store's back, one that does not validate.
    with sqlite3.connect(store.path) as db:
        (good,) = db.execute("SELECT body FROM plans WHERE number = '4001000022'").fetchone()
        db.execute("UPDATE plans SET body = ? WHERE number = '4001000022'",
                   (json.dumps({"number": "4001000022", "rules": [{"targets": ["not a target"]}]}),))
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
    line = _wait_for_log(server, "plan_change_refused",
                         lambda: invite(server.port, "4001000022", "13901012345"))
    assert "not a target" in line and "kept=2" in line
    # the plans kept still route
    assert invite(server.port, "4001000022", "13901012345")[0] == "SIP/2.0 486 Busy Here"
    with sqlite3.connect(store.path) as db:  # the store as it was, for the next tests
        db.execute("UPDATE plans SET body = ? WHERE number = '4001000022'", (good,))
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")


def test_a_number_target_added_without_a_gateway_is_logged_at_reload(stored):
    from .kamailio_harness import invite

    server, store, _ = stored
    store.put_number({"number": "4001000023", "rules": [{"targets": ["13901010001"]}]}, actor="test")
    line = _wait_for_log(server, "number_target_without_gateway",
                         lambda: invite(server.port, "4001000021", "13901012345"))
    assert "number=4001000023" in line and "target=13901010001" in line
    # its calls: answered, with the reason in the log. Each of the two workers
    # reloads at its own poll: until both have, a call may still meet a 404.
    deadline = time.monotonic() + 10
    answers = []
    while time.monotonic() < deadline:
        answers.append(invite(server.port, "4001000023", "13901012345")[0])
        if not answers[-1].startswith("SIP/2.0 404"):
            break
        time.sleep(0.1)
    assert answers[-1].startswith("SIP/2.0 500"), answers
    assert "numbers need a gateway" in server.log()


def test_a_dead_counter_backend_reaches_kamailios_log(stored):
    from .kamailio_harness import invite

    server, _, redis = stored
    # the target's answer, relayed
    assert invite(server.port, "4001000021", "13901012345")[0] == "SIP/2.0 486 Busy Here"
    redis.stop()
    # on_backend_error = "allow": calls still connect, and the log says why no cap counts them
    line = _wait_for_log(server, "counter_backend_failed",
                         lambda: invite(server.port, "4001000021", "13901012345"))
    assert "connection" in line, line


def _start_fails(tmp_path, env, **kwargs) -> str:
    """Kamailio's log when it refuses to start."""
    env = {"TEL400_COUNTERS": f"shm://{tmp_path}/counters?slots=64", **env}
    server = Kamailio(tmp_path, env, children=1, **kwargs)
    try:
        with pytest.raises(RuntimeError, match="kamailio exited") as failure:
            server.start()
    finally:
        server.stop()
    return str(failure.value)


def test_numbers_without_a_gateway_stop_kamailio_at_start(tmp_path):
    plans = tmp_path / "plans.json"
    plans.write_text(json.dumps({"numbers": [
        {"number": "4001000031", "rules": [{"targets": ["desk@pbx.example"]}]},
        {"number": "4001000032", "rules": [{"targets": ["13901010001"]}]},  # a number: needs a gateway
    ]}))
    log = _start_fails(tmp_path, {"TEL400_PLANS": str(plans)})  # was: started, then every call to it 500
    assert "TEL400_GATEWAY is not set" in log and "4001000032" in log and "13901010001" in log


def test_a_missing_sqlite_store_stops_kamailio_at_start(tmp_path):
    typo = tmp_path / "plnas.db"
    # was: an empty store made, and 404 to everything
    log = _start_fails(tmp_path, {"TEL400_PLANS": f"sqlite:///{typo}"})
    assert "no such database" in log
    assert not typo.exists()


def test_a_configuration_without_the_sanity_module_stops_kamailio_at_start(tmp_path):
    from .kamailio_harness import ADAPTER

    plans = tmp_path / "plans.json"
    plans.write_text(json.dumps({"numbers": []}))
    cfg = tmp_path / "kamailio.cfg"
    cfg.write_text((ADAPTER / "kamailio.cfg").read_text().replace('loadmodule "sanity.so"\n', ""))
    log = _start_fails(tmp_path, {"TEL400_PLANS": str(plans)}, cfg=cfg)
    assert 'loadmodule "sanity.so"' in log
