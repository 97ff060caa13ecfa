"""The routing editor: plan tree <-> form round trip, every documented field has an input, a PlanError
shown beside the input it names with nothing stored, stale saves refused, CSRF, access per number,
and a save reaching /v1/route at once."""

from __future__ import annotations

import html.parser
import pathlib
import re

import pytest
from hypothesis import HealthCheck, given, settings
from tel400_http.editing import etag
from tel400_http.portal.pages import editor_form as ef

import tel400
from tel400.plans import dumped_plan, validate_number, validate_settings

from .conftest import ROOT
from .http_harness import Client
from .portal_harness import ACME_NUMBER, OPERATOR, OTHER_NUMBER, PortalClient, make_portal
from .test_differential import HASHED_2468, plan

EDITOR = f"/portal/n/{ACME_NUMBER}/editor"
CALLER = "13901012345"  # Beijing; the manual's rule "beijing" sends it to 13901010001 at 09:00


# -- the pure round trip -----------------------------------------------------------------------------


def round_trip(tree: dict) -> dict:
    return ef.model_to_tree(ef.fields_to_model(ef.model_to_fields(ef.tree_to_model(tree))), kept=tree)


def example_trees() -> list[tuple[str, dict]]:
    out = []
    for path in sorted((ROOT / "examples").glob("*.toml")):
        for p in tel400.load_plans(path).numbers:
            out.append((f"{path.name}:{p.number}", dumped_plan(p)))
    return out


@pytest.mark.parametrize(("name", "tree"), example_trees(), ids=[n for n, _ in example_trees()])
def test_every_example_plan_survives_tree_form_tree(name, tree):
    assert round_trip(tree) == tree


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan("4001012345"))
def test_generated_plans_survive_tree_form_tree(tree):
    stored = dumped_plan(validate_number(tree, validate_settings({})))
    assert round_trip(stored) == stored


def test_days_keep_their_wording_until_the_ticks_change():
    tree = {"number": "4001012345", "timezone": "Asia/Shanghai", "default": {"action": "reject"},
            "rules": [{"name": "r", "days": "周一-周五", "action": "queue", "queue": "q"}]}
    model = ef.tree_to_model(tree)
    assert model["rules"][0]["days"] == ["mon", "tue", "wed", "thu", "fri"]
    assert ef.model_to_tree(model)["rules"][0]["days"] == "周一-周五"
    model["rules"][0]["days"] = ["sat", "sun", "holiday"]
    assert ef.model_to_tree(model)["rules"][0]["days"] == "sat,sun,holiday"


def test_buttons_move_add_and_remove_and_refuse_what_is_not_a_list():
    tree = dumped_plan(tel400.load_plans(ROOT / "examples" / "manual.toml").get(ACME_NUMBER))
    model = ef.tree_to_model(tree)
    names = [r["name"] for r in model["rules"]]
    assert ef.apply_op(model, "up:rules.1")
    assert [r["name"] for r in model["rules"]][:2] == [names[1], names[0]]
    assert ef.apply_op(model, "down:rules.0") and [r["name"] for r in model["rules"]] == names
    assert ef.apply_op(model, "up:rules.0") and [r["name"] for r in model["rules"]] == names  # the top stays
    assert ef.apply_op(model, "add:rules.1.time") and model["rules"][1]["time"][-1] == ""
    assert ef.apply_op(model, "add:rules") and model["rules"][-1]["targets"] == [{"to": "", "weight": "1"}]
    assert ef.apply_op(model, "remove:rules." + str(len(names)))
    assert ef.apply_op(model, "add:default.targets")
    for crafted in ("add:timezone", "up:rules.99999", "up:rules.1000000000000", "remove:rules.x", "drop:rules.0",
                    "add:rules.0.name", "add:rules.99.targets", "up:rules.-1", "add:"):
        assert not ef.apply_op(model, crafted), crafted


# -- every field plans.md documents has an input --------------------------------------------------------


