"""The HTTP microservice under a real load generator (wrk), on loopback.

Three server processes run side by side, each idle while another is measured:

* ``tel400-http --records none`` (the manual's plan, open all day, caps lifted
  so that every call bridges): ``GET /v1/ping`` and ``POST /v1/route``;
* ``tel400-http`` with its call records on (``DATA/records.db``):
  ``POST /v1/route``, to show what recording costs;
* the framework peer, ``bench/http_peer_aiohttp.py``: the same ``/v1/ping``
  answer on aiohttp.web, beside uvicorn + raw ASGI.

wrk runs with one thread (the machine may have 2 cores, shared by wrk and the
server) for ``DURATION`` seconds per measurement; the measurements are
interleaved (ping, route, aiohttp ping, route with records) for ``ROUNDS``
rounds and the medians reported, so that a noisy neighbour hits every side.
A small Lua script cycles through pre-built route bodies (several callers) and
prints the figures as JSON in ``done()``.  Besides requests per second and
p50/p99 latency: the server's CPU time per request (from /proc), which
depends less on how wrk and the server share the cores.

    .venv/bin/pytest bench/test_bench_http.py --benchmark-enable -q -s
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import select
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request

import pytest

import tel400
from tel400.testing import free_port

from _inputs import MANUAL, callers

BENCH = pathlib.Path(__file__).resolve().parent
WRK = shutil.which("wrk")
THREADS = 1
CONNECTIONS = 32
DURATION = 3  # seconds per measurement
WARMUP = 1  # seconds, once per target before the rounds
ROUNDS = 3
N_CALLERS = 16
DIALED = "4001012345"
# route req/s over ping req/s: the target is 0.8; the floor sits below the noise of a shared
# 2-core machine (medians of 0.52-0.55 measured there), so that only a real regression fails
RATIO_TARGET = 0.8
RATIO_FLOOR = 0.6  # below the 0.8 target by the noise seen here; bench/report.py --guard checks it too

_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,' ..
    '"non2xx":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect, e.read, e.write, e.timeout))
end
"""


def _route_script(bodies: list[str]) -> str:
    """wrk Lua: POST /v1/route cycling through ``bodies`` (formatted once, in ``init``)."""
    quoted = ",\n".join(f"  {json.dumps(b)}" for b in bodies)  # a JSON string is a valid Lua string here
    return f"""
local bodies = {{
{quoted}
}}
local reqs = {{}}
local n = 0
init = function(args)
  for i, b in ipairs(bodies) do
    reqs[i] = wrk.format("POST", "/v1/route", {{["Content-Type"] = "application/json"}}, b)
  end
end
request = function()
  n = n % #reqs + 1
  return reqs[n]
end
""" + _DONE


def _open_plans() -> dict:
    """The manual's plan, every time slot open all day and every cap out of reach."""
    tree = tel400.load_plans(MANUAL).to_dict()
    for number in tree["numbers"]:
        for rule in number.get("rules", []):
            if "time" in rule:
                rule["time"] = "00:00-23:59"
        for cap in number.get("caps", []):  # out of reach: the benchmark measures counting, not refusing
            cap["limit"] = {"calls": tel400.limits.MAX_CAP_CALLS, "minutes": tel400.limits.MAX_CAP_MINUTES,
                            "cost": tel400.limits.MAX_CAP_COST}[cap["metric"]]
    return tree


def _bridging_callers(tree: dict) -> list[str]:
    """``N_CALLERS`` realistic callers that the plan bridges (no blacklisted segment)."""
    router = tel400.Router(tel400.PlanSet.from_dict(tree))
    out = []
    for caller in callers():
        if router.route(DIALED, caller).action == "bridge":
            out.append(caller)
            if len(out) == N_CALLERS:
                return out
    raise AssertionError("not enough bridging callers")


