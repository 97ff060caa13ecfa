"""The portal in a real browser: Debian's Chromium, headless, driven by Selenium, against a real tel400-http.

Selenium Manager is never asked to download anything: the driver's path is
given (``/usr/bin/chromedriver``) and ``SE_OFFLINE=true`` is set.  Chromium
runs as root in CI, hence ``--no-sandbox``; ``--disable-dev-shm-usage``
because Debian's wrapper does not always add it.

Every page the tests visit can be kept with :func:`shot` in
``artifacts/screenshots/`` (not in git); a shot is also checked not to be blank.
"""

from __future__ import annotations

import os
import pathlib
import struct
import zlib

import pytest

from ..conftest import ROOT
from ..portal_harness import PortalServer

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = ROOT / "artifacts" / "screenshots"
#: A page with fewer distinct pixel rows than this is taken as blank.
MIN_DISTINCT_ROWS = 10

os.environ.setdefault("SE_OFFLINE", "true")


def new_driver(lang: str = "zh-CN"):
    """A headless Chromium whose Accept-Language is ``lang``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                 f"--lang={lang}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"intl.accept_languages": lang})
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


@pytest.fixture(scope="session")
def portal_server(tmp_path_factory):
    """One tel400-http on its embedded defaults for the browser tests (operator and company passwords known)."""
    server = PortalServer(tmp_path_factory.mktemp("portal-browser"), "--at-tolerance", "inf").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def base_url(portal_server) -> str:
    return portal_server.url + "/portal"


@pytest.fixture(scope="session")
def driver():
    d = new_driver("zh-CN")
    yield d
    d.quit()


@pytest.fixture
def browser(driver, base_url):
    """The session's browser with no cookies left by the previous test."""
    driver.get(base_url + "/login")
    driver.delete_all_cookies()
    yield driver
    driver.delete_all_cookies()


def click_and_wait(driver, element) -> None:
    """Click ``element`` (a submit) and wait until the page it leaves is gone (no race with the next find)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")
    element.click()

    def left(_driver) -> bool:
        try:
            old.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            # Mid-navigation chromedriver may answer for the old node with this
            # generic error instead of a stale reference: the page is gone too.
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    WebDriverWait(driver, 10).until(left)


def login(driver, base_url: str, login: str, password: str, *, operator: bool = False) -> None:
    """Log in through the login form (the company's, or the operator's)."""
    from selenium.webdriver.common.by import By

    driver.get(base_url + ("/login/operator" if operator else "/login"))
    driver.find_element(By.ID, "login").send_keys(login)
    driver.find_element(By.ID, "password").send_keys(password)
    click_and_wait(driver, driver.find_element(By.ID, "submit"))


def distinct_rows(png: bytes) -> int:
    """How many distinct pixel rows a PNG has (stdlib only: zlib on the IDAT chunks)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    i, data = 8, b""
    width = height = colour = 0
    while i < len(png):
        length, kind = struct.unpack(">I4s", png[i:i + 8])
        chunk = png[i + 8:i + 8 + length]
        if kind == b"IHDR":
            width, height, _depth, colour = struct.unpack(">IIBB", chunk[:10])
        elif kind == b"IDAT":
            data += chunk
        i += 12 + length
    raw = zlib.decompress(data)
    stride = width * (4 if colour == 6 else 3) + 1
    # rows as stored, after their filter: a blank page's rows are alike whatever filter each
    # uses, a page with content gives many distinct rows
    return len({raw[r * stride + 1:(r + 1) * stride] for r in range(height)})


def shot(driver, name: str) -> pathlib.Path:
    """Save a screenshot as artifacts/screenshots/<name>.png and assert the page is not blank."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    png = driver.get_screenshot_as_png()
    path = SHOTS / f"{name}.png"
    path.write_bytes(png)
    rows = distinct_rows(png)
    assert rows >= MIN_DISTINCT_ROWS, f"screenshot {name} looks blank ({rows} distinct rows)"
    return path
