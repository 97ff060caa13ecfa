"""Vanity numbers: keypad letters, the graded patterns, and search (tel400.vanity)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tel400 import vanity

numbers = st.builds(lambda head, body: head + body, st.sampled_from(["400", "800"]),
                    st.text("0123456789", min_size=7, max_size=7))


def test_letters_become_the_keypad_digits():
    assert vanity.to_digits("4001-KFC-KFC") == "4001532532"
    assert vanity.to_digits("kfc") == "532"  # either case
    assert vanity.to_digits("400 (1) 532-532") == "4001532532"  # what is not dialled is dropped


@pytest.mark.parametrize("number, pattern", [
    ("4001238888", "AAAA"), ("4009999999", "AAAAAAA"), ("4001231122", "AABB"), ("4003851212", "ABAB"),
    ("4001123123", "ABCABC"), ("4001111222", "AAABBB"), ("4009051234", "ascending"), ("4009054321", "descending"),
    ("4001235888", "tail:888"), ("4001230168", "tail:168"), ("4001230518", "tail:518"), ("4001230666", "tail:666"),
    ("4001235678", "no4"),
])
def test_each_pattern_sellers_grade_is_found(number, pattern):
    assert pattern in vanity.grade(number).patterns


def test_a_pattern_at_the_tail_is_worth_more_than_the_same_pattern_inside():
    assert vanity.grade("4001235888").score > vanity.grade("4008881235").score
    assert vanity.grade("4005671122").score > vanity.grade("4001122567").score


def test_longer_runs_of_one_digit_score_more():
    scores = [vanity.grade("400" + "1235"[:7 - n] + "7" * n).score for n in range(3, 8)]
    assert scores == sorted(scores) and len(set(scores)) == len(scores)


def test_a_four_costs_the_no4_plus():
    assert "no4" not in vanity.grade("4001235674").patterns
    assert vanity.grade("4001235673").score > vanity.grade("4001235674").score


@settings(max_examples=200, deadline=None)
@given(numbers)
def test_grade_is_deterministic_and_depends_only_on_the_digits(number):
    g = vanity.grade(number)
    assert g == vanity.grade(number) and g.score >= 0
    assert vanity.grade("-".join([number[:4], number[4:7], number[7:]])) == g


@settings(max_examples=200, deadline=None)
@given(st.text("0123456789"), st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ -"))
def test_to_digits_is_idempotent_and_leaves_digits_alone(digits, letters):
    assert vanity.to_digits(digits) == digits
    once = vanity.to_digits(digits + letters)
    assert once.isdigit() or once == ""
    assert vanity.to_digits(once) == once


@settings(max_examples=100, deadline=None)
@given(st.lists(numbers, max_size=40, unique=True),
       st.sampled_from(["", "8", "88", "KFC", "AABB", "AAA", "ABAB", "ascending", "400", "4001", "12"]))
def test_search_gives_a_subset_ranked_tail_first_then_by_score(pool, query):
    found = vanity.search(pool, query, limit=100)
    assert {f.number for f in found} <= set(pool) and len(found) == len({f.number for f in found})
    digits = vanity.to_digits(query) if query not in vanity.PATTERN_WORDS else None

    def at_tail(number):
        return digits is not None and digits != "" and not (len(digits) > 3 and digits[:3] in ("400", "800")) \
            and number[3:].endswith(digits)

    keys = [(not at_tail(f.number), -f.grade.score, f.number) for f in found]
    assert keys == sorted(keys)
    if query in vanity.PATTERN_WORDS:
        assert all(vanity._has(f.grade, query) for f in found)
        assert len(found) == sum(vanity._has(vanity.grade(n), query) for n in pool)


def test_search_by_letters_finds_the_number_anywhere_after_the_prefix_tail_first():
    pool = ["4005321234", "4001532532", "4009876532", "4001234567"]
    assert [f.number for f in vanity.search(pool, "KFC")] == ["4001532532", "4009876532", "4005321234"]
    assert [f.number for f in vanity.search(pool, "4001-KFC-KFC")] == ["4001532532"]


def test_search_refuses_a_query_it_cannot_read():
    with pytest.raises(ValueError, match="no letter or digit"):
        vanity.search(["4001532532"], "--")
    with pytest.raises(ValueError, match="at most"):
        vanity.search(["4001532532"], "8" * 41)
    assert vanity.search(["4001532532", "not-a-number"], "", limit=1) == [vanity.search(["4001532532"], "")[0]]
