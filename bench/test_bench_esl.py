"""Calls through the Event Socket adapter, with the FreeSWITCH peer on loopback.

``tel400-esl`` runs as its own process (the manual's plan, open all day);
the peer places CALLS calls, CONCURRENCY at a time, each bridged at once and
hung up.  Reported: calls per second, and the server's CPU time per call
(from /proc, user and system) beside the time of the route() decision
inside it; on uvloop (the default when installed) and on asyncio's own loop
(``TEL400_ESL_LOOP=asyncio``).

    .venv/bin/pytest bench/test_bench_esl.py --benchmark-enable -q
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

import tel400
from tel400.testing import free_port
from tel400_freeswitch.peer import Call, FreeSwitchPeer

from _inputs import MANUAL, callers

CALLS = 3000
CONCURRENCY = 50


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_esl_calls_per_second(benchmark, tmp_path, loop):
    tree = tel400.load_plans(MANUAL).to_dict()
    for number in tree["numbers"]:
        for rule in number["rules"]:
            if "time" in rule:
                rule["time"] = "00:00-23:59"
    tree["numbers"][0]["caps"][0]["limit"] = 10**9
    plans = tmp_path / "plans.json"
    plans.write_text(json.dumps(tree, ensure_ascii=False))
    port = free_port()
    exe = pathlib.Path(sys.executable).with_name("tel400-esl")
    # The server's log goes to a file: a pipe nobody reads would block the server once it fills.
    log_path = tmp_path / "tel400-esl.log"
    log = log_path.open("w")
    server = subprocess.Popen([str(exe), "--plans", str(plans), "--port", str(port)],
                              stderr=log, env={**os.environ, "TEL400_ESL_LOOP": loop})
    try:
        deadline = time.monotonic() + 60
        while "listening" not in log_path.read_text():
            assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        sample = [c for c in callers() if c.startswith("1")]

        async def place_calls() -> list[Call]:
            peer = FreeSwitchPeer()
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one(i: int) -> Call:
                async with gate:
                    return await peer.play("127.0.0.1", port, Call(caller=sample[i % len(sample)],
                                                                   bridge=lambda legs: (legs[0], 1)))

            return await asyncio.gather(*(one(i) for i in range(CALLS)))

        asyncio.run(place_calls())  # warm-up: first compile, zone tables
        user_before, sys_before = _cpu_seconds(server.pid)
        started = time.perf_counter()
        calls = asyncio.run(place_calls())
        wall = time.perf_counter() - started
        user_after, sys_after = _cpu_seconds(server.pid)
        user, system = user_after - user_before, sys_after - sys_before
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    assert not any(c.parked for c in calls)
    # every call really bridged and charged: a shortcut that failed calls would look cheaper
    router = tel400.Router(tel400.PlanSet.from_dict(tree))
    # every call went as its decision says (a shortcut that failed calls would look cheaper):
    # bridged and talked 1 s, or refused by the plan (the sample holds a few blacklisted callers)
    bridged = [router.route("4001012345", c.caller).action == "bridge" for c in calls]
    assert [c.billsec == 1 and c.apps[-1][0] == "bridge" for c in calls] == bridged
    assert sum(bridged) > CALLS * 0.9
    assert "esl_bridge_failed" not in log_path.read_text()
    t = time.perf_counter()
    for i in range(20000):
        router.route("4001012345", sample[i % len(sample)])
    route_us = (time.perf_counter() - t) / 20000 * 1e6
    benchmark.extra_info.update(
        calls=CALLS, concurrency=CONCURRENCY, loop=loop if loop == "asyncio" or _has_uvloop() else "asyncio", calls_per_s=round(CALLS / wall),
        server_cpu_us_per_call=round((user + system) / CALLS * 1e6),
        server_user_us_per_call=round(user / CALLS * 1e6), server_sys_us_per_call=round(system / CALLS * 1e6),
        route_us_per_call=round(route_us, 2),
    )
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