def _cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Process:
    """A server process, started at once; :meth:`ready` waits for ``marker`` on its stdout."""

    def __init__(self, args: list[str], log: pathlib.Path) -> None:
        self.log = log
        self._stderr = log.open("wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._stderr, bufsize=0)
        self.out = b""

    def ready(self, marker: bytes, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while not re.search(rb"(^|\n)" + re.escape(marker) + rb"[^\n]*\n", self.out):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"no {marker!r} within {timeout} s: {self.out!r} {self.log.read_text()}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"exited ({self.proc.wait()}): {self.out!r} {self.log.read_text()}")
            self.out += chunk
        return self.out.decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self._stderr.close()


def wrk(url: str, script: pathlib.Path, duration: float = DURATION, pid: int | None = None) -> dict:
    """One wrk run: requests/s, p50/p99 in ms, error counts (and the server's CPU µs per request)."""
    cpu0 = _cpu_seconds(pid) if pid else None
    command = [WRK, f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{duration}s", "--latency", "-s", str(script), url]
    run = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    cpu = _cpu_seconds(pid) - cpu0 if pid else None
    assert run.returncode == 0, run.stdout + run.stderr
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    assert line is not None, run.stdout + run.stderr
    raw = json.loads(line[len("WRKJSON "):])
    assert ("Non-2xx or 3xx responses" in run.stdout) == (raw["non2xx"] > 0), run.stdout
    out = {
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "requests": raw["requests"],
        "non2xx": raw["non2xx"],
        "socket_errors": raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
    }
    if cpu is not None:
        out["cpu_us"] = cpu / max(raw["requests"], 1) * 1e6
    return out


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def _post_json(url: str, body: str) -> dict:
    req = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        return json.loads(r.read())


def _metric(text: str, name: str, **labels) -> float:
    """One sample of a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + ("{" + want + "}" if want else " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _samples(text: str, name: str) -> dict[str, float]:
    return {line.split(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(name + "{")}


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


@pytest.mark.skipif(WRK is None, reason="wrk (the HTTP load generator) is not installed: apt-get install wrk")
def test_http_requests_per_second(benchmark, tmp_path):
    tree = _open_plans()
    plans = tmp_path / "plans.json"
    plans.write_text(json.dumps(tree, ensure_ascii=False))
    sample = _bridging_callers(tree)
    bodies = [json.dumps({"dialed": DIALED, "caller": c}, separators=(",", ":")) for c in sample]
    route_lua = tmp_path / "route.lua"
    route_lua.write_text(_route_script(bodies))
    ping_lua = tmp_path / "ping.lua"
    ping_lua.write_text(_DONE)

    exe = str(pathlib.Path(sys.executable).with_name("tel400-http"))
    ports = {"plain": free_port(), "records": free_port(), "aiohttp": free_port()}
    commands = {
        "plain": [exe, "--plans", str(plans), "--port", str(ports["plain"]),
                  "--data", str(tmp_path / "plain"), "--records", "none", "--log-level", "warning"],
        "records": [exe, "--plans", str(plans), "--port", str(ports["records"]),
                    "--data", str(tmp_path / "records"), "--log-level", "warning"],  # DATA/records.db
        "aiohttp": [sys.executable, str(BENCH / "http_peer_aiohttp.py"), "--port", str(ports["aiohttp"])],
    }
    servers: dict[str, Process] = {}
    try:
        for key, command in commands.items():
            servers[key] = Process(command, tmp_path / f"{key}.log")
        servers["plain"].ready(b"  also:")
        servers["records"].ready(b"  also:")
        servers["aiohttp"].ready(b"listening on")
        base = {k: f"http://127.0.0.1:{p}" for k, p in ports.items()}
        pids = {k: s.proc.pid for k, s in servers.items()}
        for key in ("plain", "records"):  # every body bridges, on both servers
            for body in bodies:
                assert _post_json(base[key] + "/v1/route", body)["action"] == "bridge", body
        assert json.loads(_get(base["plain"] + "/v1/ping")) == json.loads(_get(base["aiohttp"] + "/v1/ping"))

        measures = {
            "ping": (base["plain"] + "/v1/ping", ping_lua, pids["plain"]),
            "route": (base["plain"], route_lua, pids["plain"]),
            "aiohttp_ping": (base["aiohttp"] + "/v1/ping", ping_lua, pids["aiohttp"]),
            "route_records": (base["records"], route_lua, pids["records"]),
        }
        for url, script, _ in measures.values():  # warm-up: first requests, buffers, caches
            wrk(url, script, duration=WARMUP)
        runs: dict[str, list[dict]] = {name: [] for name in measures}
        for _ in range(ROUNDS):
            for name, (url, script, pid) in measures.items():
                runs[name].append(wrk(url, script, pid=pid))

        plain_metrics = _get(base["plain"] + "/metrics").decode()
        records_metrics = _get(base["records"] + "/metrics").decode()
    finally:
        for server in servers.values():
            server.stop()

    # every route request answered 200 and bridged: wrk's counts, and the servers' own
    route_runs = runs["route"] + runs["route_records"]
    assert sum(r["non2xx"] for r in route_runs) == 0, route_runs
    assert sum(r["socket_errors"] for r in route_runs) == 0, route_runs
    for text in (plain_metrics, records_metrics):
        statuses = _samples(text, "tel400_http_requests_total")
        assert set(statuses) <= {'tel400_http_requests_total{endpoint="ping",status="200"}',
                                 'tel400_http_requests_total{endpoint="route",status="200"}'}, statuses
        decisions = _samples(text, "tel400_decisions_total")
        assert all('action="bridge"' in k for k in decisions), decisions
    dropped = _metric(records_metrics, "tel400_http_records_dropped_total")
    with sqlite3.connect(tmp_path / "records" / "records.db") as db:
        written = db.execute("SELECT count(*) FROM records").fetchone()[0]

    ping_rps, route_rps = _median(runs["ping"], "rps"), _median(runs["route"], "rps")
    route_records_rps = _median(runs["route_records"], "rps")
    aiohttp_rps = _median(runs["aiohttp_ping"], "rps")
    ratio = route_rps / ping_rps
    info = {
        "wrk": f"-t{THREADS} -c{CONNECTIONS} -d{DURATION}s, {ROUNDS} rounds interleaved, medians",
        "cores": os.cpu_count(),
        "ping_rps": round(ping_rps),
        "route_rps": round(route_rps),
        "route_over_ping": round(ratio, 3),
        "route_over_ping_paired": round(statistics.median(
            r["rps"] / p["rps"] for r, p in zip(runs["route"], runs["ping"])), 3),
        "route_over_ping_cpu": round(_median(runs["ping"], "cpu_us") / _median(runs["route"], "cpu_us"), 3),
        "ping_p50_ms": round(_median(runs["ping"], "p50_ms"), 3),
        "ping_p99_ms": round(_median(runs["ping"], "p99_ms"), 3),
        "route_p50_ms": round(_median(runs["route"], "p50_ms"), 3),
        "route_p99_ms": round(_median(runs["route"], "p99_ms"), 3),
        "ping_cpu_us": round(_median(runs["ping"], "cpu_us"), 1),
        "route_cpu_us": round(_median(runs["route"], "cpu_us"), 1),
        "route_records_rps": round(route_records_rps),
        "route_records_p50_ms": round(_median(runs["route_records"], "p50_ms"), 3),
        "route_records_p99_ms": round(_median(runs["route_records"], "p99_ms"), 3),
        "route_records_cpu_us": round(_median(runs["route_records"], "cpu_us"), 1),
        "records_cost": round(1 - route_records_rps / route_rps, 3),
        "records_written": written,
        "records_dropped": int(dropped),
        "uvicorn_ping_rps": round(ping_rps),
        "aiohttp_ping_rps": round(aiohttp_rps),
        "aiohttp_ping_p50_ms": round(_median(runs["aiohttp_ping"], "p50_ms"), 3),
        "aiohttp_ping_p99_ms": round(_median(runs["aiohttp_ping"], "p99_ms"), 3),
        "aiohttp_ping_cpu_us": round(_median(runs["aiohttp_ping"], "cpu_us"), 1),
        "uvicorn_over_aiohttp": round(ping_rps / aiohttp_rps, 3),
        "rounds_rps": {name: [round(r["rps"]) for r in rs] for name, rs in runs.items()},
    }
    benchmark.extra_info.update(info)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)

    print()
    print(f"wrk {info['wrk']} ({info['cores']} cores shared by wrk and the server)")
    print(f"{'':28}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU µs/req':>12}")
    rows = [("GET /v1/ping (uvicorn)", "ping"), ("POST /v1/route", "route"),
            ("POST /v1/route, records on", "route_records"), ("GET /v1/ping (aiohttp)", "aiohttp_ping")]
    for label, name in rows:
        rs = runs[name]
        print(f"{label:28}{_median(rs, 'rps'):>9,.0f}{_median(rs, 'p50_ms'):>9.2f}"
              f"{_median(rs, 'p99_ms'):>9.2f}{_median(rs, 'cpu_us'):>12.1f}")
    print(f"route/ping {ratio:.2f} (target {RATIO_TARGET}; by server CPU per request "
          f"{info['route_over_ping_cpu']:.2f}); records cost {info['records_cost']:.1%} "
          f"({written} written, {int(dropped)} dropped); "
          f"uvicorn/aiohttp ping {info['uvicorn_over_aiohttp']:.2f}")
    print("per round:", json.dumps(info["rounds_rps"]))
    assert ratio > RATIO_FLOOR, f"route/ping = {ratio:.2f} (floor {RATIO_FLOOR}, target {RATIO_TARGET})"
    # every route the records server answered was written or counted as dropped
    routed = _metric(records_metrics, "tel400_http_requests_total", endpoint="route", status="200")
    assert written + dropped == routed, (written, dropped, routed)
