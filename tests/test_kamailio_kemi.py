"""The Kamailio adapter's Python side alone, without Kamailio: a stand-in KSR module."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import structlog

import tel400

from .kamailio_harness import ADAPTER


@pytest.fixture
def kemi(monkeypatch):
    monkeypatch.setitem(sys.modules, "KSR", types.ModuleType("KSR"))
    spec = importlib.util.spec_from_file_location("tel400_kemi_under_test", ADAPTER / "tel400_kemi.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _plan(number: str, target: str) -> dict:
    return {"number": number, "rules": [{"name": "all", "targets": [target]}]}


def test_a_full_reload_is_checked_for_number_targets_without_reading_the_plans_back(kemi, tmp_path, impl,
                                                                                    monkeypatch):
    store = tel400.SqliteStore(tmp_path / "plans.db")
    store.put_number(_plan("4001000001", "desk@pbx.example"), actor="test")
    router = tel400.Router.from_store(store, implementation=impl.name)
    handler = kemi.Tel400(kemi.Settings({"TEL400_PLANS": store.url}), router,
                          tel400.PlanWatcher(router, store, interval_s=0))
    store.put_number(_plan("4001000002", "13901010001"), actor="test")  # a number: needs a gateway
    store.put_settings({"blacklist": ["13800000000"]}, actor="test")  # the settings: everything is read again

    def read_back(self):
        raise AssertionError("router.plans read every number back from the store")

    monkeypatch.setattr(tel400.Router, "plans", property(read_back))
    assert handler.watcher.poll() and handler.watcher.applied is None
    with structlog.testing.capture_logs() as logs:
        handler._check_reloaded_plans()  # before: router.plans, a store read per number
    found = [e for e in logs if e["event"] == "number_target_without_gateway"]
    assert [(e["number"], e["target"]) for e in found] == [("4001000002", "13901010001")]
    store.put_number(_plan("4001000003", "desk@pbx.example"), actor="test")  # one number: read alone
    assert handler.watcher.poll() and handler.watcher.applied == {"4001000003"}
    with structlog.testing.capture_logs() as logs:
        handler._check_reloaded_plans()
    assert not [e for e in logs if e["event"] == "number_target_without_gateway"]


@pytest.mark.parametrize(("user", "host", "port"), [
    ("13901010001;lr", "127.0.0.1", None),  # a parameter smuggled in the user
    ("13901010001>", "127.0.0.1", None),
    ("1390101 0001", "127.0.0.1", None),
    ("alice", "127.0.0.1", None),  # not a phone number
    ("13901010001\r\nVia: x", "127.0.0.1", None),
    ("13901010001", "evil.example>;x=1", None),
    ("13901010001", "127.0.0.1\r\nX: y", None),
    ("13901010001", "127.0.0.1", "5060;transport=tcp"),
    ("13901010001", "", None),
    (None, "127.0.0.1", None),
])
def test_a_reply_target_is_built_only_from_a_phone_number_and_a_plain_host(kemi, user, host, port):
    assert kemi.reply_uri(user, host, port) is None


def test_a_reply_target_from_a_plain_from_uri(kemi):
    assert kemi.reply_uri("13901010001", "127.0.0.1", "5070") == "sip:13901010001@127.0.0.1:5070"
    assert kemi.reply_uri("+8613901010001", "sip.example.com", None) == "sip:+8613901010001@sip.example.com"
