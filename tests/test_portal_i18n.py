"""The portal's catalogues: every message a template or page uses is translated, and English matches Chinese."""

from __future__ import annotations

import ast
import pathlib

import pytest
from babel.messages.pofile import read_po
from jinja2.ext import babel_extract
from tel400_http.portal import i18n

PORTAL = pathlib.Path(i18n.__file__).parent
#: Functions whose second positional argument is a msgid; keyword ``detail=`` of HTTPException is one too.
MSGID_CALLS = {"gettext": 1, "page_error": 1}


def _catalog(lang: str) -> dict[str, str]:
    out = {}
    for po in (PORTAL / "locale" / lang / "LC_MESSAGES").glob("*.po"):
        with po.open("rb") as f:
            for message in read_po(f, locale=lang):
                if message.id:
                    # the catalogues are merged into one: a msgid two pages share must read the same in both
                    assert out.get(message.id, message.string) == message.string, \
                        f"{message.id!r} is in two catalogues of {lang}, translated differently"
                    out[message.id] = message.string
    return out


def _template_msgids() -> set[str]:
    found = set()
    for path in (PORTAL / "templates").glob("*.html"):
        with path.open("rb") as f:
            for _line, _func, message, _comments in babel_extract(f, ["_", "gettext"], [],
                                                                  {"extensions": "jinja2.ext.i18n"}):
                if isinstance(message, str):
                    found.add(message)
    return found


def _python_msgids() -> set[str]:
    found = set()
    for path in PORTAL.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            index = MSGID_CALLS.get(name)
            args = list(node.args)
            if index is not None and len(args) > index and isinstance(args[index], ast.Constant):
                found.add(args[index].value)
            for kw in node.keywords:
                if kw.arg == "detail" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                    found.add(kw.value.value)
    return found


def test_every_message_used_is_in_the_chinese_catalogue_translated():
    zh = _catalog("zh_CN")
    used = _template_msgids() | _python_msgids()
    assert len(used) > 50
    missing = sorted(m for m in used if not zh.get(m))
    assert not missing, f"not translated into Chinese: {missing}"


def test_english_catalogue_has_the_same_messages():
    assert set(_catalog("en")) == set(_catalog("zh_CN"))


@pytest.mark.parametrize("header, cookie, expected", [
    (None, None, "zh_CN"), ("en-US,en;q=0.9", None, "en"), ("fr-FR,en;q=0.5", None, "en"), ("zh-TW", None, "zh_CN"),
    ("de", None, "zh_CN"), ("en", "zh_CN", "zh_CN"), ("zh-CN", "en", "en"), ("en", "xx", "en"),
    ("en," * 300, None, "zh_CN"), (";;,,q=", None, "zh_CN"),
])
def test_negotiation(header, cookie, expected):
    assert i18n.negotiate(cookie, header) == expected


def test_translation_with_variables():
    assert i18n.gettext("zh_CN", "Too many failed logins: try again in %(minutes)s minutes.", minutes=3) == \
        "登录失败次数过多，请 3 分钟后再试。"
    assert i18n.gettext("en", "Too many failed logins: try again in %(minutes)s minutes.", minutes=3) == \
        "Too many failed logins: try again in 3 minutes."
