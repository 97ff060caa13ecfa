"""schemathesis on the SMS operations, with an SMS store (tests/test_http_schema.py runs the whole
document on a service without one): generated requests, valid and hostile, never get a 5xx, and every
answer matches the document."""

from __future__ import annotations

import atexit
import pathlib
import shutil
import tempfile

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tel400.smsstore import SmsStore

from .http_harness import ADMIN, make_service

_DIR = pathlib.Path(tempfile.mkdtemp(prefix="tel400-sms-schema-"))
atexit.register(shutil.rmtree, _DIR, True)
SERVICE = make_service(_DIR, records=False)
SERVICE.sms_store = SmsStore(_DIR / "sms.db")
SERVICE.sms_store.put_contact("4001012345", "13901012345", name="张三", tags=["vip"])


async def app(scope, receive, send):
    """The service without its lifespan (as in test_http_schema.py)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await SERVICE(scope, receive, send)


schema = schemathesis.openapi.from_asgi("/openapi.json", app).include(
    path_regex=r"/(contacts|opt-outs|sms-jobs)")

# What the store checks beyond the schema (a phone, a CSV's header, a template's placeholders, a
# tag somebody carries): a schema-valid request may be refused with a 4xx there.
SEMANTIC = {"putContact", "importContacts", "createJob", "getContact", "deleteContact", "getJob", "pauseJob",
            "resumeJob", "cancelJob"}


@schema.parametrize()
@settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_the_sms_operations_keep_the_promises_of_the_document(case):
    excluded = [positive_data_acceptance] if case.operation.definition.raw.get("operationId") in SEMANTIC else []
    case.call_and_validate(headers={"Authorization": f"Bearer {ADMIN}"}, excluded_checks=excluded)
