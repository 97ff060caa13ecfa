"""What worker processes cost: server CPU per request at 1, 2 and 4 workers, both servers.

Each server runs three times side by side (``--workers 1``, ``2``, ``4``, all
on ``shm://`` counters, so that only the process count differs), each idle
while another is measured; the measurements are interleaved for ``ROUNDS``
rounds and the medians reported.  CPU is the sum over every process of the
server (the supervisor included) from /proc, before and after each run.

* tel400-http: wrk (one thread, ``CONNECTIONS`` keep-alive connections,
  spread over the workers by the kernel) posting ``/v1/route`` for
  ``DURATION`` s, as in bench/test_bench_http.py;
* tel400-esl: the FreeSWITCH peer placing ``CALLS`` calls, ``CONCURRENCY``
  at a time, each bridged and hung up, as in bench/test_bench_esl.py.

Requests or calls per second are reported beside, but on this 2-core
machine the load generator shares the cores with the workers: throughput
cannot grow much past 2 workers.  CPU per request is the figure that shows
whether workers cost anything (a few scheduler switches more, the shared
counters the same).

    .venv/bin/pytest bench/test_bench_workers.py --benchmark-enable -q -s
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import time

import pytest

import tel400
from tel400_freeswitch.peer import Call, FreeSwitchPeer

from _inputs import MANUAL, callers
from test_bench_http import (DIALED, WRK, Process, _bridging_callers, _cpu_seconds, _open_plans, _post_json,
                             _route_script, wrk)

WORKERS = (1, 2, 4)
ROUNDS = 3
DURATION = 3  # seconds of wrk per measurement
CALLS = 1000  # ESL calls per measurement
CONCURRENCY = 50


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live children (the supervisor and its workers)."""
    total = _cpu_seconds(pid)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = pathlib.Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                total += _cpu_seconds(int(entry))
    return total


