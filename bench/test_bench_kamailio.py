"""Kamailio CPU per call: native cfg, minimal KEMI, tel400 (redirect and proxy), one run.

Kamailio runs pinned to one core (``taskset -c 0``, two workers, ``-x tlsf``)
and sipp on the other; each variant takes the same sipp load on loopback
(bounded: a fixed number of calls at a fixed rate).  CPU per call is the
user + system time of every Kamailio process over the run, divided by the
calls; calls per second is calls over wall time.

(a) native kamailio.cfg answering every INVITE with a hard-coded 302;
(b) a minimal KEMI script (app_python3) doing the same 302;
(c) the tel400 adapter on the manual's plan in redirect mode;
(d) the tel400 adapter in proxy mode, bridging to a sipp target.

The manual's plan is used with its time slots widened to the whole day, so
that every call takes the province + time + split + blacklist + cap path at
whatever hour the benchmark runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import time

import pytest

import tel400

from _inputs import MANUAL
from tests.kamailio_harness import ADAPTER, Kamailio, SippUAS, answers, modules_dir, options_ping, sipp_uac

CALLS = 10_000
RATE = 4_000
PROXY_RATE = 1_500
ROUNDS = 7
pytestmark = pytest.mark.skipif(shutil.which("kamailio") is None or shutil.which("sipp") is None,
                                reason="needs Debian's kamailio and sip-tester")

NATIVE_CFG = """#!KAMAILIO
debug=1
children=2
listen=udp:127.0.0.1:{port}
rundir="{rundir}"
loadpath "{modules}/"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "corex.so"
loadmodule "textops.so"
request_route {{
    if (is_method("ACK")) {{ exit; }}
    if (is_method("OPTIONS")) {{ sl_send_reply("200", "OK"); exit; }}
    append_branch("sip:13901010001@gw.example.net:5060", "1.0");
    append_branch("sip:13901010002@gw.example.net:5060", "0.9");
    sl_send_reply("302", "Moved Temporarily");
    exit;
}}
"""

KEMI_CFG = """#!KAMAILIO
debug=1
children=2
listen=udp:127.0.0.1:{port}
rundir="{rundir}"
loadpath "{modules}/"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "corex.so"
loadmodule "kex.so"
loadmodule "app_python3.so"
modparam("app_python3", "load", "{script}")
cfgengine "python"
"""

KEMI_SCRIPT = '''
import KSR

def mod_init():
    return Redirect()

class Redirect:
    def child_init(self, rank):
        return 0
    def ksr_request_route(self, msg):
        if KSR.is_ACK():
            return 1
        if KSR.is_OPTIONS():
            KSR.sl.sl_send_reply(200, "OK")
            return 1
        KSR.corex.append_branch_uri_q("sip:13901010001@gw.example.net:5060", "1.0")
        KSR.corex.append_branch_uri_q("sip:13901010002@gw.example.net:5060", "0.9")
        KSR.sl.sl_send_reply(302, "Moved Temporarily")
        return 1
    def ksr_reply_route(self, msg):
        return 1
    def ksr_onsend_route(self, msg):
        return 1
'''


class PlainKamailio:
    """Kamailio with a cfg of our own (variants a and b), pinned to core 0."""

    def __init__(self, workdir, cfg_text):
        from tests.kamailio_harness import free_udp_port

        self.dir = workdir
        self.port = free_udp_port()
        self.cfg = workdir / "kamailio.cfg"
        self.cfg.write_text(cfg_text.format(port=self.port, rundir=workdir, modules=modules_dir(),
                                            script=workdir / "redirect.py"))
        (workdir / "redirect.py").write_text(KEMI_SCRIPT)
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            ["taskset", "-c", "0", "kamailio", "-f", str(self.cfg), "-DD", "-E", "-x", "tlsf", "-m", "512"],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, cwd=self.dir,
        )
        for _ in range(200):
            if (options_ping(self.port) or "").startswith("SIP/2.0 200"):
                return self
            time.sleep(0.05)
        raise RuntimeError("kamailio did not start")

    cpu_seconds = Kamailio.cpu_seconds

    def stop(self):
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=15)


def _pinned(server):
    """Pin an already started tel400 Kamailio (all its processes) to core 0."""
    from tests.kamailio_harness import _session_pids

    for pid in _session_pids(server.process.pid):
        subprocess.run(["taskset", "-p", "-c", "0", str(pid)], stdout=subprocess.DEVNULL, check=False)
    return server


def _round(server, tmp_path, callers, expect, calls, rate):
    """CPU µs per call and calls per second of one run of ``calls`` calls."""
    cpu_before = server.cpu_seconds()
    started = time.perf_counter()
    counts = sipp_uac(tmp_path, "uac_call", server.port, "4001012345", callers, calls=calls, rate=rate, timeout_s=120)
    wall = time.perf_counter() - started
    got = answers(counts)
    assert got.get(expect, 0) >= calls * 0.99, got
    return (server.cpu_seconds() - cpu_before) / calls * 1e6, calls / wall


def _manual_all_day(target_host=None):
    """The manual's plan open all day; with ``target_host``, every target a user there."""
    tree = tel400.load_plans(MANUAL).to_dict()
    for number in tree["numbers"]:
        for rule in number["rules"]:
            if "time" in rule:
                rule["time"] = "00:00-23:59"
            if target_host and "targets" in rule:
                for target in rule["targets"]:
                    target["to"] = f"t{target['to'].split('@')[0]}@{target_host}"
    tree["numbers"][0]["caps"][0]["limit"] = 10**9
    return tree