def documented_fields() -> dict[str, list[str]]:
    """The fields of docs/plans.md's tables: section -> field names."""
    text = (ROOT / "docs" / "plans.md").read_text()
    sections = {"## Number": "number", "## Rule": "rule", "### Targets": "target", "## Cap": "cap",
                "## Tariff": "tariff", "## SMS reply": "sms_reply", "## SMS settings": "sms"}
    out: dict[str, list[str]] = {}
    for heading, kind in sections.items():
        body = text.split("\n" + heading + "\n", 1)[1]
        table = re.search(r"\| field \|.*?\n\n", body, re.DOTALL).group(0)
        out[kind] = re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE)
    out["prompts"] = re.findall(r"`([a-z_]+)`", text.split("Its keys are:", 1)[1].split("```", 1)[0])
    out["calendar"] = ["holidays", "workdays", "years"]
    return out


#: Where each documented section's fields are named in the form.
PREFIX = {"number": "", "rule": "rules.0.", "target": "rules.0.targets.0.", "cap": "caps.0.", "tariff": "tariff.",
          "prompts": "prompts.", "calendar": "calendar.", "sms_reply": "sms_replies.0.", "sms": "sms."}


class Inputs(html.parser.HTMLParser):
    """The form as a browser submits it: name -> values (ticked boxes, selected options), plus ids."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.fields: dict[str, list[str]] = {}
        self.names: set[str] = set()
        self.attrs_by_id: dict[str, dict] = {}
        self._select: str | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.attrs_by_id[a["id"]] = a
        name = a.get("name")
        if tag == "input" and name:
            self.names.add(name)
            if a.get("type") in ("checkbox", "radio"):
                if "checked" in a:
                    self.fields.setdefault(name, []).append(a.get("value", "on"))
            else:
                self.fields.setdefault(name, []).append(a.get("value", ""))
        elif tag == "select":
            self._select = name
            self.names.add(name)
        elif tag == "option" and self._select and "selected" in a:
            self.fields.setdefault(self._select, []).append(a["value"])

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None


@pytest.fixture
def portal(tmp_path):
    service, _accounts = make_portal(tmp_path)
    with PortalClient(service) as client:
        yield client, service
    service.stop()


def stored(service, number=ACME_NUMBER) -> dict:
    return service.store.get_number(number)


def test_every_field_plans_md_documents_has_an_input_or_a_page_of_its_own(portal):
    client, _ = portal
    client.login_company()
    fields_, csrf, version = form_of(client)
    # The page once "Add an auto-reply" was pressed: it has the inputs of one (the plan has none).
    page = Inputs(post(client, fields_, csrf, version, op="add:sms_replies").text)
    fields = documented_fields()
    assert len(fields["number"]) >= 12 and len(fields["rule"]) >= 11 and len(fields["prompts"]) >= 9
    missing = []
    for kind, names in fields.items():
        for name in names:
            if kind == "number" and name in ef.KEPT_FIELDS:
                continue
            if kind == "prompts" and name == "unknown_number":  # top level only (plans.md), not a number's
                continue
            if kind == "number" and name in ("default", "caps", "rules", "prompts", "tariff", "calendar",
                                             "sms_replies", "sms"):
                name = {"default": "default.action", "caps": "caps.0.metric", "rules": "rules.0.name",
                        "prompts": "prompts.closed", "tariff": "tariff.local", "calendar": "calendar.holidays",
                        "sms_replies": "sms_replies.0.name", "sms": "sms.reply_limit"}[name]
            if kind == "rule" and name == "targets":
                name = "targets.0.to"
            if PREFIX[kind] + name not in page.names:
                missing.append(f"{kind}: {name}")
    assert not missing, f"documented in docs/plans.md, no input in the editor: {missing}"


# -- the page -------------------------------------------------------------------------------------------


def form_of(client, path=EDITOR) -> tuple[dict[str, list[str]], str, str]:
    """The editor's form as a browser would post it, its CSRF token and version."""
    r = client.get(path)
    assert r.status_code == 200, r.text
    page = Inputs(r.text)
    fields = dict(page.fields)
    csrf, version = fields.pop("csrf")[0], fields.pop("etag")[0]
    return fields, csrf, version


