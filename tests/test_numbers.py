"""Normalisation: every written form in domain.md, and garbage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tel400

MOBILE = "13901012345"


@pytest.mark.parametrize(
    "raw",
    [
        "13901012345",
        "+8613901012345",
        "8613901012345",
        "008613901012345",
        "+86 139-0101-2345",
        "+86 (139) 0101 2345",
        "139 0101 2345",
        "013901012345",  # roaming 0
        "+86 013901012345",
        "１３９０１０１２３４５",  # full-width digits from a Chinese IME
        13901012345,
    ],
)
def test_mobile_forms(impl, raw):
    assert impl.normalize(raw) == MOBILE


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("02112345678", "02112345678"),
        ("021-1234-5678", "02112345678"),
        ("(021) 1234 5678", "02112345678"),
        ("+86 21 1234 5678", "02112345678"),
        ("+86 (0)21 1234 5678", "02112345678"),
        ("0086 21 12345678", "02112345678"),
        ("862112345678", "02112345678"),
        ("057188888888", "057188888888"),
        ("0571-8888-8888", "057188888888"),
        ("+86 571 8888 8888", "057188888888"),
        ("01012345678", "01012345678"),
        ("+86 10 1234 5678", "01012345678"),
        ("0755 1234567", "07551234567"),  # 7-digit subscriber
    ],
)
def test_fixed_line_forms(impl, raw, expected):
    assert impl.normalize(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("4001012345", "4001012345"),
        ("400-101-2345", "4001012345"),
        ("4001-532-532", "4001532532"),
        ("+86 400 101 2345", "4001012345"),
        ("8001234567", "8001234567"),
        ("10086", "10086"),
        ("95588", "95588"),
        ("110", "110"),
        ("106574001012345", "106574001012345"),  # SMS access code + 400 number
        ("88888888", "88888888"),  # local number without area code
        ("+1 415 555 2671", "+14155552671"),
        ("0014155552671", "+14155552671"),
        ("+44 20 7946 0958", "+442079460958"),
    ],
)
def test_other_numbers(impl, raw, expected):
    assert impl.normalize(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "anonymous",
        "unknown",
        "1390101234",  # mobile one digit short
        "139010123456",  # one digit long
        "12",
        "021123",  # fixed line too short
        "0211234567890",
        "40010123",  # 400 number too short
        "400101234567",
        "+",
        "+86",
        "+86 12",
        "+0123456",
        "1390101234x",
        "13901012345;tag=1",
        "13901012345\r\nVia: x",
        "+86 139-0101-2345\n",
        "٣٩٠١٠١٢٣٤٥",  # Arabic-Indic digits are not phone digits here
        "123456789012345678901",
        None,
        1.5,
        True,
        b"13901012345",
    ],
)
def test_garbage_raises_number_error(impl, raw):
    with pytest.raises(tel400.NumberError) as info:
        impl.normalize(raw)
    assert isinstance(info.value, ValueError)
    assert "not a telephone number" in str(info.value)


def test_national_key(impl):
    assert impl.national_key("13901012345") == 13901012345
    assert impl.national_key("02112345678") == 21123456780
    assert impl.national_key("057188888888") == 57188888888
    assert impl.national_key("4001012345") == -1
    assert impl.national_key("10086") == -1
    assert impl.national_key("+14155552671") == -1


mobiles = st.from_regex(r"\A1[3-9][0-9]{9}\Z")
separators = st.sampled_from(["", " ", "-", "  ", " - "])


@given(mobiles, st.sampled_from(["", "+86", "86", "0086", "+86 ", "0"]), separators)
def test_every_written_form_of_a_mobile_is_the_same_number(impl, number, prefix, sep):
    written = prefix + sep.join([number[:3], number[3:7], number[7:]])
    assert impl.normalize(written) == number


@given(st.text(max_size=24))
def test_normalize_never_fails_otherwise_and_is_idempotent(impl, text):
    try:
        normal = impl.normalize(text)
    except tel400.NumberError:
        return
    assert impl.normalize(normal) == normal
    assert normal.lstrip("+").isdigit()


# (Area codes x0y are left out: +86 400… and +86 800… are toll-free numbers.)
@given(st.from_regex(r"\A0(10|2[0-9]|[3-9][1-9][0-9])[1-9][0-9]{6,7}\Z"))
def test_fixed_lines_keep_trunk_zero(impl, number):
    assert impl.normalize(number) == number
    assert impl.normalize("+86" + number[1:]) == number


@given(st.one_of(st.text(max_size=30), st.from_regex(r"\A[+0-9 ()-]{0,24}\Z"), st.integers(-10, 10**16)))
def test_compiled_normalize_is_the_reference(text):
    """Same normal form, or the same NumberError message, for any input."""
    from tel400 import _impl, _numbers_py

    for impl in _impl.ENGINES.values():
        try:
            expected = _numbers_py.normalize(text)
        except tel400.NumberError as exc:
            with pytest.raises(tel400.NumberError) as info:
                impl.normalize(text)
            assert str(info.value) == str(exc)
            assert impl.normalize_or_none(text) is None
        else:
            assert impl.normalize(text) == expected
            assert impl.normalize_or_none(text) == expected
            assert impl.national_key(expected) == _numbers_py.national_key(expected)
