"""The portal in ``tel400-http`` as users start it: the banner, the passwords printed once, the options."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.parse
import urllib.request

from .portal_harness import ACME_NUMBER, OPERATOR, OPERATOR_PASSWORD, PortalServer, csrf_of


def _browser():
    """A urllib opener keeping cookies and not following redirects."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kw):
            return None

    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), NoRedirect)


def _login(opener, url: str, login: str, password: str, path: str = "/portal/login") -> int:
    with opener.open(url + path) as r:
        token = csrf_of(r.read().decode())
    body = urllib.parse.urlencode({"csrf": token, "login": login, "password": password}).encode()
    try:
        with opener.open(urllib.request.Request(url + path, data=body)) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_first_start_prints_the_portal_and_the_passwords_once(tmp_path):
    server = PortalServer(tmp_path).start()
    try:
        assert f"portal:  {server.url}/portal/" in server.banner
        lines = server.banner.splitlines()
        assert lines[1].startswith("  portal:") and lines[-1].startswith("  also:")  # the portal first
        assert server.company_password and "company 4001012345, password" in server.banner
        assert "operator 'operator', password" not in server.banner  # --operator-password was given
        assert _login(_browser(), server.url, ACME_NUMBER, server.company_password) == 303
        assert _login(_browser(), server.url, OPERATOR, OPERATOR_PASSWORD, "/portal/login/operator") == 303
        assert _login(_browser(), server.url, ACME_NUMBER, "wrong-password") == 401
    finally:
        assert server.stop() == 0
    again = PortalServer(tmp_path).start()
    try:
        assert "password " not in again.banner and server.company_password not in again.banner  # printed once
        assert _login(_browser(), again.url, ACME_NUMBER, server.company_password) == 303
    finally:
        again.stop()
    secret = tmp_path / "tel400-data" / "portal-secret"
    assert secret.stat().st_mode & 0o777 == 0o600


def test_an_operator_password_is_made_and_printed_without_the_option(tmp_path):
    from .http_harness import ServerProcess

    server = ServerProcess(tmp_path).start()
    try:
        m = re.search(r"operator 'operator', password (\S+)", server.banner)
        assert m
        assert _login(_browser(), server.url, "operator", m.group(1), "/portal/login/operator") == 303
    finally:
        server.stop()


def test_no_portal(tmp_path):
    server = PortalServer(tmp_path, "--no-portal").start()
    try:
        assert "/portal/" not in server.banner
        status, body = server.request("GET", "/portal/login")
        assert status == 404 and b"not_found" in body
    finally:
        server.stop()
    assert not (tmp_path / "tel400-data" / "portal.db").exists()


def test_bad_portal_options_are_refused_before_starting(tmp_path):
    import os
    import subprocess
    import sys

    exe = os.path.join(os.path.dirname(sys.executable), "tel400-http")
    for args in (["--login-failures", "0"], ["--lockout-window", "-1"], ["--operator-password", "short"],
                 ["--portal-max-upload", "0"], ["--session-hours", "0"], ["--address-failures", "0"]):
        done = subprocess.run([exe, "--data", str(tmp_path / "d"), *args], capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 2, (args, done.stderr)
        assert "tel400-http:" in done.stderr