def post(client, fields, csrf, version, op="save", path=EDITOR):
    data = [("csrf", csrf), ("etag", version), ("op", op)]
    data += [(name, value) for name, values in fields.items() for value in values]
    return client.post(path, content=_urlencode(data), headers={"content-type": "application/x-www-form-urlencoded"})


def _urlencode(pairs) -> bytes:
    import urllib.parse

    return urllib.parse.urlencode(pairs).encode()


def rule_index(fields, name) -> int:
    return next(int(k.split(".")[1]) for k, v in fields.items() if re.fullmatch(r"rules\.\d+\.name", k) and v == [name])


def test_editing_a_target_reaches_routing_at_once_and_is_audited(portal):
    client, service = portal
    client.login_company()
    assert Client(service).route(ACME_NUMBER, CALLER)["targets"][0] == "13901010001"
    fields, csrf, version = form_of(client)
    i = rule_index(fields, "beijing")
    fields[f"rules.{i}.targets.0.to"] = ["13901010077"]
    r = post(client, fields, csrf, version)
    assert r.status_code == 303, r.text
    assert Client(service).route(ACME_NUMBER, CALLER)["targets"][0] == "13901010077"
    assert service.store.audit(ACME_NUMBER, 1)[0]["actor"] == f"company:{ACME_NUMBER}"
    assert "13901010077" in client.get(EDITOR).text


def test_an_unchanged_form_saves_the_same_plan(portal):
    client, service = portal
    client.login_company()
    before = stored(service)
    fields, csrf, version = form_of(client)
    assert version == etag(before)
    assert post(client, fields, csrf, version).status_code == 303
    assert stored(service) == before


#: (input to change, value, where the error shows): one of every field kind the editor has.
BAD_FIELDS = [
    ("rules.{beijing}.time", ["25:00-26:00"], "rules.{beijing}.time"),
    ("rules.{beijing}.dates", ["2026-13-01"], "rules.{beijing}.dates"),
    ("rules.{beijing}.name", ["a b"], "rules.{beijing}.name"),
    ("rules.{beijing}.targets.0.to", ["139|sofia/gateway/evil"], "rules.{beijing}.targets.0.to"),
    ("rules.{beijing}.targets.0.weight", ["0.3"], "rules.{beijing}.targets.0.weight"),
    ("rules.{beijing}.provinces", ["CN-XX"], "rules.{beijing}.provinces"),
    ("rules.{beijing}.channel", ["fax"], "rules.{beijing}.channel"),
    ("rules.{beijing}.action", ["queue"], "rules.{beijing}.queue"),
    ("rules.{beijing}.targets.0.to", [""], "rules.{beijing}.targets"),
    ("rules.{beijing}.strategy", ["random"], "rules.{beijing}.strategy"),
    ("default.prompt", ["closed notice"], "default.prompt"),
    ("caps.0.limit", ["-1"], "caps.0.limit"),
    ("caps.0.per", ["year"], "caps.0.per"),
    ("tariff.local", ["cheap"], "tariff.local"),
    ("tariff.increment_s", ["0"], "tariff.increment_s"),
    ("timezone", ["Mars/Olympus"], "timezone"),
    ("on_backend_error", ["maybe"], "on_backend_error"),
    ("prompts.closed", ["a;b"], "prompts.closed"),
    ("calendar.holidays", ["2026-02-30"], "calendar.holidays"),
    ("calendar.years", ["1900"], "calendar.years"),
]


@pytest.mark.parametrize(("name", "value", "where"), BAD_FIELDS, ids=[b[0] for b in BAD_FIELDS])
def test_a_plan_error_shows_beside_its_input_and_nothing_is_stored(portal, name, value, where):
    client, service = portal
    client.login_company()
    before = stored(service)
    fields, csrf, version = form_of(client)
    i = str(rule_index(fields, "beijing"))
    name, where = name.replace("{beijing}", i), where.replace("{beijing}", i)
    fields[name] = value
    r = post(client, fields, csrf, version)
    assert r.status_code == 422, r.text
    assert stored(service) == before
    page = Inputs(r.text)
    error_id = "err-" + where.replace(".", "-")
    assert error_id in page.attrs_by_id, f"no error beside {where}"
    described = [a for a in page.attrs_by_id.values() if a.get("aria-describedby") == error_id]
    assert described, f"no input of {where} names its error"
    if name == where and page.fields.get(name) is not None:
        assert page.fields[name] == value  # the entry is kept for correcting
    assert 'role="alert"' in r.text


