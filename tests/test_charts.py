"""Charts: well-formed SVG, one datum per item with its tooltip, labels escaped, no style=,
sizes from the data, and an explicit "no data" chart."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from tel400_http import charts

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = '<script>alert("x")</script>&\x00\x1b'


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # well-formed XML, or this raises
    assert root.tag == f"{SVG}svg" and "chart" in root.get("class").split()
    return root


def datums(root: ET.Element) -> list[ET.Element]:
    return [e for e in root.iter() if e.get("class") == "datum"]


def draw_each(labels):
    items = [(label, i + 1) for i, label in enumerate(labels)]
    return {
        "bars": charts.bars(items, title=HOSTILE, unit="calls"),
        "columns": charts.columns(items, title=HOSTILE, overlay=[1] * len(items)),
        "donut": charts.donut(items, title=HOSTILE),
        "heatmap": charts.heatmap([[v for _, v in items]], rows=[HOSTILE], cols=labels, title=HOSTILE),
    }


@pytest.mark.parametrize("kind", ["bars", "columns", "donut", "heatmap"])
def test_one_datum_per_item_each_with_its_tooltip_and_labels_escaped(kind):
    labels = [HOSTILE, "广东", "13901012345", "a & b"]
    svg = draw_each(labels)[kind]
    assert "<script" not in svg and "style=" not in svg and "\x00" not in svg
    root = parse(svg)
    items = datums(root)
    assert len(items) == len(labels)
    tips = ["".join(item.find(f"{SVG}title").itertext()) for item in items]
    assert all(tip for tip in tips)
    assert any('<script>alert("x")</script>' in tip for tip in tips)  # drawn as text
    assert root.find(f"{SVG}title").text == '<script>alert("x")</script>&'


def test_heatmap_has_a_cell_per_value_shaded_by_it():
    grid = [[0] * 24 for _ in range(7)]
    grid[0][9], grid[6][23] = 40, 3
    root = parse(charts.heatmap(grid, rows=["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
                                cols=[str(h) for h in range(24)], title="Calls"))
    cells = datums(root)
    assert len(cells) == 7 * 24
    fills = [cell.find(f"{SVG}rect").get("fill") for cell in cells]
    assert fills[9] == charts.RAMP[-1] and fills[6 * 24 + 23] == charts.RAMP[1] and fills[0] == charts.RAMP[0]
    with pytest.raises(ValueError, match="7 × 24"):
        charts.heatmap(grid[:6], rows=["x"] * 7, cols=["h"] * 24, title="t")


@pytest.mark.parametrize("draw", [
    lambda items: charts.bars(items, title="t"), lambda items: charts.columns(items, title="t"),
    lambda items: charts.donut(items, title="t"),
])
def test_nothing_to_draw_gives_an_explicit_no_data_chart(draw):
    for items in ([], [("a", 0), ("b", 0)]):
        root = parse(draw(items))
        assert "chart-empty" in root.get("class") and not datums(root)
        assert "No data" in "".join(root.itertext())
    assert "无数据" in charts.no_data(title="t", empty="无数据")


def test_sizes_follow_the_data():
    def height(n):
        return int(parse(charts.bars([(str(i), i + 1) for i in range(n)], title="t")).get("height"))

    def width(n):
        return int(parse(charts.columns([(str(i), i + 1) for i in range(n)], title="t")).get("width"))

    assert height(30) > height(3) and width(31) > width(24)
    long = parse(charts.bars([("x" * 10, 1)], title="t")).get("width")
    longer = parse(charts.bars([("x" * 30, 1)], title="t")).get("width")
    assert int(longer) > int(long)


def test_bar_lengths_and_colours_come_from_the_values_and_the_palette():
    root = parse(charts.bars([("a", 10), ("b", 5)], title="t"))
    rects = [item.find(f"{SVG}rect") for item in datums(root)]
    assert float(rects[0].get("width")) == 2 * float(rects[1].get("width"))
    donut = parse(charts.donut([(str(i), 1) for i in range(9)], title="t"))
    colours = [item.find(f"{SVG}circle").get("stroke") for item in datums(donut)]
    assert colours[:7] == list(charts.PALETTE) and set(colours[7:]) == {charts.PALETTE[-1]}


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "3", None, True])
def test_values_that_are_not_counts_are_refused(bad):
    with pytest.raises(ValueError, match="finite numbers"):
        charts.bars([("a", bad)], title="t")
    with pytest.raises(ValueError, match="overlay"):
        charts.columns([("a", 1)], title="t", overlay=[1, 2])


def _clip_by_trial(text, width):
    """The clip as first written (drop a character, measure again): the reference for the linear one."""
    if charts._width_of(text) <= width:
        return text
    while text and charts._width_of(text + "…") > width:
        text = text[:-1]
    return text + "…"


@pytest.mark.parametrize("text", ["", "a", "Beijing office", "北京办公室北京办公室", "mixed 北京 text " * 5, "x" * 200])
@pytest.mark.parametrize("width", [0, 7, 8, 20, 60, 200])
def test_clip_cuts_where_measuring_each_prefix_does(text, width):
    assert charts._clip(text, width) == _clip_by_trial(text, width)


def test_a_very_long_label_is_clipped_to_the_room_it_has():
    label = "北" * 4000 + "x" * 4000
    svg = charts.bars([(label, 1.0)], title="t")
    clipped = charts._clip(label, 100)
    assert clipped.endswith("…") and charts._width_of(clipped) <= 100
    assert label not in svg.split("<title>")[0]  # drawn clipped (the tooltip may keep it whole)


def test_clipping_measures_only_what_fits(monkeypatch):
    """An 8,000-character label is measured a character at a time up to its room, not once per cut
    (the first clip measured every prefix: quadratic, 5 s for such a label)."""
    measured = []
    real = charts._char_width
    monkeypatch.setattr(charts, "_char_width", lambda ch, size=12: measured.append(ch) or real(ch, size))
    assert charts._clip("x" * 8000, 100).endswith("…")
    assert len(measured) <= 100 // 7 + 3
