"""China's provincial-level divisions, by ISO 3166-2:CN code.

Plans name provinces the way administrators type them: ``CN-BJ``, ``北京``,
``北京市`` or ``Beijing``.  :func:`resolve` turns any of those into the code;
everything inside tel400 works with codes, and the hot path with the small
integer index of a code in :data:`CODES` (0 means "unknown").
"""

from __future__ import annotations

from typing import Final

# (ISO code, short Chinese name, full Chinese name, English names...)
# Short names are what segment databases use ("上海", "内蒙古"); full names
# are what libphonenumber and official documents use ("上海市", "内蒙古自治区").
_DIVISIONS: Final = (
    ("CN-BJ", "北京", "北京市", "Beijing", "Peking"),
    ("CN-TJ", "天津", "天津市", "Tianjin"),
    ("CN-HE", "河北", "河北省", "Hebei"),
    ("CN-SX", "山西", "山西省", "Shanxi"),
    ("CN-NM", "内蒙古", "内蒙古自治区", "Inner Mongolia", "Nei Mongol", "Neimenggu"),
    ("CN-LN", "辽宁", "辽宁省", "Liaoning"),
    ("CN-JL", "吉林", "吉林省", "Jilin"),
    ("CN-HL", "黑龙江", "黑龙江省", "Heilongjiang"),
    ("CN-SH", "上海", "上海市", "Shanghai"),
    ("CN-JS", "江苏", "江苏省", "Jiangsu"),
    ("CN-ZJ", "浙江", "浙江省", "Zhejiang"),
    ("CN-AH", "安徽", "安徽省", "Anhui"),
    ("CN-FJ", "福建", "福建省", "Fujian"),
    ("CN-JX", "江西", "江西省", "Jiangxi"),
    ("CN-SD", "山东", "山东省", "Shandong"),
    ("CN-HA", "河南", "河南省", "Henan"),
    ("CN-HB", "湖北", "湖北省", "Hubei"),
    ("CN-HN", "湖南", "湖南省", "Hunan"),
    ("CN-GD", "广东", "广东省", "Guangdong", "Canton"),
    ("CN-GX", "广西", "广西壮族自治区", "Guangxi"),
    ("CN-HI", "海南", "海南省", "Hainan"),
    ("CN-CQ", "重庆", "重庆市", "Chongqing"),
    ("CN-SC", "四川", "四川省", "Sichuan"),
    ("CN-GZ", "贵州", "贵州省", "Guizhou"),
    ("CN-YN", "云南", "云南省", "Yunnan"),
    ("CN-XZ", "西藏", "西藏自治区", "Tibet", "Xizang"),
    ("CN-SN", "陕西", "陕西省", "Shaanxi"),
    ("CN-GS", "甘肃", "甘肃省", "Gansu"),
    ("CN-QH", "青海", "青海省", "Qinghai"),
    ("CN-NX", "宁夏", "宁夏回族自治区", "Ningxia"),
    ("CN-XJ", "新疆", "新疆维吾尔自治区", "Xinjiang"),
    ("CN-TW", "台湾", "台湾省", "Taiwan"),
    ("CN-HK", "香港", "香港特别行政区", "Hong Kong", "Hongkong"),
    ("CN-MO", "澳门", "澳门特别行政区", "Macau", "Macao"),
)

#: Index 0 is "unknown"; the others are the ISO codes in a fixed order that
#: compiled tables and data files rely on.  Append only.
CODES: Final[tuple[str | None, ...]] = (None,) + tuple(d[0] for d in _DIVISIONS)

#: ISO code -> index into :data:`CODES`.
INDEX: Final[dict[str, int]] = {code: i for i, code in enumerate(CODES) if code}

#: ISO code -> short Chinese name, for reports.
CHINESE_NAMES: Final[dict[str, str]] = {d[0]: d[1] for d in _DIVISIONS}

#: ISO code -> English name.
ENGLISH_NAMES: Final[dict[str, str]] = {d[0]: d[3] for d in _DIVISIONS}


def _fold(name: str) -> str:
    return "".join(name.split()).casefold().replace("-", "")


_BY_NAME: Final[dict[str, str]] = {}
for _d in _DIVISIONS:
    for _name in _d:
        _BY_NAME[_fold(_name)] = _d[0]
    _BY_NAME[_fold(_d[0][3:])] = _d[0]  # bare "BJ"
    _BY_NAME[_fold(_d[0].replace("-", ""))] = _d[0]  # "CNBJ"

# Short Chinese names, longest first, for reading the start of a place text
# such as "内蒙古呼和浩特市" or "广西南宁市".
_CHINESE_PREFIXES: Final = sorted(
    ((d[1], d[0]) for d in _DIVISIONS), key=lambda item: -len(item[0])
)


def resolve(name: str) -> str | None:
    """The ISO 3166-2:CN code for a province name, or ``None``.

    Accepts the code itself (``CN-BJ``, ``cn-bj``, ``BJ``), the Chinese name
    with or without its suffix (``北京``, ``北京市``, ``广西壮族自治区``) and
    the English name in any case (``Beijing``, ``inner mongolia``).
    Cost: one dict lookup.
    """
    return _BY_NAME.get(_fold(name))


def from_place_text(text: str) -> str | None:
    """The province a Chinese place description starts with, or ``None``.

    Reads texts such as libphonenumber's ``浙江省杭州市`` or a segment
    database's ``内蒙古``.  Used when building prefix tables, not per call.
    """
    text = text.strip()
    for short, code in _CHINESE_PREFIXES:
        if text.startswith(short):
            return code
    return None


def from_english_place(text: str) -> str | None:
    """The province in an English place text such as ``"Hangzhou, Zhejiang"``."""
    return resolve(text.rsplit(",", 1)[-1]) or resolve(text)