def test_a_save_after_another_admins_save_is_refused_naming_them(portal, tmp_path):
    client, service = portal
    client.login_company()
    fields, csrf, version = form_of(client)
    with PortalClient(service, address="10.0.0.2") as operator:
        operator.login_operator()
        theirs, their_csrf, their_version = form_of(operator)
        theirs["tariff.local"] = ["0.2"]
        assert post(operator, theirs, their_csrf, their_version).status_code == 303
    after_operator = stored(service)
    fields["tariff.local"] = ["0.5"]
    r = post(client, fields, csrf, version)
    assert r.status_code == 409
    assert f"operator:{OPERATOR}" in r.text and "UTC" in r.text
    assert stored(service) == after_operator
    assert Inputs(r.text).fields["tariff.local"] == ["0.5"]  # the refused entries are still there


def test_without_the_csrf_token_nothing_is_stored(portal):
    client, service = portal
    client.login_company()
    before = stored(service)
    fields, _csrf, version = form_of(client)
    fields["tariff.local"] = ["0.9"]
    assert post(client, fields, "forged", version).status_code == 403
    assert stored(service) == before


def test_a_company_edits_only_its_number_and_the_operator_any(portal):
    client, service = portal
    client.login_company()
    other = f"/portal/n/{OTHER_NUMBER}/editor"
    assert client.get(other).status_code == 403
    fields, csrf, version = form_of(client)
    before = stored(service, OTHER_NUMBER)
    assert post(client, fields, csrf, etag(before), path=other).status_code == 403
    assert stored(service, OTHER_NUMBER) == before
    for crafted in ("/portal/n/400-101-2345/editor", "/portal/n/%2e%2e/editor", "/portal/n/4001012345x/editor"):
        assert client.get(crafted).status_code == 404, crafted
    with PortalClient(service, address="10.0.0.3") as operator:
        operator.login_operator()
        fields, csrf, version = form_of(operator, other)
        fields["tariff.local"] = ["0.25"]
        fields["tariff.long_distance"] = ["0.5"]
        assert post(operator, fields, csrf, version, path=other).status_code == 303
    assert stored(service, OTHER_NUMBER)["tariff"]["local"] == "0.25"


def test_without_a_login_the_editor_sends_to_the_login_page(portal):
    client, _ = portal
    r = client.get(EDITOR)
    assert r.status_code == 303 and r.headers["location"].endswith("/portal/login")


def test_the_pin_is_never_shown_and_survives_a_save(portal):
    client, service = portal
    client.login_company()
    fields, csrf, version = form_of(client)
    with service._write_lock:
        tree = stored(service)
    tree["pin_hash"] = HASHED_2468
    service.store.put_number(tree, actor="test")
    fields, csrf, version = form_of(client)
    page = client.get(EDITOR).text
    assert HASHED_2468 not in page and "pin" not in {n.split(".")[0] for n in Inputs(page).names}
    fields["tariff.local"] = ["0.15"]
    assert post(client, fields, csrf, version).status_code == 303
    after = stored(service)
    assert after["pin_hash"] == HASHED_2468 and after["tariff"]["local"] == "0.15"
    assert after["blacklist"] == tree["blacklist"]
    # a pin sneaked into the form is ignored: the PIN page owns it
    fields, csrf, version = form_of(client)
    fields["pin"] = ["9999"]
    assert post(client, fields, csrf, version).status_code == 303
    assert "pin" not in stored(service) and stored(service)["pin_hash"] == HASHED_2468


