"""The JSON API's answers to a security review: no pattern lets a trailing newline through."""

from __future__ import annotations

import re

import msgspec
import pytest
from tel400_http import schemas

from .http_harness import ADMIN


def _patterns(obj):
    """Every ``pattern`` in the OpenAPI document and the structs' metadata."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "pattern":
                yield value
            else:
                yield from _patterns(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _patterns(value)


def test_no_schema_pattern_accepts_a_trailing_newline():
    patterns = set(_patterns(msgspec.json.schema_components(
        [schemas.RouteRequest, schemas.KamailioRequest, schemas.PinRequest, schemas.ReportQuery])))
    patterns |= set(_patterns(schemas._PATH_PARAMS))
    assert len(patterns) >= 4
    for pattern in patterns:
        # the widest text the pattern takes, then the same with a newline after it
        for good in ("1234", "2026-11", "call-1"):
            if re.search(pattern, good):
                assert not re.search(pattern, good + "\n"), pattern
                break
        else:
            raise AssertionError(f"no sample matches {pattern}")


def test_a_pin_with_a_trailing_newline_is_a_422(http_client):
    r = http_client.put("/v1/numbers/4001012345/pin", token=ADMIN, json={"pin": "1234\n"})
    assert r.status_code == 422, r.text
    assert r.json()["message"].startswith("pin:")
    assert http_client.put("/v1/numbers/4001012345/pin", token=ADMIN, json={"pin": "1234"}).status_code == 204


def test_a_month_with_a_trailing_newline_is_a_422(http_client):
    r = http_client.get("/v1/numbers/4001012345/report", token=ADMIN, params={"month": "2026-11\n"})
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("path", ["/v1/route", "/kamailio/rtjson"])
def test_a_call_id_with_a_trailing_newline_is_a_422(http_client, path):
    r = http_client.post(path, json={"dialed": "4001012345", "call_id": "call-1\n"})
    assert r.status_code == 422, r.text
