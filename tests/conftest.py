"""Shared fixtures.

Every test that routes runs once per implementation: the ``impl`` fixture is
parametrised over the compiled engine and the pure-Python reference (as the
aio-libs projects do), and tests build routers through ``make_router``.
``--no-c-extensions`` runs the reference alone; so does
``TEL400_NO_EXTENSIONS=1``, which also makes the reference the default
everywhere else (normalize, locate, memory counters).
"""

from __future__ import annotations

import datetime as dt
import pathlib
import textwrap
import zoneinfo

import pytest
import structlog

import tel400
from tel400 import _impl

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")


@pytest.fixture(autouse=True)
def _restore_logging():
    """``tel400`` commands run in-process configure structlog for a command line (warnings only):
    give every other test the defaults back, or a later ``capture_logs`` sees nothing."""
    yield
    structlog.reset_defaults()


def at(year, month, day, hour=10, minute=0, tz=SHANGHAI) -> dt.datetime:
    """A wall-clock time in Shanghai (or ``tz``)."""
    return dt.datetime(year, month, day, hour, minute, tzinfo=tz)


def pytest_addoption(parser):
    parser.addoption("--no-c-extensions", action="store_true", help="test the pure-Python reference only")


def pytest_generate_tests(metafunc):
    if "impl" in metafunc.fixturenames:
        names = list(_impl.ENGINES)
        if metafunc.config.getoption("--no-c-extensions"):
            names = ["python"]
        metafunc.parametrize("impl", [_impl.ENGINES[n] for n in names], ids=names, scope="session")


@pytest.fixture(autouse=True)
def checked_compiles(monkeypatch):
    """Every engine a router compiles (construction, reload, compile_check) has its invariants asserted."""
    from tel400 import router

    real = router._compiled

    def compiled(impl, plans, prefixes, shared):
        engine = real(impl, plans, prefixes, shared)
        check = getattr(engine, "_check", None)  # a test's stand-in engine may have none
        if check is not None:
            check()
        return engine

    monkeypatch.setattr(router, "_compiled", compiled)


@pytest.fixture
def make_router(impl):
    def make(plans, counters=None, **kwargs):
        if isinstance(plans, (dict, str)):
            plans = plans_from(plans)
        return tel400.Router(plans, counters, implementation=impl.name, **kwargs)

    return make


def plans_from(spec) -> tel400.PlanSet:
    """A PlanSet from a dict or from TOML text (dedented)."""
    if isinstance(spec, str):
        return tel400.loads_plans(textwrap.dedent(spec), "toml", source="test.toml")
    return tel400.PlanSet.from_dict(spec, source="test")


def one_number(**fields) -> dict:
    """A plan tree with a single number 4001012345 and the given fields."""
    return {"numbers": [{"number": "4001012345", **fields}]}


@pytest.fixture(scope="session")
def redis_server():
    """One redis-server for the session (tests that stop Redis start their own)."""
    from tel400.testing import RedisServer

    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """A clean database on the session's server."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def http_service(tmp_path, impl):
    """The HTTP service on the manual's plan in a temporary SQLite store (tests/http_harness.py)."""
    from .http_harness import make_service

    service = make_service(tmp_path, impl.name)
    yield service
    service.stop()


@pytest.fixture
def http_client(http_service):
    from .http_harness import Client

    return Client(http_service)


def refuse_compile(monkeypatch, number: str, error: Exception | None = None) -> None:
    """Make both engines' one-number compile step (the shared compiler) fail for ``number``,
    as it would on a value an engine cannot hold."""
    from tel400.compiler import Compiler

    real = Compiler.compile

    def compile_(self, plan, **kwargs):
        if plan.number == number:
            raise error or OverflowError("Python int too large to convert to C long")
        return real(self, plan, **kwargs)

    monkeypatch.setattr(Compiler, "compile", compile_)
