"""PlanEditor: versioned plan edits that reach routing, refused when stale or invalid."""

from __future__ import annotations

import pytest
from tel400_http.editing import PlanEditor, StaleEdit, etag

import tel400

from .http_harness import Client, make_service

NUMBER = "4001012345"


@pytest.fixture
def service(tmp_path):
    s = make_service(tmp_path)
    yield s
    s.stop()


def test_get_gives_the_tree_and_its_version(service):
    editor = PlanEditor(service)
    tree, version = editor.get(NUMBER)
    assert tree["number"] == NUMBER and version == etag(tree) and len(version) == 64
    assert editor.get("4009999999") == (None, "")


def test_change_stores_audits_and_routes_by_it(service):
    editor = PlanEditor(service)
    _, version = editor.get(NUMBER)

    def block(tree):
        tree["blacklist"] = [*tree.get("blacklist", []), "13901012345"]
        return tree

    stored = editor.change(NUMBER, block, actor="company:4001012345", expect=version)
    assert "13901012345" in stored["blacklist"]
    assert editor.get(NUMBER)[1] != version
    assert service.store.audit(NUMBER, 1)[0]["actor"] == "company:4001012345"
    decision = Client(service).route(NUMBER, "13901012345")
    assert decision["action"] == "reject" and decision["reason"] == "blacklisted"


def test_a_stale_version_is_refused_and_nothing_changes(service):
    editor = PlanEditor(service)
    _, old = editor.get(NUMBER)
    editor.change(NUMBER, lambda t: {**t, "blacklist": ["13800000000"]}, actor="operator:a", expect=old)
    with pytest.raises(StaleEdit):
        editor.change(NUMBER, lambda t: {**t, "blacklist": ["13900000000"]}, actor="operator:b", expect=old)
    assert editor.get(NUMBER)[0]["blacklist"] == ["13800000000"]


def test_an_invalid_plan_raises_plan_error_with_its_field_and_nothing_changes(service):
    editor = PlanEditor(service)
    before, version = editor.get(NUMBER)
    with pytest.raises(tel400.PlanError) as caught:
        editor.change(NUMBER, lambda t: {**t, "blacklist": ["not a number"]}, actor="operator:a", expect=version)
    assert "blacklist" in str(caught.value.field)
    assert editor.get(NUMBER) == (before, version)
