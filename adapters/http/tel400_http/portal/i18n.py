"""The portal's languages: gettext catalogues compiled in memory, one Jinja2 environment per language.

Catalogues are committed as ``.po`` only, one domain per feature
(``locale/<lang>/LC_MESSAGES/<feature>.po``, msgids in English); at import
every ``.po`` of a language is compiled in memory and merged into one
:class:`babel.support.Translations`, so there is no build step and no ``.mo``
to go stale.  Each language has its own Jinja2 environment (gettext
installed once), so no request swaps translations on a shared environment.

A request's language: the ``lang`` cookie (set by the language switch) if it
names one of :data:`LANGUAGES`, else the best match of ``Accept-Language``,
else :data:`DEFAULT` (Chinese).
"""

from __future__ import annotations

import io
import pathlib

import jinja2
from babel import negotiate_locale
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

HERE = pathlib.Path(__file__).parent
LANGUAGES = ("zh_CN", "en")
DEFAULT = "zh_CN"
#: What the language switch shows for each language (in that language).
NAMES = {"zh_CN": "中文", "en": "English"}
#: The longest Accept-Language header read (longer: the default language).
MAX_ACCEPT_LANGUAGE = 512


def _compiled(lang: str) -> Translations:
    merged = Translations()
    for po in sorted((HERE / "locale" / lang / "LC_MESSAGES").glob("*.po")):
        with po.open("rb") as f:
            catalog = read_po(f, locale=lang, domain=po.stem)
        buf = io.BytesIO()
        write_mo(buf, catalog)
        buf.seek(0)
        merged.merge(Translations(buf, domain=po.stem))
    return merged


TRANSLATIONS = {lang: _compiled(lang) for lang in LANGUAGES}


def _environment(lang: str) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), extensions=["jinja2.ext.i18n"],
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.install_gettext_translations(TRANSLATIONS[lang], newstyle=True)
    return env


ENVIRONMENTS = {lang: _environment(lang) for lang in LANGUAGES}


def gettext(lang: str, message: str, **variables) -> str:
    """``message`` translated into ``lang``, with ``%(name)s`` variables filled in."""
    text = TRANSLATIONS.get(lang, TRANSLATIONS[DEFAULT]).gettext(message)
    return text % variables if variables else text


def html_lang(lang: str) -> str:
    """The ``<html lang>`` value: zh-CN, en."""
    return lang.replace("_", "-")


def negotiate(cookie: str | None, accept_language: str | None) -> str:
    """The language of a request (see the module)."""
    if cookie in LANGUAGES:
        return cookie
    if accept_language and len(accept_language) <= MAX_ACCEPT_LANGUAGE:
        preferred = [part.split(";")[0].strip().replace("-", "_") for part in accept_language.split(",")]
        found = negotiate_locale([p for p in preferred if p], LANGUAGES, sep="_")
        if found:
            return found
    return DEFAULT


def request_language(request) -> str:
    """:func:`negotiate` for a Starlette request."""
    return negotiate(request.cookies.get("lang"), request.headers.get("accept-language"))
