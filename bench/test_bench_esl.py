"""Calls through the Event Socket adapter, with the FreeSWITCH peer on loopback.

``tel400-esl`` runs as its own process (the manual's plan, open all day);
the peer places CALLS calls, CONCURRENCY at a time, each bridged at once and
hung up.  Reported: calls per second, and the server's CPU time per call
(from /proc) beside the time of the route() decision inside it.
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

import tel400
from tel400.testing import free_port
from tel400_freeswitch.peer import Call, FreeSwitchPeer

from _inputs import MANUAL, callers

CALLS = 3000
CONCURRENCY = 50


def _cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_esl_calls_per_second(benchmark, tmp_path):
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
    server = subprocess.Popen([str(exe), "--plans", str(plans), "--port", str(port)],
                              stderr=subprocess.PIPE, text=True)
    try:
        assert "listening" in server.stderr.readline()
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
        cpu_before = _cpu_seconds(server.pid)
        started = time.perf_counter()
        calls = asyncio.run(place_calls())
        wall = time.perf_counter() - started
        cpu = _cpu_seconds(server.pid) - cpu_before
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        server.stderr.close()
    assert not any(c.parked for c in calls)
    router = tel400.Router(tel400.PlanSet.from_dict(tree))
    t = time.perf_counter()
    for i in range(20000):
        router.route("4001012345", sample[i % len(sample)])
    route_us = (time.perf_counter() - t) / 20000 * 1e6
    benchmark.extra_info.update(
        calls=CALLS, concurrency=CONCURRENCY, calls_per_s=round(CALLS / wall),
        server_cpu_us_per_call=round(cpu / CALLS * 1e6), route_us_per_call=round(route_us, 2),
    )
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