def test_up_and_down_buttons_reorder_without_javascript_and_save_stores_the_order(portal):
    client, service = portal
    client.login_company()
    names = [r["name"] for r in stored(service)["rules"]]
    fields, csrf, version = form_of(client)
    r = post(client, fields, csrf, version, op="up:rules.2")
    assert r.status_code == 200
    assert stored(service)["rules"][1]["name"] == names[1]  # moving is not saving
    moved = Inputs(r.text).fields
    assert moved["rules.1.name"] == [names[2]] and moved["rules.2.name"] == [names[1]]
    moved.pop("csrf"), moved.pop("etag")
    assert post(client, moved, csrf, version).status_code == 303
    assert [r["name"] for r in stored(service)["rules"]] == [names[0], names[2], names[1], *names[3:]]


def test_add_buttons_give_a_blank_row_and_a_crafted_button_is_a_400(portal):
    client, service = portal
    client.login_company()
    fields, csrf, version = form_of(client)
    r = post(client, fields, csrf, version, op="add:rules")
    count = len(stored(service)["rules"])
    assert f'name="rules.{count}.name"' in r.text
    r = post(client, fields, csrf, version, op="add:rules.0.time")
    assert r.status_code == 200 and len(Inputs(r.text).fields["rules.0.time"]) == 2
    r = post(client, fields, csrf, version, op="add:../../etc")
    assert r.status_code == 400 and stored(service)["rules"] and 'role="alert"' in r.text


def test_a_hostile_form_is_refused_cleanly(portal):
    client, service = portal
    client.login_company()
    before = stored(service)
    fields, csrf, version = form_of(client)
    big = post(client, {**fields, "x": ["a" * (3 * 1024 * 1024)]}, csrf, version)
    assert big.status_code == 413
    crafted = {**fields, "rules.99999999999999999999.name": ["x"], "rules.0.targets.x.to": ["1"], "caps.-1.metric": ["x"]}
    assert post(client, crafted, csrf, version).status_code == 303
    assert stored(service) == before


def test_both_languages_render_the_editor(portal):
    client, _ = portal
    client.login_company()
    zh = client.get(EDITOR, headers={"accept-language": "zh-CN"}).text
    en = client.get(EDITOR, headers={"accept-language": "en"}).text
    assert "添加规则" in zh and "Add a rule" in en
    assert "北京 Beijing" in zh and "<script>" not in zh and "style=" not in zh
    assert pathlib.Path(ef.__file__).parent.parent.joinpath("static", "editor.js").is_file()


def test_a_form_past_the_field_bound_is_a_400_and_nothing_is_stored(portal):
    from tel400_http.portal.pages import editor

    client, service = portal
    client.login_company()
    before = stored(service)
    fields, csrf, version = form_of(client)
    many = {**fields, **{f"x{i}": ["1"] for i in range(editor.FORM_FIELDS)}}
    assert post(client, many, csrf, version).status_code == 400
    assert stored(service) == before


def test_an_auto_reply_added_in_the_editor_is_stored_and_an_error_points_at_its_field(portal):
    client, service = portal
    client.login_company()
    fields, csrf, version = form_of(client)
    page = Inputs(post(client, fields, csrf, version, op="add:sms_replies").text)
    fields = dict(page.fields)
    fields.pop("csrf"), fields.pop("etag")
    fields["sms_replies.0.name"] = ["where"]
    fields["sms_replies.0.keywords"] = ["你的酒店在哪", "ＨＯＴＥＬ"]
    fields["sms_replies.0.match"] = ["contains"]
    fields["sms_replies.0.reply"] = ["{0.__class__}"]  # refused, and shown at the reply's input
    r = post(client, fields, csrf, version)
    assert r.status_code == 422
    assert 'id="err-sms_replies-0-reply"' in r.text and "bad placeholder" in r.text
    fields["sms_replies.0.reply"] = ["{province}的朋友您好：酒店在北京路1号。"]
    fields["sms.reply_limit"] = ["3"]
    assert post(client, fields, csrf, version).status_code == 303
    plan = stored(service)
    assert plan["sms_replies"] == [{"name": "where", "keywords": ["你的酒店在哪", "ＨＯＴＥＬ"], "match": "contains",
                                    "reply": "{province}的朋友您好：酒店在北京路1号。"}]
    assert plan["sms"] == {"reply_limit": 3}  # the default words are not written out
    assert "ＨＯＴＥＬ" in client.get(EDITOR).text
