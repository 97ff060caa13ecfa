"""Province names as administrators type them."""

from __future__ import annotations

import pytest

from tel400 import provinces


@pytest.mark.parametrize(
    "name, code",
    [
        ("CN-BJ", "CN-BJ"),
        ("cn-bj", "CN-BJ"),
        ("BJ", "CN-BJ"),
        ("北京", "CN-BJ"),
        ("北京市", "CN-BJ"),
        ("Beijing", "CN-BJ"),
        ("beijing", "CN-BJ"),
        (" Beijing ", "CN-BJ"),
        ("广西壮族自治区", "CN-GX"),
        ("内蒙古", "CN-NM"),
        ("Inner Mongolia", "CN-NM"),
        ("inner-mongolia", "CN-NM"),
        ("Shanxi", "CN-SX"),
        ("Shaanxi", "CN-SN"),
        ("山西", "CN-SX"),
        ("陕西省", "CN-SN"),
        ("Tibet", "CN-XZ"),
        ("Xizang", "CN-XZ"),
        ("Hong Kong", "CN-HK"),
        ("澳门", "CN-MO"),
    ],
)
def test_resolve(name, code):
    assert provinces.resolve(name) == code


@pytest.mark.parametrize("name", ["", "Atlantis", "CN-XX", "北", "Beijing2"])
def test_resolve_unknown(name):
    assert provinces.resolve(name) is None


def test_codes_are_stable_and_complete():
    assert provinces.CODES[0] is None
    assert len(provinces.CODES) == 35  # unknown + 34 provincial-level divisions
    assert len(set(provinces.CODES)) == 35
    assert all(provinces.INDEX[c] == i for i, c in enumerate(provinces.CODES) if c)


@pytest.mark.parametrize(
    "text, code",
    [("浙江省杭州市", "CN-ZJ"), ("内蒙古呼和浩特市", "CN-NM"), ("广西南宁市", "CN-GX"), ("中国", None)],
)
def test_from_place_text(text, code):
    assert provinces.from_place_text(text) == code
