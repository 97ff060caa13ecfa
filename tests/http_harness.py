"""Helpers for the HTTP service's tests: a service on a temporary SQLite store, a client.

The client drives the ASGI application in-process through httpx's ASGI
transport, the same bytes-free path a server would take; the server tests
run ``tel400-http`` itself on a loopback port.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request

import httpx

import tel400
from tel400.testing import free_port
from tel400_http import Service
from tel400_http.auth import ALL, Token, Tokens, hash_token
from tel400_http.records import CallRecords, plan_zones

from .conftest import EXAMPLES, ROOT

ADMIN, ACME, OTHER = "admin-secret-token", "acme-secret-token", "other-secret-token"


def tokens() -> Tokens:
    """An operator token, one for the company of 4001012345, one for 4001100868's."""
    def token(name, secret, numbers):
        return Token(name, bytes.fromhex(hash_token(secret)), frozenset(numbers))

    return Tokens([token("operator", ADMIN, [ALL]), token("acme", ACME, ["4001012345"]),
                   token("other", OTHER, ["4001100868"])])


def make_service(tmp_path, impl_name: str | None = None, *, records: bool = True, counters=None, store=None,
                 plans: tel400.PlanSet | None = None, pin_policy=None, calls=None, **options) -> Service:
    """A service routing the manual's plan (or ``plans``) from an SQLite store in ``tmp_path``
    (or from ``store`` as it is)."""
    if store is None:
        store = tel400.SqliteStore(tmp_path / "plans.db")
        store.replace_all(plans or tel400.load_plans(EXAMPLES / "manual.toml"), actor="test")
    router = tel400.Router.from_store(store, counters, implementation=impl_name, seed=7, pin_policy=pin_policy,
                                      calls=calls)
    watcher = tel400.PlanWatcher(router, store, version=router.plans_version, interval_s=0.1)
    call_records = None
    if records:
        # the tests route at fixed dates in 2026: a retention that keeps them whenever the tests run
        call_records = CallRecords(str(tmp_path / "records.db"), zone_of=plan_zones(router), interval_s=0.05,
                                   retention_days=100 * 365)
    options.setdefault("at_tolerance_s", math.inf)  # the tests route at fixed dates in 2026
    service = Service(router, store=store, watcher=watcher, records=call_records, tokens=tokens(),
                      gateway="gw.example:5060", **options)
    return service


class Client:
    """Synchronous requests to an ASGI app (each in its own event loop)."""

    def __init__(self, app) -> None:
        self.app = app

    def request(self, method: str, path: str, *, token: str | None = None, headers=None, **kwargs) -> httpx.Response:
        head = dict(headers or {})
        if token is not None:
            head["Authorization"] = f"Bearer {token}"

        async def go():
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://tel400.test") as client:
                return await client.request(method, path, headers=head, **kwargs)

        return asyncio.run(go())

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def put(self, path, **kw):
        return self.request("PUT", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def route(self, dialed="4001012345", caller="13901012345", at="2026-11-24T09:00", **fields) -> dict:
        body = {"dialed": dialed, "caller": caller, "at": at, **fields}
        r = self.post("/v1/route", json={k: v for k, v in body.items() if v is not None})
        assert r.status_code == 200, r.text
        return r.json()


class ServerProcess:
    """``tel400-http`` run as users run it, on a free loopback port."""

    def __init__(self, cwd, *args: str) -> None:
        self.cwd = cwd
        self.port = free_port()
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.start_options: dict = {}  # more subprocess.Popen arguments (preexec_fn, ...)
        self.banner = ""
        self._stderr = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20) -> ServerProcess:
        exe = os.path.join(os.path.dirname(sys.executable), "tel400-http")
        self.proc = subprocess.Popen([exe, "--port", str(self.port), *self.args], cwd=self.cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True, **self.start_options)
        lines = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("  also:"):
                self.banner = "".join(lines)
                return self
        self.stop()
        raise RuntimeError(f"tel400-http did not start: {''.join(lines)} {self._stderr}")

    def stop(self, timeout_s: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if not self.proc.stderr.closed:
            self._stderr = self.proc.stderr.read()
            self.proc.stderr.close()
            self.proc.stdout.close()
        return code

    def stderr(self) -> str:
        """What the server logged (after :meth:`stop`)."""
        return self._stderr

    def request(self, method: str, path: str, body: bytes | None = None, headers=None):
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


__all__ = ["ADMIN", "ACME", "OTHER", "Client", "ServerProcess", "make_service", "tokens", "ROOT"]
