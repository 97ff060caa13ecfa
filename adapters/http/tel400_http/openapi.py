"""The service's OpenAPI 3.0 description (``GET /openapi.json``).

Written by hand, beside the handlers it describes: the tests run
schemathesis against it, so a handler that answers something this document
does not promise fails the build.
"""

from __future__ import annotations

import functools
import json

import tel400
from tel400.calls import DEFAULT_MAX_AGE_S

_ERROR = {"$ref": "#/components/schemas/Error"}
_NUMBER_PARAM = {"name": "number", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 40},
                 "description": "the 400 number, in any written form"}


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    text = {400: "malformed body", 401: "no or a bad token (switch endpoints: secret)",
            403: "the token may not manage this number (switch endpoints: address not allowed)",
            404: "not found", 409: "not possible with this configuration", 413: "body too large",
            422: "invalid request or plan", 503: "plan store unavailable"}
    return {str(c): _json(_ERROR, text[c]) for c in codes}


_ADMIN = [{"bearer": []}]
# tel400-http --switch-secrets: the secret as a bearer token or a basic-auth password; without, an allow-list
_SWITCH = [{"switchBearer": []}, {"switchBasic": []}, {}]

_SCHEMAS = {
    "Error": {
        "type": "object", "required": ["error", "message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"},
                       "field": {"type": "string", "nullable": True}, "rule": {"type": "string", "nullable": True}},
    },
    "RouteRequest": {
        "type": "object", "required": ["dialed"], "additionalProperties": False,
        "properties": {
            "dialed": {"type": "string", "description": "the number called, any written form", "example": "4001012345"},
            "caller": {"type": "string", "nullable": True, "description": "the caller; absent or null when withheld",
                       "example": "13901012345"},
            "at": {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "number", "minimum": 0, "maximum": 253370764800, "exclusiveMaximum": True}], "nullable": True,
                   "description": "ISO 8601 (naive: the plan's zone) or POSIX time, in the years 1901 to 9998; default "
                                  "now. Refused (422 at_out_of_range) beyond --at-tolerance (300 s) of the server's clock"},
            "channel": {"type": "string", "enum": ["voice", "sms", None], "default": "voice", "nullable": True},
            "pin": {"type": "string", "nullable": True},
            "call_id": {"type": "string", "nullable": True, "pattern": "^[\\x21-\\x7e]{1,128}$",
                        "description": "the switch's id for the call, to report its end"},
            "explain": {"type": "boolean", "default": False, "nullable": True},
        },
    },
    "Decision": {
        "type": "object",
        "required": ["action", "targets", "prompt", "reason", "rule", "province", "number", "caller", "channel",
                     "call_id"],
        "properties": {
            "action": {"type": "string", "enum": ["bridge", "reject", "collect_pin", "queue", "conference"]},
            "targets": {"type": "array", "items": {"type": "string"}},
            "prompt": {"type": "string", "nullable": True},
            "reason": {"type": "string", "enum": list(tel400.REASONS)},
            "rule": {"type": "string", "nullable": True},
            "province": {"type": "string", "nullable": True, "description": "ISO 3166-2:CN"},
            "number": {"type": "string", "nullable": True},
            "caller": {"type": "string", "nullable": True},
            "channel": {"type": "string", "enum": ["voice", "sms"]},
            "call_id": {"type": "string", "nullable": True},
            "explain": {"type": "array", "items": {"type": "string"}},
        },
    },
    "CallEnd": {
        "type": "object", "required": ["duration"], "additionalProperties": False,
        "properties": {"duration": {"type": "number", "minimum": 0, "maximum": DEFAULT_MAX_AGE_S,
                                    "description": "talk time in seconds, at most the longest call "
                                                   "(--max-call-duration, 43200 by default; beyond: 422, the call "
                                                   "keeps waiting for a corrected end)"},
                       "target": {"type": "string", "nullable": True, "description": "the target that answered"}},
    },
    "Charge": {
        "type": "object",
        "required": ["call_id", "number", "target", "duration_s", "billed_s", "cost", "long_distance"],
        "properties": {"call_id": {"type": "string"}, "number": {"type": "string"},
                       "target": {"type": "string", "nullable": True}, "duration_s": {"type": "number"},
                       "billed_s": {"type": "integer"}, "cost": {"type": "string", "nullable": True},
                       "long_distance": {"type": "boolean"}},
    },
    "KamailioRequest": {
        "type": "object", "required": ["dialed"], "additionalProperties": False,
        "properties": {"dialed": {"type": "string", "description": "$rU"},
                       "caller": {"type": "string", "nullable": True, "description": "$fU"},
                       "call_id": {"type": "string", "nullable": True, "pattern": "^[\\x21-\\x7e]{1,128}$"},
                       "method": {"type": "string", "enum": ["INVITE", "MESSAGE", None], "default": "INVITE",
                                  "nullable": True},
                       "at": {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "number", "minimum": 0, "maximum": 253370764800, "exclusiveMaximum": True}],
                              "nullable": True, "description": "as in RouteRequest: the years 1901 to 9998"}},
    },
    "RtJson": {
        "type": "object", "required": ["version", "routing", "routes", "tel400"],
        "properties": {
            "version": {"type": "string"}, "routing": {"type": "string", "enum": ["serial", "parallel"]},
            "routes": {"type": "array", "items": {"type": "object", "required": ["uri"],
                                                  "properties": {"uri": {"type": "string"}}}},
            "tel400": {"type": "object", "description": "the decision, and the reply for a refusal without routes"},
        },
    },
    "Plan": {
        "type": "object", "additionalProperties": True,
        "description": "one number's plan, as in a plan file (docs/plans.md); answers carry has_pin, never the PIN",
    },
    "NumberList": {"type": "object", "required": ["numbers"],
                   "properties": {"numbers": {"type": "array", "items": {"type": "string"}},
                                  "next": {"type": "string", "description": "the after of the next page"},
                                  "quarantined": {"type": "object", "additionalProperties": {"type": "string"},
                                                  "description": "numbers whose stored plan is invalid, with the "
                                                                 "reason; not routed by it (docs/limits.md)"}}},
    "Blacklist": {"type": "object", "required": ["number", "blacklist"],
                  "properties": {"number": {"type": "string"},
                                 "blacklist": {"type": "array", "items": {"type": "string"}}}},
    "Audit": {"type": "object", "required": ["number", "entries"],
              "properties": {"number": {"type": "string"}, "entries": {"type": "array", "items": {
                  "type": "object", "required": ["at", "actor", "action"],
                  "properties": {"at": {"type": "string"}, "actor": {"type": "string"},
                                 "action": {"type": "string"}}}}}},
    "Report": {"type": "object",
               "required": ["number", "month", "calls", "connected", "minutes", "cost", "by_day", "by_province",
                            "by_target", "by_reason"],
               "properties": {"number": {"type": "string"}, "month": {"type": "string"},
                              "calls": {"type": "integer"}, "connected": {"type": "integer"},
                              "talk_minutes": {"type": "number"}, "minutes": {"type": "number"},
                              "cost": {"type": "string"},
                              "by_day": {"type": "array", "items": {"type": "object"}},
                              "by_province": {"type": "array", "items": {"type": "object"}},
                              "by_target": {"type": "array", "items": {"type": "object"}},
                              "by_reason": {"type": "array", "items": {"type": "object"}}}},
    "Calls": {"type": "object", "required": ["number", "calls"],
              "properties": {"number": {"type": "string"}, "calls": {"type": "array", "items": {"type": "object"}}}},
    "Ready": {"type": "object", "required": ["status"],
              "properties": {"status": {"type": "string"},
                             "quarantined": {"type": "array", "items": {"type": "string"},
                                             "description": "numbers whose stored plan is invalid (readyz)"}}},
}

