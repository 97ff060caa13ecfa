"""Helpers for the portal's tests: the portal in-process (Starlette's TestClient), or in a real ``tel400-http``.

In-process (httpx's ASGI transport; Starlette's TestClient would want httpx2):
:func:`make_portal` builds a service on the manual's plan (as
:func:`tests.http_harness.make_service` does), mounts the portal on it with an
:class:`~tel400_http.portal.accounts.Accounts` in ``tmp_path``, and gives
passwords to the operator and to two companies.  :class:`PortalClient`
logs in and reads the CSRF token from each page, as a browser would.

Real server: :class:`PortalServer` runs ``tel400-http`` on its embedded
defaults in a temporary directory and reads the passwords it prints once.
"""

from __future__ import annotations

import asyncio
import re

import httpx
from tel400_http.portal import create_portal
from tel400_http.portal.accounts import Accounts

from .http_harness import ServerProcess, make_service

OPERATOR, OPERATOR_PASSWORD = "operator", "operator-pass-1"
ACME_NUMBER, ACME_PASSWORD = "4001012345", "acme-pass-123"
OTHER_NUMBER, OTHER_PASSWORD = "4001100868", "other-pass-123"
SECRET = bytes(range(32))

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def make_portal(tmp_path, *, accounts: Accounts | None = None, https: bool = False, **service_options):
    """A service with the portal mounted at /portal; returns (service, accounts)."""
    service = make_service(tmp_path, **service_options)
    if accounts is None:
        accounts = Accounts(str(tmp_path / "portal.db"))
    accounts.ensure_operator(OPERATOR, OPERATOR_PASSWORD)
    accounts.set_company_password(ACME_NUMBER, ACME_PASSWORD, actor="test")
    accounts.set_company_password(OTHER_NUMBER, OTHER_PASSWORD, actor="test")
    service.mount("/portal", create_portal(service, accounts=accounts, secret_key=SECRET, https=https))
    return service, accounts


def csrf_of(html: str) -> str:
    """The CSRF token in a page's first form."""
    m = _CSRF.search(html)
    assert m, "no csrf field on the page"
    return m.group(1)


class PortalClient:
    """Synchronous requests to the service from one client ``address``, keeping cookies like a browser.

    Use it as a context manager (it owns an event loop); redirects are not followed.
    """

    def __init__(self, service, *, address: str = "testclient") -> None:
        self._runner = asyncio.Runner()
        transport = httpx.ASGITransport(app=service, client=(address, 50000))
        self._client = httpx.AsyncClient(transport=transport, base_url="http://tel400.test", follow_redirects=False)

    def __enter__(self) -> PortalClient:
        return self

    def __exit__(self, *exc) -> None:
        self._runner.run(self._client.aclose())
        self._runner.close()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._client.cookies

    def request(self, method: str, path: str, **kw) -> httpx.Response:
        return self._runner.run(self._client.request(method, path, **kw))

    def get(self, path: str, **kw) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return self.request("POST", path, **kw)

    def csrf(self, path: str = "/portal/login") -> str:
        r = self.get(path)
        assert r.status_code == 200, r.text
        return csrf_of(r.text)

    def login(self, login: str, password: str, *, kind: str = "company"):
        path = "/portal/login" if kind == "company" else "/portal/login/operator"
        return self.post(path, data={"csrf": self.csrf(path), "login": login, "password": password})

    def login_company(self, number: str = ACME_NUMBER, password: str = ACME_PASSWORD):
        r = self.login(number, password)
        assert r.status_code == 303, r.text
        return r

    def login_operator(self):
        r = self.login(OPERATOR, OPERATOR_PASSWORD, kind="operator")
        assert r.status_code == 303, r.text
        return r

    def form(self, path: str, data: dict, *, page: str | None = None, **kw):
        """POST ``data`` to ``path`` with the CSRF token of ``page`` (default ``path``)."""
        return self.post(path, data={"csrf": self.csrf(page or path), **data}, **kw)


class PortalServer(ServerProcess):
    """``tel400-http`` on its embedded defaults in ``cwd``, with the passwords it printed at first start."""

    def __init__(self, cwd, *args: str) -> None:
        super().__init__(cwd, "--operator-password", OPERATOR_PASSWORD, *args)
        self.company_password: str | None = None

    def start(self, timeout_s: float = 20) -> PortalServer:
        super().start(timeout_s)
        m = re.search(r"company (\d+), password (\S+)", self.banner)
        if m:
            self.company_password = m.group(2)
        return self


__all__ = ["ACME_NUMBER", "ACME_PASSWORD", "OPERATOR", "OPERATOR_PASSWORD", "OTHER_NUMBER", "OTHER_PASSWORD",
           "PortalClient", "PortalServer", "csrf_of", "make_portal"]
