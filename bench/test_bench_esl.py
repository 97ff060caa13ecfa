"""Calls through the Event Socket adapter, with the FreeSWITCH peer on loopback.

``tel400-esl`` runs as its own process (the manual's plan, open all day);
the peer places CALLS calls, CONCURRENCY at a time, each bridged at once and
hung up: outbound (FreeSWITCH connects to tel400 for each call) and inbound
(tel400 connects to FreeSWITCH's event socket once, every call on it).  Reported: calls per second, and the server's CPU time per call
(from /proc, user and system) beside the time of the route() decision
inside it; on uvloop (the default when installed) and on asyncio's own loop
(``TEL400_ESL_LOOP=asyncio``), outbound.

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
from tel400_freeswitch.peer import Call, FreeSwitchPeer, InboundSwitch

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


def _plans(tmp_path) -> tuple[dict, pathlib.Path]:
    tree = tel400.load_plans(MANUAL).to_dict()
    for number in tree["numbers"]:
        for rule in number["rules"]:
            if "time" in rule:
                rule["time"] = "00:00-23:59"
    tree["numbers"][0]["caps"][0]["limit"] = 10**9
    plans = tmp_path / "plans.json"
    plans.write_text(json.dumps(tree, ensure_ascii=False))
    return tree, plans


class _Server:
    """tel400-esl in its own process; its log in a file (a pipe nobody reads would block it once full)."""

    def __init__(self, tmp_path, args: list[str], loop: str) -> None:
        exe = pathlib.Path(sys.executable).with_name("tel400-esl")
        self.log_path = tmp_path / "tel400-esl.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen([str(exe), *args], stderr=self._log,
                                        env={**os.environ, "TEL400_ESL_LOOP": loop})

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + 60
        while text not in self.log_path.read_text():
            assert self.process.poll() is None and time.monotonic() < deadline, self.log_path.read_text()
            time.sleep(0.05)

    def cpu(self) -> tuple[float, float]:
        return _cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        self._log.close()


async def _place_calls(place, sample: list[str]) -> list[Call]:
    """CALLS calls, CONCURRENCY at a time, each bridged to its first target and talking 1 s."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> Call:
        async with gate:
            return await place(Call(caller=sample[i % len(sample)], bridge=lambda legs: (legs[0], 1)))

    return await asyncio.gather(*(one(i) for i in range(CALLS)))


async def _outbound(server: _Server, port: int, sample: list[str]) -> tuple[list[Call], float, float, float]:
    """FreeSWITCH connects to tel400-esl for each call (``socket``)."""
    peer = FreeSwitchPeer()
    server.wait_for("listening")

    async def place(call: Call) -> Call:
        return await peer.play("127.0.0.1", port, call)

    await _place_calls(place, sample)  # warm-up: first compile, zone tables
    return await _measured(server, place, sample)


async def _inbound(server_args, tmp_path, loop: str, sample: list[str]):
    """tel400-esl connects to FreeSWITCH's event socket once; every call is parked and announced on it."""
    switch = InboundSwitch()
    await switch.start("127.0.0.1", 0)
    server = _Server(tmp_path, [*server_args, "--inbound", f"127.0.0.1:{switch.port}"], loop)
    try:
        while "esl_inbound_serving" not in server.log_path.read_text():
            assert server.process.poll() is None, server.log_path.read_text()
            await asyncio.sleep(0.05)

        async def place(call: Call) -> Call:
            return await switch.place(call, timeout=30)

        await _place_calls(place, sample)  # warm-up
        return server, await _measured(server, place, sample)
    except BaseException:
        server.stop()
        raise
    finally:
        await switch.close()


async def _measured(server: _Server, place, sample: list[str]):
    user_before, sys_before = server.cpu()
    started = time.perf_counter()
    calls = await _place_calls(place, sample)
    wall = time.perf_counter() - started
    user_after, sys_after = server.cpu()
    return calls, wall, user_after - user_before, sys_after - sys_before


@pytest.mark.parametrize("mode,loop", [("outbound", "uvloop"), ("outbound", "asyncio"), ("inbound", "uvloop")])
def test_esl_calls_per_second(benchmark, tmp_path, mode, loop):
    tree, plans = _plans(tmp_path)
    sample = [c for c in callers() if c.startswith("1")]
    args = ["--plans", str(plans)]
    if mode == "outbound":
        port = free_port()
        server = _Server(tmp_path, [*args, "--port", str(port)], loop)
        try:
            calls, wall, user, system = asyncio.run(_outbound(server, port, sample))
        finally:
            server.stop()
    else:
        server, (calls, wall, user, system) = asyncio.run(_inbound(args, tmp_path, loop, sample))
        server.stop()
    log = server.log_path.read_text()
    assert not any(c.parked for c in calls)
    router = tel400.Router(tel400.PlanSet.from_dict(tree))
    # every call went as its decision says (a shortcut that failed calls would look cheaper):
    # bridged and talked 1 s, or refused by the plan (the sample holds a few blacklisted callers)
    bridged = [router.route("4001012345", c.caller).action == "bridge" for c in calls]
    assert [c.billsec == 1 and c.apps[-1][0] == "bridge" for c in calls] == bridged
    assert sum(bridged) > CALLS * 0.9
    assert "esl_bridge_failed" not in log and "esl_call_end_unconfirmed" not in log
    t = time.perf_counter()
    for i in range(20000):
        router.route("4001012345", sample[i % len(sample)])
    route_us = (time.perf_counter() - t) / 20000 * 1e6
    benchmark.extra_info.update(
        mode=mode, calls=CALLS, concurrency=CONCURRENCY,
        loop=loop if loop == "asyncio" or _has_uvloop() else "asyncio", calls_per_s=round(CALLS / wall),
        server_cpu_us_per_call=round((user + system) / CALLS * 1e6),
        server_user_us_per_call=round(user / CALLS * 1e6), server_sys_us_per_call=round(system / CALLS * 1e6),
        route_us_per_call=round(route_us, 2),
    )
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
