"""The pool of free numbers (tel400_http.pool): imports that report each bad line, atomic takes."""

from __future__ import annotations

import threading

import pytest

from tel400_http.pool import MAX_LINE, NumberPool


@pytest.fixture
def pool(tmp_path):
    pool = NumberPool(tmp_path / "pool.db")
    yield pool
    pool.close()


def test_an_import_keeps_the_good_lines_and_reports_every_bad_one_with_its_line_number(pool):
    lines = ["4001532532", "", "# bought 2026-11", "400-153-2888", "13901012345", "800 123 4567", "hello",
             "4001532532", "4001234", "9" * (MAX_LINE + 1)]
    added, errors = pool.import_lines(lines)
    assert added == 3  # the repeated 4001532532 counted once
    assert [(line_no, text) for line_no, text, _ in errors] == [
        (5, "13901012345"), (7, "hello"), (9, "4001234"), (10, "9" * MAX_LINE + "…")]
    assert "not a 400 or 800 number" in errors[0][2] and "10 digits" in errors[2][2]
    assert pool.free() == ["4001532532", "4001532888", "8001234567"]
    assert pool.import_lines(["4001532532"]) == (0, [])  # already in the pool: skipped


def test_an_import_stops_at_its_limit_and_says_where(tmp_path):
    pool = NumberPool(tmp_path / "pool.db", max_lines=3)
    added, errors = pool.import_lines(f"40012345{i:02d}" for i in range(10))
    assert added == 3
    assert len(errors) == 1 and errors[0][0] == 4 and "at most 3 lines" in errors[0][2]
    with pytest.raises(ValueError):
        NumberPool(tmp_path / "other.db", max_lines=0)


def test_take_and_release(pool):
    pool.import_lines(["4001532532", "4008888888"])
    assert pool.take("400-153-2532") is True
    assert pool.take("4001532532") is False  # taken already
    assert pool.take("4009999999") is False and pool.take("nonsense") is False
    assert pool.free() == ["4008888888"]
    pool.release("4001532532")
    assert pool.free() == ["4001532532", "4008888888"]
    with pytest.raises(ValueError):
        pool.release("13901012345")


def test_refuse_turns_a_number_into_a_bad_line(pool):
    in_service = {"4001012345"}
    added, errors = pool.import_lines(["4008888888", "400-101-2345"],
                                      refuse=lambda n: "already in service" if n in in_service else None)
    assert added == 1 and errors == [(2, "400-101-2345", "already in service")]
    assert pool.free() == ["4008888888"]


def test_returned_frees_a_taken_number_and_adds_no_other(pool):
    pool.import_lines(["4001532532"])
    assert pool.take("4001532532")
    assert pool.returned("4001532532") is True and pool.free() == ["4001532532"]
    assert pool.returned("4008888888") is False and pool.returned("nonsense") is False
    assert pool.free() == ["4001532532"]


def test_free_with_a_query_ranks_as_vanity_search(pool):
    pool.import_lines(["4005321234", "4001532532", "4009876532", "4008888888"])
    assert pool.free("KFC") == ["4001532532", "4009876532", "4005321234"]
    assert pool.free("AAAA") == ["4008888888"]
    pool.take("4001532532")
    assert pool.free("KFC", limit=1) == ["4009876532"]


def test_two_concurrent_takes_of_one_number_exactly_one_wins(tmp_path):
    path = tmp_path / "pool.db"
    NumberPool(path).import_lines(f"40015325{i:02d}" for i in range(40))
    for round_ in range(40):
        number = f"40015325{round_:02d}"
        results: list[bool] = []
        start = threading.Barrier(4)

        def take(number=number, start=start, results=results):
            pool = NumberPool(path)  # each its own connection, as separate requests would have
            start.wait()
            results.append(pool.take(number))
            pool.close()

        threads = [threading.Thread(target=take) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [False, False, False, True], number
