"""``tel400-http --workers N`` and ``tel400-esl --workers N``: the real commands, their processes, their signals.

Each test runs the console scripts as users do (PYTHONPATH inherited, so the
sources under test serve) and looks at the processes through /proc.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

import tel400
from tel400.testing import free_port
from tel400_freeswitch.peer import Call, FreeSwitchPeer

from .conftest import EXAMPLES

BIN = pathlib.Path(sys.executable).parent
NUMBER = "4001000001"
#: one number, bridged to one target; ``calls`` per day capped (the ESL cap test)
PLANS = {"numbers": [{"number": NUMBER, "rules": [{"name": "all", "targets": ["13901010001"]}],
                      "caps": [{"metric": "calls", "per": "day", "limit": 20}]}]}

pytestmark = pytest.mark.skipif(not tel400.IMPLEMENTATION == "cython", reason="shm:// counters need the extension")


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (zombies left out: they serve nothing)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def until(condition, timeout_s: float = 20, every_s: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"not within {timeout_s} s: {what}")


class Supervised:
    """A server run with ``--workers``: the parent process, what it printed, its workers."""

    def __init__(self, command: str, *args: str, cwd, banner_end: str) -> None:
        self.proc = subprocess.Popen([str(BIN / command), "--port", "0", *args], cwd=cwd, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(s, lines), daemon=True)
                         for s, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()
        until(lambda: any(banner_end in line for line in self.out + self.err) or self.proc.poll() is not None,
              what=f"{command} to print {banner_end!r}")
        text = "".join(self.out + self.err)
        match = re.search(r"127\.0\.0\.1:(\d+)", text)
        assert match and self.proc.poll() is None, text
        self.port = int(match.group(1))

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self, n: int) -> set[int]:
        """The worker pids, once there are ``n``."""
        return until(lambda: (lambda c: c if len(c) == n else None)(children(self.proc.pid)),
                     what=f"{n} workers")

    def stderr(self) -> str:
        return "".join(self.err)

    def stop(self, sig=signal.SIGTERM, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        for reader in self._readers:
            reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if not stream.closed and not any(r.is_alive() for r in self._readers):
                stream.close()
        return code


@pytest.fixture
def servers():
    started: list[Supervised] = []

    def start(command: str, *args: str, cwd, banner_end: str) -> Supervised:
        started.append(Supervised(command, *args, cwd=cwd, banner_end=banner_end))
        return started[-1]

    yield start
    for server in started:
        server.stop()
        try:  # nothing of a test may outlive it
            os.killpg(server.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def http(servers, tmp_path, *args: str, workers: int = 4) -> Supervised:
    return servers("tel400-http", "--workers", str(workers), "--counters", f"shm:///{tmp_path}/counters",
                   "--data", str(tmp_path / "data"), "--calls", "memory://", *args,  # XXX until shared calls
                   cwd=tmp_path, banner_end="  also:")


def esl(servers, tmp_path, plans: str, *args: str, workers: int = 4) -> Supervised:
    return servers("tel400-esl", "--workers", str(workers), "--counters", f"shm:///{tmp_path}/counters",
                   "--plans", plans, *args, cwd=tmp_path, banner_end="workers started")


def get(url: str, timeout_s: float = 10) -> tuple[int, dict, dict]:
    """A GET on a new connection (so that any worker may take it): status, headers, JSON."""
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return resp.status, dict(resp.headers), json.loads(resp.read())


def health(server: Supervised) -> dict:
    status, headers, body = get(server.url + "/healthz")
    assert status == 200 and headers["x-tel400-worker"] == str(body["worker"])
    return body


def seen_workers(server: Supervised, n: int, tries: int = 2000) -> dict[int, int]:
    """worker id → pid, from /healthz on new connections until ``n`` workers answered."""
    seen: dict[int, int] = {}
    for _ in range(tries):
        body = health(server)
        seen[body["worker"]] = body["pid"]
        if len(seen) == n:
            return seen
    raise AssertionError(f"only workers {sorted(seen)} answered in {tries} requests")


# -- tel400-http ---------------------------------------------------------------------------------


def test_four_http_workers_serve_one_port_and_the_first_start_happens_once(servers, tmp_path):
    server = http(servers, tmp_path)
    pids = server.workers(4)
    assert set(seen_workers(server, 4).values()) == pids
    status, _, decision = get(server.url + "/v1/ping")
    assert status == 200 and decision == {"pong": True}
    assert server.stop() == 0
    out = "".join(server.out)
    # the banner, the operator's password and the example company's: printed once, by the first start
    assert out.count("listening on") == 1 and out.count("portal:  operator") == 1 and out.count("company 400") == 1
    assert (tmp_path / "data" / "admin-token").exists()
    assert "4 workers started" in server.stderr()
    assert not any(alive(pid) for pid in pids)


def test_a_killed_worker_is_restarted_and_the_service_keeps_answering(servers, tmp_path):
    server = http(servers, tmp_path)
    before = server.workers(4)
    victim = seen_workers(server, 4)[2]
    os.kill(victim, signal.SIGKILL)
    # the others take the connections meanwhile: every request answers
    for _ in range(50):
        assert get(server.url + "/v1/ping")[0] == 200
    after = until(lambda: (lambda c: c if len(c) == 4 and victim not in c else None)(children(server.proc.pid)),
                  what="the killed worker replaced")
    assert len(after & before) == 3
    assert seen_workers(server, 4)[2] not in before  # worker 2 again, a new process
    assert f"worker 2 (pid {victim}) was killed by SIGKILL" in server.stderr()
    assert server.stop() == 0


def test_a_plan_change_reaches_every_worker_within_a_second(servers, tmp_path):
    server = http(servers, tmp_path)
    server.workers(4)
    seen_workers(server, 4)
    token = (tmp_path / "data" / "admin-token").read_text().strip()
    numbers = {body["worker"]: body["numbers"] for body in (health(server) for _ in range(40))}
    plan = {"number": "4009999999", "rules": [{"name": "all", "targets": ["13901010001"]}]}
    req = urllib.request.Request(server.url + "/v1/numbers/4009999999", data=json.dumps(plan).encode(),
                                 method="PUT", headers={"Authorization": f"Bearer {token}",
                                                        "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status in (200, 201)
    written = time.monotonic()
    before = max(numbers.values())
    updated: dict[int, float] = {}
    stale_late = []
    while len(updated) < 4 and time.monotonic() - written < 20:
        body = health(server)
        elapsed = time.monotonic() - written
        if body["numbers"] == before + 1:
            updated.setdefault(body["worker"], elapsed)
        elif elapsed > 1.0:
            stale_late.append((body["worker"], round(elapsed, 2)))
    assert sorted(updated) == [0, 1, 2, 3], updated
    # every worker's own watcher polls the shared store (every 0.5 s): no worker routes by the old plans past 1 s
    assert not stale_late, stale_late
    assert server.stop() == 0


def test_sigterm_lets_requests_in_flight_finish_then_every_process_exits_0(servers, tmp_path):
    server = http(servers, tmp_path)
    pids = server.workers(4)
    seen_workers(server, 4)
    body = b'{"dialed": "4001100868", "caller": "13901012345"}'
    head = (b"POST /v1/route HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    conns = []
    for _ in range(12):  # requests in flight: heads sent, bodies not yet
        conn = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        conn.sendall(head + body[:5])
        conns.append(conn)
    time.sleep(0.5)  # the heads are read
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # every worker is shutting down
    answers = []
    for conn in conns:
        conn.sendall(body[5:])
        answer = b""
        while chunk := conn.recv(65536):  # the answer says "connection: close": read to the end
            answer += chunk
        answers.append(answer)
        conn.close()
    assert all(a.startswith(b"HTTP/1.1 200") and b'"action":"' in a for a in answers), answers
    assert server.stop() == 0
    assert not any(alive(pid) for pid in pids)
    assert "SIGTERM: stopping 4 workers" in server.stderr()


def test_workers_exit_when_the_parent_is_killed(servers, tmp_path):
    server = http(servers, tmp_path)
    pids = server.workers(4)
    server.proc.kill()
    server.proc.wait(10)
    until(lambda: not any(alive(pid) for pid in pids), what="the workers to exit after their parent")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2)


def test_a_crash_loop_makes_the_parent_give_up(servers, tmp_path):
    server = http(servers, tmp_path, "--crash-limit", "3/60", workers=2)
    killed = set()
    for _ in range(3):  # three deaths within the minute
        pid = sorted(server.workers(2) - killed)[0]
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
        until(lambda: pid not in children(server.proc.pid), what="the worker reaped")
    assert server.proc.wait(30) == 1
    assert "3 worker deaths within 60 s (--crash-limit 3/60): a crash loop, giving up" in server.stderr()
    until(lambda: not children(server.proc.pid), what="the other worker stopped")


@pytest.mark.parametrize("command", ["tel400-http", "tel400-esl"])
def test_memory_counters_are_refused_with_several_workers(command, tmp_path):
    done = subprocess.run([str(BIN / command), "--workers", "2", "--plans", str(EXAMPLES / "manual.toml"),
                           "--port", "0"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--workers 2 needs counters the workers share" in done.stderr and "memory://" in done.stderr
    done = subprocess.run([str(BIN / command), "--workers", "0", "--plans", str(EXAMPLES / "manual.toml")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--workers: expected at least 1, got 0" in done.stderr


def test_a_busy_port_is_one_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([str(BIN / "tel400-http"), "--workers", "3", "--counters", f"shm:///{tmp_path}/c",
                               "--port", str(port)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count(f"cannot listen on 127.0.0.1:{port}") == 1 and "workers started" not in done.stderr
    assert not (tmp_path / "tel400-data").exists()  # nothing was made for a server that could not listen


# -- tel400-esl --------------------------------------------------------------------------------


def sqlite_plans(tmp_path) -> str:
    store = tel400.SqliteStore(tmp_path / "plans.db")
    store.replace_all(tel400.PlanSet.from_dict(PLANS), actor="test")
    return store.url


def held_by(pids, port: int) -> dict[int, int]:
    """pid → connections to ``port`` it holds (sockets matched through /proc/net/tcp)."""
    inodes = set()
    for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":  # ESTABLISHED, our side
            inodes.add(fields[9])
    held = {}
    for pid in pids:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        held[pid] = sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)
    return held


def test_four_esl_workers_serve_and_share_one_cap(servers, tmp_path):
    server = esl(servers, tmp_path, sqlite_plans(tmp_path))
    pids = server.workers(4)
    until(lambda: server.stderr().count("esl_worker_serving") == 4, what="4 workers serving")
    assert {int(w) for w in re.findall(r"esl_worker_serving.*worker=(\d)", server.stderr())} == {0, 1, 2, 3}
    # connections that have not spoken yet: held by whichever worker accepted them
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(60)]
    try:
        held = until(lambda: (lambda h: h if sum(h.values()) == 60 else None)(held_by(pids, server.port)),
                     what="60 connections accepted")
        assert sum(1 for n in held.values() if n) >= 3, held  # the accepts spread over the workers
    finally:
        for conn in idle:
            conn.close()

    async def calls():
        peer = FreeSwitchPeer()
        return await asyncio.gather(*(peer.play("127.0.0.1", server.port, Call(destination=NUMBER))
                                      for _ in range(50)))

    played = asyncio.run(calls())
    bridged = [c for c in played if any(app == "bridge" for app, _ in c.apps)]
    # the calls cap is counted in shared memory: exactly 20 of 50 calls through 4 workers
    assert len(bridged) == 20 and all(not c.parked for c in played)
    assert server.stop() == 0
    assert not any(alive(pid) for pid in pids)


def test_an_esl_worker_that_cannot_start_is_a_crash_loop(servers, tmp_path):
    plans = sqlite_plans(tmp_path)
    server = esl(servers, tmp_path, plans, "--crash-limit", "3/60", workers=2)
    pids = server.workers(2)
    (tmp_path / "plans.db").unlink()  # the store is gone: a restarted worker fails as it starts
    os.kill(min(pids), signal.SIGKILL)
    assert server.proc.wait(60) == 1
    err = server.stderr()
    assert "a crash loop, giving up" in err and "exited with code" in err, err
    until(lambda: not children(server.proc.pid), what="the other worker stopped")
