"""tel400.smstext: folding, encodings and parts, safe templates."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tel400 import smstext
from tel400.smstext import (
    MAX_PARTS, REPLY_FIELDS, OutgoingSms, check_template, count_parts, encoding_of, fold, render, split_parts,
)

# -- fold ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, folded", [
    ("ＨＥＬＬＯ／？", "hello"),  # full-width letters and punctuation
    ("HeLLo", "hello"),
    ("  hello  ", "hello"),
    ("hello？！。", "hello"),  # CJK punctuation after
    ("【退订】", "退订"),
    ("“TD”", "td"),
    ("《你的酒店在哪？》", "你的酒店在哪"),
    ("（取消）…", "取消"),
    ("你的\u3000酒店   在哪", "你的 酒店 在哪"),  # ideographic space; inner runs become one space
    ("\t\nSTOP\r\n", "stop"),
    ("１２３", "123"),  # full-width digits
    ("ß", "ss"),
    ("", ""),
    ("？！。，、；：", ""),
    ("a-b", "a-b"),  # inner punctuation stays
])
def test_fold(text, folded):
    assert fold(text) == folded


@given(st.text(max_size=60))
@settings(max_examples=300)
def test_fold_is_idempotent(text):
    assert fold(fold(text)) == fold(text)


def test_fold_refuses_what_is_not_text():
    with pytest.raises(TypeError):
        fold(None)  # type: ignore[arg-type]


# -- encodings and parts -------------------------------------------------------------------------------


def test_encoding():
    assert encoding_of("Hello, world! @£$") == "gsm7"
    assert encoding_of("price 5€ [x] {y} ~|^\\") == "gsm7"  # the extension table is GSM-7 too
    assert encoding_of("你好") == "ucs2"
    assert encoding_of("hello 😀") == "ucs2"
    assert encoding_of("") == "gsm7"


@pytest.mark.parametrize("text, parts", [
    ("", 1),
    ("a" * 160, 1),
    ("a" * 161, 2),
    ("a" * 306, 2),
    ("a" * 307, 3),
    ("字" * 70, 1),
    ("字" * 71, 2),
    ("字" * 134, 2),
    ("字" * 135, 3),
    ("€" * 80, 1),  # 160 septets
    ("€" * 81, 2),  # 162 septets: 76 escape pairs (152 septets) in the first part, never 76.5
    ("€" * 153, 3),
], ids=lambda v: f"{len(v)}x{v[:1]}" if isinstance(v, str) else str(v))
def test_count_parts_at_the_boundaries(text, parts):
    assert count_parts(text) == parts
    assert "".join(split_parts(text)) == text


def test_an_extension_character_at_a_part_boundary_moves_whole():
    text = "a" * 152 + "€" + "b" * 10  # the € would need septets 153 and 154
    parts = split_parts(text)
    assert parts[0] == "a" * 152 and parts[1].startswith("€")
    assert "".join(parts) == text


def test_a_surrogate_pair_at_unit_67_moves_whole():
    text = "字" * 66 + "😀" + "字" * 10  # the emoji would take UTF-16 units 67 and 68
    parts = split_parts(text)
    assert parts[0] == "字" * 66 and parts[1].startswith("😀")
    assert all(sum(2 if ord(c) > 0xFFFF else 1 for c in p) <= 67 for p in parts)


def test_gsm7_parts_hold_at_most_153_septets():
    text = ("ab€" * 200)[:400]
    for part in split_parts(text):
        assert sum(2 if c in smstext.GSM7_EXTENSION else 1 for c in part) <= 153


def test_max_parts():
    assert count_parts("字" * (67 * MAX_PARTS)) == MAX_PARTS
    with pytest.raises(ValueError, match="more than 10 SMS parts"):
        count_parts("字" * (67 * MAX_PARTS + 1))
    with pytest.raises(ValueError):
        split_parts("a" * 100_000)  # refused once past the bound


@given(st.text(max_size=700))
@settings(max_examples=200)
def test_split_parts_round_trips_and_never_splits_a_surrogate(text):
    try:
        parts = split_parts(text)
    except ValueError:
        return
    assert "".join(parts) == text
    assert 1 <= len(parts) <= MAX_PARTS
    single = 160 if encoding_of(text) == "gsm7" else 70
    multi = 153 if encoding_of(text) == "gsm7" else 67
    for part in parts:
        cost = sum((2 if c in smstext.GSM7_EXTENSION else 1) if encoding_of(text) == "gsm7"
                   else (2 if ord(c) > 0xFFFF else 1) for c in part)
        assert cost <= (single if len(parts) == 1 else multi)


# -- templates ----------------------------------------------------------------------------------------


def test_render():
    values = {"number": "4001012345", "date": "2026-12-01"}
    assert render("call {number} on {date}", values) == "call 4001012345 on 2026-12-01"
    assert render("{{literal}} {number}}}", values) == "{literal} 4001012345}"
    assert render("", values) == ""


def test_values_are_inserted_as_text_never_as_template():
    assert render("hi {caller}", {"caller": "{number}{{"}) == "hi {number}{{"


@pytest.mark.parametrize("template", [
    "{0.__class__}", "{a!r}", "{number!r}", "{number:>99999}", "{number[0]}", "{number.real}", "{}",
    "{ number}", "{NUMBER}", "{number", "number}", "{{{number", "}{", "{" + "a" * 40 + "}",
])
def test_hostile_and_broken_templates_are_refused(template):
    with pytest.raises(ValueError):
        check_template(template, REPLY_FIELDS)
    with pytest.raises(ValueError):
        render(template, dict.fromkeys(REPLY_FIELDS, "x") | {"a" * 40: "x"})


def test_check_template_names_the_unknown_placeholder():
    with pytest.raises(ValueError, match=r"unknown placeholder \{name\}"):
        check_template("hello {name}", REPLY_FIELDS)
    check_template("hello {name}", ("name",))
    with pytest.raises(ValueError, match="unbalanced '}' at character 3"):
        check_template("ab}", REPLY_FIELDS)


def test_render_refuses_a_missing_value():
    with pytest.raises(ValueError, match=r"\{date\}"):
        render("{date}", {})


def test_worst_case_parts_counts_every_placeholder_at_its_longest():
    # 64 characters + {caller} (20 at most) is 84 UTF-16 units: two parts, whatever the caller.
    assert smstext.worst_case_parts("字" * 64 + "{caller}") == 2
    assert smstext.worst_case_parts("字" * 40 + "{caller}") == 1


def test_outgoing_sms_is_a_frozen_value():
    sms = OutgoingSms("m1", "4001012345", "106574001012345", "13901012345", "hi", 1, "reply")
    assert sms == OutgoingSms("m1", "4001012345", "106574001012345", "13901012345", "hi", 1, "reply")
    with pytest.raises(AttributeError):
        sms.text = "x"  # type: ignore[misc]
