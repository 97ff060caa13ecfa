"""``tel400-http`` as users run it: embedded defaults, a real socket, two processes
sharing a plan store, graceful shutdown, JSON logs."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time

import pytest

from .http_harness import ServerProcess

EXE = os.path.join(os.path.dirname(sys.executable), "tel400-http")
pytestmark = pytest.mark.slow


def test_embedded_defaults_serve_the_documented_requests(tmp_path):
    server = ServerProcess(tmp_path).start()
    try:
        assert f"listening on {server.url}" in server.banner and "3 numbers" in server.banner
        assert "switch:  127.0.0.0/8, ::1/128, without a secret" in server.banner  # this host only
        token_file = tmp_path / "tel400-data" / "admin-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        # the banner's curl examples, as a user would paste them
        status, body = server.request("POST", "/v1/route", b'{"dialed": "4001012345", "caller": "13901012345"}')
        decision = json.loads(body)
        assert status == 200 and decision["number"] == "4001012345" and decision["province"] == "CN-BJ"
        assert decision["reason"] in ("ok", "closed")  # depends on the hour in Beijing
        auth = {"Authorization": f"Bearer {token}"}
        status, body = server.request("GET", "/v1/numbers", headers=auth)
        assert (status, json.loads(body)) == (200, {"numbers": ["4001012345", "4001100868", "4001532532"]})
        status, body = server.request("GET", "/v1/numbers/4001012345/report", headers=auth)
        assert status == 200 and json.loads(body)["calls"] == 1
        assert server.request("GET", "/v1/numbers", headers={"Authorization": "Bearer nope"})[0] == 401
        # the seeded PIN is stored hashed
        with sqlite3.connect(tmp_path / "tel400-data" / "plans.db") as db:
            (body,) = db.execute("SELECT body FROM plans WHERE number = '4001532532'").fetchone()
        stored = json.loads(body)
        assert stored["pin_hash"].startswith("scrypt:") and "pin" not in stored
        metrics = server.request("GET", "/metrics")[1].decode()
        assert 'tel400_decisions_total{action=' in metrics and "process_cpu_seconds_total" in metrics
    finally:
        assert server.stop() == 0
    # a second start keeps the store, the token and the records
    again = ServerProcess(tmp_path).start()
    try:
        status, body = again.request("GET", "/v1/numbers/4001012345/report",
                                     headers={"Authorization": f"Bearer {token}"})
        assert json.loads(body)["calls"] == 1
    finally:
        again.stop()


def test_graceful_shutdown_finishes_the_request_in_flight(tmp_path):
    server = ServerProcess(tmp_path).start()
    body = b'{"dialed": "4001012345", "caller": "13901012345", "call_id": "in-flight"}'
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /v1/route HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert server.proc.poll() is None  # still finishing our request
        with pytest.raises(OSError):  # but no longer taking new connections
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
        s.sendall(body[10:])
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["call_id"] == "in-flight"
    assert server.stop(15) == 0
    with sqlite3.connect(tmp_path / "tel400-data" / "records.db") as db:  # the queued record was written
        assert db.execute("SELECT COUNT(*) FROM records WHERE call_id = 'in-flight'").fetchone() == (1,)


def test_a_change_through_one_process_reaches_another_within_two_seconds(tmp_path):
    a = ServerProcess(tmp_path, "--data", "a").start()
    store = f"sqlite:///{tmp_path / 'a' / 'plans.db'}"
    b = ServerProcess(tmp_path, "--data", "b", "--plans", store, "--tokens", str(_tokens(tmp_path)),
                      "--at-tolerance", "inf").start()  # a test bed: routes a Tuesday at 10:00 whenever it runs
    try:
        token = (tmp_path / "a" / "admin-token").read_text().strip()
        route = b'{"dialed": "4001100868", "caller": "13901012345", "at": "2026-11-24T10:00"}'
        assert json.loads(b.request("POST", "/v1/route", route)[1])["action"] == "queue"
        plan = {"rules": [{"name": "all", "targets": ["13901010007"]}]}
        status, _ = a.request("PUT", "/v1/numbers/4001100868", json.dumps(plan).encode(),
                              {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        assert status == 200
        changed = time.monotonic()
        while json.loads(b.request("POST", "/v1/route", route)[1])["action"] != "bridge":
            assert time.monotonic() - changed < 2.0, "the change did not reach the other process in 2 s"
            time.sleep(0.05)
        # and the other process's admin API, with its own tokens file, shows it
        status, body = b.request("GET", "/v1/numbers/4001100868", headers={"Authorization": "Bearer b-secret"})
        assert status == 200 and json.loads(body)["rules"][0]["name"] == "all"
    finally:
        a.stop()
        b.stop()
    logs = [json.loads(line) for line in a.stderr().splitlines() if line.startswith("{")]
    assert any(e["event"] == "plan_changed" and e["actor"] == "admin" and e["level"] == "info" for e in logs)


def _tokens(tmp_path):
    path = tmp_path / "tokens.toml"
    digest = hashlib.sha256(b"b-secret").hexdigest()
    path.write_text(f'[[tokens]]\nname = "ops"\nsha256 = "{digest}"\nnumbers = ["*"]\n')
    return path


def test_command_line(tmp_path):
    out = subprocess.run([EXE, "--hash-token", "s3cret"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == hashlib.sha256(b"s3cret").hexdigest()
    # settings that apply to every number are refused whole (one bad number is not: see below)
    (tmp_path / "bad.toml").write_text('calendar = { holidays = ["2026-13-01"] }\n[[numbers]]\nnumber = "4001012345"\n')
    bad = subprocess.run([EXE, "--plans", str(tmp_path / "bad.toml"), "--data", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "bad.toml" in bad.stderr and "holidays" in bad.stderr
    (tmp_path / "tokens.toml").write_text("[[tokens]]\n")
    bad = subprocess.run([EXE, "--tokens", str(tmp_path / "tokens.toml"), "--data", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "tokens" in bad.stderr
    for bad_allow in ("10.0.0.0/33", "localhost"):
        bad = subprocess.run([EXE, "--switch-allow", bad_allow, "--data", str(tmp_path / "d")],
                             capture_output=True, text=True, timeout=30)
        assert bad.returncode == 2 and "--switch-allow" in bad.stderr
    (tmp_path / "clear-secret").write_text("s3cret\n")
    bad = subprocess.run([EXE, "--switch-secrets", str(tmp_path / "clear-secret"), "--data", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "SHA-256" in bad.stderr
    bad = subprocess.run([EXE, "--max-call-duration", "1e9", "--data", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "max_age_s" in bad.stderr
    for tolerance in ("-1", "nan"):
        bad = subprocess.run([EXE, "--at-tolerance", tolerance, "--data", str(tmp_path / "d")],
                             capture_output=True, text=True, timeout=30)
        assert bad.returncode == 2 and "at tolerance" in bad.stderr


def test_switch_secrets_from_the_command_line(tmp_path):
    import base64

    secrets = tmp_path / "switch-secrets"
    secrets.write_text(hashlib.sha256(b"fs-secret").hexdigest() + "\n")
    server = ServerProcess(tmp_path, "--switch-secrets", str(secrets)).start()
    route = b'{"dialed": "4001012345", "caller": "13901012345"}'
    try:
        assert "switch:  any address, with a secret" in server.banner
        assert server.request("POST", "/v1/route", route)[0] == 401
        assert server.request("POST", "/v1/route", route, {"Authorization": "Bearer fs-secret"})[0] == 200
        basic = "Basic " + base64.b64encode(b"freeswitch:fs-secret").decode()
        form = b"section=dialplan&Caller-Destination-Number=4001012345&Caller-Caller-ID-Number=13901012345"
        status, body = server.request("POST", "/freeswitch/dialplan", form, {"Authorization": basic})
        assert status == 200 and b'<document type="freeswitch/xml">' in body
        # curl (libcurl, as mod_xml_curl and Kamailio's http_client use it) with the secret in the URL
        url = server.url.replace("http://", "http://kamailio:fs-secret@") + "/kamailio/rtjson"
        out = subprocess.run(["curl", "-sf", url, "-d", route.decode()], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and json.loads(out.stdout)["version"] == "1.0"
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_a_bad_number_in_the_store_does_not_keep_the_server_from_starting(tmp_path, kind):
    # as an older version wrote it: minutes beyond a C long (before: OverflowError, no start)
    poison = {"number": "4007777777", "caps": [{"metric": "minutes", "per": "day", "limit": "1e30"}],
              "rules": [{"name": "all", "targets": ["13901010001"]}]}
    good = {"number": "4001012345", "rules": [{"name": "all", "targets": ["13901010002"]}]}
    if kind == "file":
        plans = tmp_path / "plans.json"
        plans.write_text(json.dumps({"numbers": [good, poison]}))
        source = str(plans)
    else:
        seeded = ServerProcess(tmp_path, "--data", "d").start()  # creates and seeds the store
        seeded.stop()
        db = sqlite3.connect(tmp_path / "d" / "plans.db")
        with db:
            db.execute("INSERT INTO plans (number, body, updated_at, updated_by) VALUES (?, ?, 0, 'old')",
                       ("4007777777", json.dumps(poison)))
        db.close()
        source = f"sqlite:///{tmp_path / 'd' / 'plans.db'}"
    server = ServerProcess(tmp_path, "--data", "d", "--plans", source).start()
    try:
        route = b'{"dialed": "4001012345", "caller": "13901012345"}'
        # routed by its plan (the manual's, in the seeded store, may be closed at this hour)
        assert json.loads(server.request("POST", "/v1/route", route)[1])["reason"] in ("ok", "closed")
        poisoned = route.replace(b"4001012345", b"4007777777")
        assert json.loads(server.request("POST", "/v1/route", poisoned)[1])["reason"] == "unknown_number"
        status, body = server.request("GET", "/readyz")
        assert status == 200 and json.loads(body)["quarantined"] == ["4007777777"]
        status, body = server.request("GET", "/metrics")
        assert b"tel400_plans_quarantined 1.0" in body
    finally:
        server.stop()
    logs = [json.loads(line) for line in server.stderr().splitlines() if line.startswith("{")]
    assert any(e["event"] == "plan_quarantined" and e["number"] == "4007777777" and e["level"] == "error"
               for e in logs)