def _children(pid: int) -> int:
    return sum(1 for e in os.listdir("/proc") if e.isdigit() and os.path.exists(f"/proc/{e}/stat")
               and pathlib.Path(f"/proc/{e}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(pid))


def _wait_for_workers(pid: int, n: int) -> None:
    want = 0 if n == 1 else n
    deadline = time.monotonic() + 60
    while _children(pid) != want:
        assert time.monotonic() < deadline, f"{want} workers of {pid}"
        time.sleep(0.1)


def _print_table(title: str, unit: str, runs: dict[int, list[dict]]) -> dict:
    info = {}
    print(f"\n{title}")
    print(f"{'workers':>8}{unit + '/s':>12}{'CPU µs/' + unit:>16}{'CPU vs 1':>10}")
    base = statistics.median(r["cpu_us"] for r in runs[1])
    for n, rs in runs.items():
        rate = statistics.median(r["rate"] for r in rs)
        cpu = statistics.median(r["cpu_us"] for r in rs)
        print(f"{n:>8}{rate:>12,.0f}{cpu:>16.1f}{cpu / base:>10.2f}")
        info[f"w{n}_per_s"] = round(rate)
        info[f"w{n}_cpu_us"] = round(cpu, 1)
        info[f"w{n}_cpu_over_w1"] = round(cpu / base, 3)
    return info


@pytest.mark.skipif(WRK is None, reason="wrk (the HTTP load generator) is not installed: apt-get install wrk")
def test_http_cpu_per_request_by_workers(benchmark, tmp_path):
    tree = _open_plans()
    plans = tmp_path / "plans.json"
    plans.write_text(json.dumps(tree, ensure_ascii=False))
    sample = _bridging_callers(tree)
    bodies = [json.dumps({"dialed": DIALED, "caller": c}, separators=(",", ":")) for c in sample]
    script = tmp_path / "route.lua"
    script.write_text(_route_script(bodies))
    exe = str(pathlib.Path(sys.executable).with_name("tel400-http"))
    servers: dict[int, Process] = {}
    try:
        for n in WORKERS:
            # no call_id in these routes: no call is remembered, the calls registry is not used
            servers[n] = Process([exe, "--plans", str(plans), "--port", "0", "--workers", str(n),
                                  "--counters", f"shm:///{tmp_path}/counters-{n}",
                                  "--data", str(tmp_path / f"data-{n}"), "--records", "none", "--no-portal",
                                  "--sms-db", "none", "--log-level", "warning"], tmp_path / f"http-{n}.log")
        urls = {}
        for n, server in servers.items():
            banner = server.ready(b"  also:")
            urls[n] = banner.split("listening on ", 1)[1].split()[0]
            _wait_for_workers(server.proc.pid, n)
            assert _post_json(urls[n] + "/v1/route", bodies[0])["action"] == "bridge"
        for n in WORKERS:  # warm-up
            wrk(urls[n], script, duration=1)
        runs: dict[int, list[dict]] = {n: [] for n in WORKERS}
        for _ in range(ROUNDS):
            for n in WORKERS:
                pid = servers[n].proc.pid
                cpu0 = tree_cpu(pid)
                out = wrk(urls[n], script, duration=DURATION)
                cpu = tree_cpu(pid) - cpu0
                assert out["non2xx"] == 0 and out["socket_errors"] == 0, out
                runs[n].append({"rate": out["rps"], "cpu_us": cpu / out["requests"] * 1e6})
    finally:
        for server in servers.values():
            server.stop()
    info = _print_table(f"tel400-http POST /v1/route, wrk -t1 -c32 -d{DURATION}s, {ROUNDS} rounds "
                        f"interleaved, medians ({os.cpu_count()} cores shared with wrk)", "req", runs)
    benchmark.extra_info.update(info)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def test_esl_cpu_per_call_by_workers(benchmark, tmp_path):
    tree = tel400.load_plans(MANUAL).to_dict()
    for number in tree["numbers"]:
        for rule in number["rules"]:
            if "time" in rule:
                rule["time"] = "00:00-23:59"
    tree["numbers"][0]["caps"][0]["limit"] = 10**9
    plans = tmp_path / "plans.json"
    plans.write_text(json.dumps(tree, ensure_ascii=False))
    exe = str(pathlib.Path(sys.executable).with_name("tel400-esl"))
    sample = [c for c in callers() if c.startswith("1")]
    procs: dict[int, subprocess.Popen] = {}
    ports: dict[int, int] = {}
    logs = {n: tmp_path / f"esl-{n}.log" for n in WORKERS}
    try:
        for n in WORKERS:  # the log to a file: a pipe nobody reads would fill and stop the server
            with logs[n].open("w") as log:
                procs[n] = subprocess.Popen([exe, "--plans", str(plans), "--port", "0", "--workers", str(n),
                                             "--counters", f"shm:///{tmp_path}/counters-{n}"], stderr=log)
        for n, proc in procs.items():
            deadline = time.monotonic() + 60
            while "listening on" not in logs[n].read_text():
                assert proc.poll() is None and time.monotonic() < deadline, logs[n].read_text()
                time.sleep(0.1)
            line = logs[n].read_text().split("listening on ", 1)[1]
            ports[n] = int(line.split()[0].rsplit(":", 1)[1])
            _wait_for_workers(proc.pid, n)

        def place_calls(port: int) -> list[Call]:
            async def go():
                peer = FreeSwitchPeer()
                gate = asyncio.Semaphore(CONCURRENCY)

                async def one(i: int) -> Call:
                    async with gate:
                        return await peer.play("127.0.0.1", port, Call(caller=sample[i % len(sample)],
                                                                       bridge=lambda legs: (legs[0], 1)))

                return await asyncio.gather(*(one(i) for i in range(CALLS)))

            return asyncio.run(go())

        for n in WORKERS:  # warm-up
            place_calls(ports[n])
        runs: dict[int, list[dict]] = {n: [] for n in WORKERS}
        for _ in range(ROUNDS):
            for n in WORKERS:
                cpu0 = tree_cpu(procs[n].pid)
                started = time.perf_counter()
                calls = place_calls(ports[n])
                wall = time.perf_counter() - started
                cpu = tree_cpu(procs[n].pid) - cpu0
                assert not any(c.parked for c in calls)
                runs[n].append({"rate": CALLS / wall, "cpu_us": cpu / CALLS * 1e6})
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            proc.wait(timeout=60)
    info = _print_table(f"tel400-esl calls (peer: {CALLS} calls, {CONCURRENCY} at a time), {ROUNDS} rounds "
                        f"interleaved, medians ({os.cpu_count()} cores shared with the peer)", "call", runs)
    benchmark.extra_info.update(info)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