_PATHS = {
    "/v1/route": {"post": {
        "summary": "Decide a call or message", "operationId": "route",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/RouteRequest"}}}},
        "security": _SWITCH,
        "responses": {"200": _json({"$ref": "#/components/schemas/Decision"}), **_errors(400, 401, 403, 413, 422)},
    }},
    "/v1/calls/{call_id}/end": {"post": {
        "summary": "Report a call's end (charges minutes and cost caps)", "operationId": "callEnded",
        "parameters": [{"name": "call_id", "in": "path", "required": True,
                        "schema": {"type": "string", "pattern": "^[\\x21-\\x2e\\x30-\\x7e]{1,128}$"}}],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/CallEnd"}},
            "application/x-www-form-urlencoded": {"schema": {"$ref": "#/components/schemas/CallEnd"}}}},
        "security": _SWITCH,
        "responses": {"200": _json({"$ref": "#/components/schemas/Charge"}),
                      **_errors(400, 401, 403, 404, 413, 422),
                      "503": {**_json(_ERROR, "the counter backend refused the charge: the call waits, "
                                              "report its end again"),
                              "headers": {"Retry-After": {"schema": {"type": "integer"}}}}},
    }},
    "/freeswitch/dialplan": {"post": {
        "summary": "FreeSWITCH mod_xml_curl dialplan lookup", "operationId": "freeswitchDialplan",
        "requestBody": {"required": False, "content": {"application/x-www-form-urlencoded": {"schema": {
            "type": "object", "properties": {"section": {"type": "string"},
                                             "Caller-Destination-Number": {"type": "string"},
                                             "Caller-Caller-ID-Number": {"type": "string"},
                                             "Caller-Context": {"type": "string"},
                                             "Unique-ID": {"type": "string"}}}}}},
        "responses": {"200": {"description": "the extension, or 'not found'",
                              "content": {"text/xml": {"schema": {"type": "string"}}}},
                      **_errors(400, 401, 403, 413)},
        "security": _SWITCH,
    }},
    "/kamailio/rtjson": {"post": {
        "summary": "Kamailio rtjson routing document", "operationId": "kamailioRtjson",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/KamailioRequest"}}}},
        "security": _SWITCH,
        "responses": {"200": _json({"$ref": "#/components/schemas/RtJson"}),
                      **_errors(400, 401, 403, 409, 413, 422)},
    }},
    "/v1/numbers": {"get": {
        "summary": "The numbers this token may manage, one page", "operationId": "listNumbers", "security": _ADMIN,
        "parameters": [{"name": "after", "in": "query", "schema": {"type": "string", "maxLength": 40},
                        "description": "list the numbers after this one (a page's next)"},
                       {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                   "maximum": 10000, "default": 1000}}],
        "responses": {"200": _json({"$ref": "#/components/schemas/NumberList"}), **_errors(401, 422)},
    }},
    "/v1/numbers/{number}": {
        "parameters": [_NUMBER_PARAM],
        "get": {"summary": "A number's plan", "operationId": "getNumber", "security": _ADMIN,
                "responses": {"200": _json({"$ref": "#/components/schemas/Plan"}), **_errors(401, 403, 404)}},
        "put": {"summary": "Add or replace a number's plan (validated; the running plan stays if refused)",
                "operationId": "putNumber", "security": _ADMIN,
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Plan"}}}},
                "responses": {"200": _json({"$ref": "#/components/schemas/Plan"}),
                              "201": _json({"$ref": "#/components/schemas/Plan"}, "created"),
                              **_errors(400, 401, 403, 404, 409, 413, 422, 503)}},
        "delete": {"summary": "Remove a number's plan", "operationId": "deleteNumber", "security": _ADMIN,
                   "responses": {"204": {"description": "removed"}, **_errors(401, 403, 404, 409, 503)}},
    },
    "/v1/numbers/{number}/blacklist": {
        "parameters": [_NUMBER_PARAM],
        "get": {"summary": "A number's blacklist", "operationId": "getBlacklist", "security": _ADMIN,
                "responses": {"200": _json({"$ref": "#/components/schemas/Blacklist"}), **_errors(401, 403, 404)}},
    },
    "/v1/numbers/{number}/blacklist/{entry}": {
        "parameters": [_NUMBER_PARAM, {"name": "entry", "in": "path", "required": True,
                                       "schema": {"type": "string", "maxLength": 40},
                                       "description": "a number, a prefix ending in *, or anonymous"}],
        "put": {"summary": "Block a caller", "operationId": "blacklistAdd", "security": _ADMIN,
                "responses": {"200": _json({"$ref": "#/components/schemas/Blacklist"}),
                              **_errors(401, 403, 404, 409, 422, 503)}},
        "delete": {"summary": "Unblock a caller", "operationId": "blacklistRemove", "security": _ADMIN,
                   "responses": {"200": _json({"$ref": "#/components/schemas/Blacklist"}),
                                 **_errors(401, 403, 404, 409, 422, 503)}},
    },
    "/v1/numbers/{number}/pin": {
        "parameters": [_NUMBER_PARAM],
        "put": {"summary": "Set the PIN (stored as a salted scrypt hash)", "operationId": "putPin",
                "security": _ADMIN,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["pin"], "additionalProperties": False,
                    "properties": {"pin": {"type": "string", "pattern": "^[0-9]{4,8}$"}}}}}},
                "responses": {"204": {"description": "set"}, **_errors(400, 401, 403, 404, 409, 413, 422, 503)}},
        "delete": {"summary": "Remove the PIN", "operationId": "deletePin", "security": _ADMIN,
                   "responses": {"204": {"description": "removed"}, **_errors(401, 403, 404, 409, 422, 503)}},
    },
    "/v1/numbers/{number}/audit": {
        "parameters": [_NUMBER_PARAM],
        "get": {"summary": "Who changed the plan, when, and what", "operationId": "audit", "security": _ADMIN,
                "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                           "maximum": 1000}}],
                "responses": {"200": _json({"$ref": "#/components/schemas/Audit"}), **_errors(401, 403, 404, 422)}},
    },
    "/v1/numbers/{number}/report": {
        "parameters": [_NUMBER_PARAM],
        "get": {"summary": "The month's calls by day, province, target and reason; minutes and cost",
                "operationId": "report", "security": _ADMIN,
                "parameters": [{"name": "month", "in": "query", "schema": {"type": "string",
                                                                           "pattern": "^[1-9][0-9]{3}-(0[1-9]|1[0-2])$"},
                                "description": "YYYY-MM; default: this month in the number's zone"}],
                "responses": {"200": _json({"$ref": "#/components/schemas/Report"}),
                              **_errors(401, 403, 404, 409, 422)}},
    },
    "/v1/numbers/{number}/calls": {
        "parameters": [_NUMBER_PARAM],
        "get": {"summary": "The latest call records, newest first", "operationId": "calls", "security": _ADMIN,
                "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                           "maximum": 1000}},
                               {"name": "before", "in": "query", "schema": {"type": "integer", "minimum": 1},
                                "description": "records older than this id (paging)"}],
                "responses": {"200": _json({"$ref": "#/components/schemas/Calls"}),
                              **_errors(401, 403, 404, 409, 422)}},
    },
    "/v1/ping": {"get": {"summary": "A trivial endpoint (load tests compare /v1/route with it)",
                         "operationId": "ping", "responses": {"200": _json({"type": "object"})}}},
    "/healthz": {"get": {"summary": "The process is alive", "operationId": "healthz",
                         "responses": {"200": _json({"$ref": "#/components/schemas/Ready"})}}},
    "/readyz": {"get": {"summary": "Ready for traffic (503 while shutting down)", "operationId": "readyz",
                        "responses": {"200": _json({"$ref": "#/components/schemas/Ready"}),
                                      "503": _json({"$ref": "#/components/schemas/Ready"}, "not ready")}}},
    "/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                              "responses": {"200": _json({"type": "object"})}}},
    "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics",
                         "responses": {"200": {"description": "text exposition format",
                                               "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
}


@functools.cache
def document() -> bytes:
    """The OpenAPI document, encoded once."""
    doc = {
        "openapi": "3.0.3",
        "info": {"title": "tel400", "version": tel400.__version__,
                 "description": "Call routing for Chinese 400 numbers: decisions, switch formats, administration."},
        "paths": _PATHS,
        "components": {"schemas": _SCHEMAS, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "switchBearer": {"type": "http", "scheme": "bearer", "description": "the switch secret"},
            "switchBasic": {"type": "http", "scheme": "basic", "description": "any user, the switch secret as password"},
        }},
    }
    return json.dumps(doc, ensure_ascii=False).encode()
