"""SIP renderings of decisions (shared by the Kamailio adapter and rtjson)."""

from __future__ import annotations

import pytest

from tel400 import sip
from tel400.decision import Decision


def decision(action="bridge", targets=("13901010001", "13901010002"), reason="ok", prompt=None, rule="r"):
    return Decision(action, targets, prompt, reason, rule, "CN-BJ", "4001012345", "13901012345")


def test_target_uris():
    assert sip.target_uri("13901010001", "gw:5060") == "sip:13901010001@gw:5060"
    assert sip.target_uri("*86#", "gw") == "sip:*86%23@gw"
    assert sip.target_uri("desk@pbx.example:5070", None) == "sip:desk@pbx.example:5070"
    with pytest.raises(ValueError, match="need a gateway"):
        sip.target_uri("13901010001", None)
    for bad in ("1390;x=1", "a@b>", "a b@c", "x\r\nVia: evil@h"):
        with pytest.raises(ValueError):
            sip.target_uri(bad, "gw")


def test_gateway_check():
    assert sip.check_gateway("10.0.0.5:5060") == "10.0.0.5:5060"
    for bad in ("", "gw;transport=tcp", "gw\r\n", "sip:gw"):
        with pytest.raises(ValueError):
            sip.check_gateway(bad)


@pytest.mark.parametrize("reason, code", [
    ("unknown_number", 404), ("blacklisted", 403), ("bad_pin", 403), ("pin_locked", 403), ("closed", 480),
    ("cap_exceeded", 486), ("backend_error", 503), ("rule_reject", 480), ("bad_caller", 403),
])
def test_reply_codes(reason, code):
    assert sip.reply_for(decision("reject", (), reason))[0] == code


def test_cap_reply_can_be_480():
    assert sip.reply_for(decision("reject", (), "cap_exceeded"), cap_code=480) == (480, "Temporarily Unavailable")


def test_contacts_in_failover_order():
    d = decision(targets=tuple(f"1390101000{i}" for i in range(12)))
    value = sip.contacts(d, "gw")
    assert value.startswith("<sip:13901010000@gw>;q=1.0, <sip:13901010001@gw>;q=0.9")
    assert value.endswith("<sip:139010100011@gw>;q=0.1")


def test_media_headers_cannot_carry_line_breaks():
    d = decision("reject", (), "closed", prompt="closed", rule="night\r\nX-Evil: 1")
    headers = dict(sip.decision_headers(d))
    assert headers["X-Tel400-Rule"] == "nightX-Evil: 1"
    assert headers["X-Tel400-Action"] == "reject" and headers["X-Tel400-Prompt"] == "closed"


def test_rtjson():
    doc = sip.rtjson(decision(), "gw", ring_timeout_ms=20000)
    assert doc == {"version": "1.0", "routing": "serial", "routes": [
        {"uri": "sip:13901010001@gw", "fr_inv_timer": 20000},
        {"uri": "sip:13901010002@gw", "fr_inv_timer": 20000},
    ]}
    refused = sip.rtjson(decision("reject", (), "closed", prompt="closed"), "gw", media_server="sip:media@m")
    assert refused["routes"][0]["uri"] == "sip:media@m"
    assert "X-Tel400-Prompt: closed\r\n" in refused["routes"][0]["headers"]["extra"]
    assert sip.rtjson(decision("reject", (), "closed"), "gw")["routes"] == []
