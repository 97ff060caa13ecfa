"""Kamailio asking tel400-http: the sample adapters/http/kamailio-rtjson.cfg, real
Kamailio (http_client, json, rtjson) and sipp, the service as users run it."""

from __future__ import annotations

import hashlib
import json

import pytest

from .http_harness import ServerProcess
from .kamailio_harness import Kamailio, SippUAS, answers, invite, modules_dir, sipp_uac

from .conftest import ROOT

pytestmark = pytest.mark.slow
CFG = ROOT / "adapters" / "http" / "kamailio-rtjson.cfg"


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
    secrets = tmp_path / "switch-secrets"  # auth on: the secret travels as basic auth in TEL400_HTTP's URL
    secrets.write_text(hashlib.sha256(b"kamailio-secret").hexdigest() + "\n")
    server = ServerProcess(tmp_path, "--plans", str(plans), "--data", str(tmp_path / "data"),
                           "--switch-secrets", str(secrets)).start()
    kamailio = None
    try:
        url = server.url.replace("http://", "http://kamailio:kamailio-secret@")
        kamailio = Kamailio(tmp_path, {}, children=2, cfg=CFG, defines={"TEL400_HTTP": f'"{url}"'}).start()
        counts = sipp_uac(tmp_path, "uac_call", kamailio.port, "4001012345", ["13901012345"], calls=10, rate=20)
        assert answers(counts) == {200: 10}, counts
        assert busy.calls() == 10 and answer.calls() == 10  # each call: the first target busy, the second answers
        assert invite(kamailio.port, "4001012345", "13800000000")[0] == "SIP/2.0 403 Forbidden"
        assert invite(kamailio.port, "4009999999", "13901012345")[0] == "SIP/2.0 404 Not Found"
        metrics = server.request("GET", "/metrics")[1].decode()
        assert 'tel400_http_requests_total{endpoint="kamailio",status="200"} 12.0' in metrics
        assert 'endpoint="kamailio",status="401"' not in metrics
    finally:
        if kamailio is not None:
            kamailio.stop()
        server.stop()
        busy.stop()
        answer.stop()