CALLERS = [f"1390101{i:04d}" for i in range(1000)]  # Beijing: the province rule


def test_kamailio_redirect_cpu_per_call(benchmark, tmp_path):
    """(a), (b), (b2) and (c) run side by side, their rounds interleaved, so that
    the machine's drift during the benchmark falls on all of them alike."""
    variants = {}
    for name, make in (
        ("a: native cfg redirect", lambda d: PlainKamailio(d, NATIVE_CFG).start()),
        ("b: minimal KEMI redirect", lambda d: PlainKamailio(d, KEMI_CFG).start()),
        ("b2: minimal KEMI redirect in tel400's cfg", _kemi_in_tel400_cfg),
        ("c: tel400 redirect, manual plan", lambda d: _tel400(d, "redirect", _manual_all_day())),
    ):
        workdir = tmp_path / name[0:2].strip(":")
        workdir.mkdir()
        variants[name] = make(workdir)
    try:
        for server in variants.values():
            _round(server, tmp_path, CALLERS, 302, 2000, RATE)  # warm-up
        runs = {name: [] for name in variants}
        rates = {name: [] for name in variants}
        for _ in range(ROUNDS):
            for name, server in variants.items():
                cpu, rate = _round(server, tmp_path, CALLERS, 302, CALLS, RATE)
                runs[name].append(cpu)
                rates[name].append(rate)
    finally:
        for server in variants.values():
            server.stop()
    medians = {name: round(statistics.median(v), 1) for name, v in runs.items()}
    benchmark.extra_info.update(
        calls=CALLS, rate=RATE, rounds=ROUNDS, cpu_us_per_call=medians,
        cpu_us_runs={name: [round(x, 1) for x in v] for name, v in runs.items()},
        calls_per_s={name: round(statistics.median(v)) for name, v in rates.items()},
    )
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def _kemi_in_tel400_cfg(workdir):
    """(b) in tel400's kamailio.cfg (tm, dialog, rr … loaded): what the module set
    costs, apart from tel400's own work."""
    script = workdir / "redirect.py"
    script.write_text(KEMI_SCRIPT)
    return _pinned(Kamailio(workdir, {"TEL400_PLANS": "unused"}, children=2, shm_mb=512, script=script).start())


def _tel400(workdir, mode, tree):
    plans = workdir / "plans.json"
    plans.write_text(json.dumps(tree, ensure_ascii=False))
    return _pinned(Kamailio(workdir, {
        "TEL400_PLANS": str(plans),
        "TEL400_COUNTERS": f"shm://{workdir}/counters?slots=65536",
        "TEL400_GATEWAY": "gw.example.net:5060",
        "TEL400_REPLY_MODE": mode,
    }, children=2, shm_mb=512).start())


def test_kamailio_d_tel400_proxy(benchmark, tmp_path):
    """(d): bridged calls through the proxy to a sipp target (INVITE, 180, 200,
    ACK, BYE, 200 all cross Kamailio), at a rate one core sustains."""
    target = SippUAS(tmp_path, "uas_answer").start()
    subprocess.run(["taskset", "-p", "-c", "1", str(target.pid)], stdout=subprocess.DEVNULL, check=False)
    server = _tel400(tmp_path, "proxy", _manual_all_day(f"127.0.0.1:{target.port}"))
    try:
        _round(server, tmp_path, CALLERS, 200, 1000, PROXY_RATE)
        runs = [_round(server, tmp_path, CALLERS, 200, CALLS, PROXY_RATE) for _ in range(3)]
    finally:
        server.stop()
        target.stop()
    benchmark.extra_info.update(
        calls=CALLS, rate=PROXY_RATE, cpu_us_per_call={"d: tel400 proxy to a sipp target": round(
            statistics.median(cpu for cpu, _ in runs), 1)},
        calls_per_s={"d: tel400 proxy to a sipp target": round(statistics.median(rate for _, rate in runs))},
    )
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
