"""Kamailio asking tel400-http: the sample adapters/http/kamailio-rtjson.cfg, real
Kamailio (http_client, json, rtjson) and sipp, the service as users run it."""

from __future__ import annotations

import contextlib
import hashlib
import json

import pytest

from .http_harness import ServerProcess
from .kamailio_harness import (BROKEN_HEADERS, Kamailio, SippUAS, answers, invite, modules_dir, raw_invite,
                               sipp_uac)

from .conftest import ROOT

pytestmark = pytest.mark.slow
CFG = ROOT / "adapters" / "http" / "kamailio-rtjson.cfg"


@contextlib.contextmanager
def running(tmp_path, plans):
    """tel400-http with the plans and switch auth on, and Kamailio asking it; both stopped after."""
    secrets = tmp_path / "switch-secrets"  # auth on: the secret travels as basic auth in TEL400_HTTP's URL
    secrets.write_text(hashlib.sha256(b"kamailio-secret").hexdigest() + "\n")
    server = ServerProcess(tmp_path, "--plans", str(plans), "--data", str(tmp_path / "data"),
                           "--switch-secrets", str(secrets)).start()
    kamailio = None
    try:
        url = server.url.replace("http://", "http://kamailio:kamailio-secret@")
        kamailio = Kamailio(tmp_path, {}, children=2, cfg=CFG, defines={"TEL400_HTTP": f'"{url}"'}).start()
        yield server, kamailio
    finally:
        if kamailio is not None:
            kamailio.stop()
        server.stop()


def test_kamailio_routes_by_rtjson_with_failover_and_replies(tmp_path):
    import pathlib

    missing = [m for m in ("http_client.so", "json.so", "rtjson.so") if not (pathlib.Path(modules_dir()) / m).exists()]
    assert not missing, f"install kamailio-utils-modules and kamailio-json-modules (missing {missing})"
    busy, answer = SippUAS(tmp_path, "uas_busy").start(), SippUAS(tmp_path, "uas_answer").start()
    plans = tmp_path / "plans.json"
    plans.write_text(json.dumps({"blacklist": ["13800000000"], "numbers": [
        {"number": "4001012345", "rules": [{"name": "all", "strategy": "sequential",
                                            "targets": [f"busy@127.0.0.1:{busy.port}",
                                                        f"desk@127.0.0.1:{answer.port}"]}]}]}))
    try:
        with running(tmp_path, plans) as (server, kamailio):
            counts = sipp_uac(tmp_path, "uac_call", kamailio.port, "4001012345", ["13901012345"],
                              calls=10, rate=20)
            assert answers(counts) == {200: 10}, counts
            # each call: the first target busy, the second answers
            assert busy.calls() == 10 and answer.calls() == 10
            assert invite(kamailio.port, "4001012345", "13800000000")[0] == "SIP/2.0 403 Forbidden"
            assert invite(kamailio.port, "4009999999", "13901012345")[0] == "SIP/2.0 404 Not Found"
            metrics = server.request("GET", "/metrics")[1].decode()
            assert 'tel400_http_requests_total{endpoint="kamailio",status="200"} 12.0' in metrics
            assert 'endpoint="kamailio",status="401"' not in metrics
    finally:
        busy.stop()
        answer.stop()


def test_requests_kamailio_cannot_relay_get_400_and_never_reach_tel400(tmp_path):
    # Before the sanity check, each of these was posted with an empty $fU,
    # routed and counted, and then not relayed: twice the cap of them left
    # no place for the real callers after.
    answer = SippUAS(tmp_path, "uas_answer").start()
    plans = tmp_path / "plans.json"
    plans.write_text(json.dumps({"numbers": [
        {"number": "4001012345", "rules": [{"targets": [f"desk@127.0.0.1:{answer.port}"]}],
         "caps": [{"metric": "calls", "per": "day", "limit": 5}]}]}))
    try:
        with running(tmp_path, plans) as (server, kamailio):
            for from_header, to_header in BROKEN_HEADERS * 2:
                status = raw_invite(kamailio.port, "4001012345", from_header, to_header=to_header)
                assert status.startswith("SIP/2.0 400 "), (from_header, to_header, status)
            counts = sipp_uac(tmp_path, "uac_call", kamailio.port, "4001012345", ["13901012345"], calls=5)
            assert answers(counts) == {200: 5}, counts  # the cap of 5 is whole
            assert answer.calls() == 5
            metrics = server.request("GET", "/metrics")[1].decode()
            assert 'tel400_http_requests_total{endpoint="kamailio",status="200"} 5.0' in metrics
    finally:
        answer.stop()
