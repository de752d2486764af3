"""Server-side rendering for the analyst dashboard: SVG charts and the PNG/PDF map sheet
(pure functions, no database), plus the researcher helpers on computed results."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import box

from labeler.dashboard.analyst_charts import Series, bar_chart, line_chart, nice_ticks
from labeler.dashboard.analyst_mapsheet import (
    DAMAGE_CLASSES,
    SheetFeature,
    damage_color,
    map_sheet_bytes,
    render_map_sheet,
)

NS = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize("vmax,expected_last", [(7, 8), (10, 10), (0.37, 0.4), (1234, 1250),
                                                (0, 1)])
def test_nice_ticks_cover_the_maximum(vmax, expected_last):
    ticks = nice_ticks(vmax)
    assert ticks[0] == 0 and ticks[-1] == pytest.approx(expected_last)
    assert ticks[-1] >= vmax and ticks == sorted(ticks)


def test_bar_heights_are_proportional():
    svg = bar_chart(["a", "b", "c"], [10, 5, 0], title="Votes per day")
    bars = ET.fromstring(svg).findall(f"{NS}rect[@class='cs-bar']")
    heights = [float(b.get("height")) for b in bars]
    assert heights[0] == pytest.approx(2 * heights[1]) and heights[2] == 0
    assert [b.find(f"{NS}title").text for b in bars] == ["a: 10", "b: 5", "c: 0"]


def test_line_chart_describes_its_data_and_escapes_labels():
    svg = line_chart(["d1", "<d2>"], [Series("labelled", [3, 9]), Series("retired", [0, 4])],
                     title="Tiles & more")
    root = ET.fromstring(svg)  # well-formed despite "<" and "&"
    desc = root.find(f"{NS}desc").text
    assert "labelled: total 12, peak 9 at <d2>" in desc
    assert len(root.findall(f"{NS}polyline")) == 2
    ids = [e.get("id") for e in root.iter() if e.get("id")]
    assert all(i.startswith("cs-tiles-more") for i in ids)  # unique per chart when inlined


def test_empty_and_mismatched_charts():
    assert "No data yet" in line_chart([], [], title="x")
    assert "No data yet" in bar_chart([], [], title="x")
    with pytest.raises(ValueError, match="2 values for 3 labels"):
        bar_chart(["a", "b", "c"], [1, 2], title="x")
    with pytest.raises(ValueError, match="series 'a'"):
        line_chart(["x", "y"], [Series("a", [1])], title="x")


def test_damage_colours():
    assert damage_color(None) == damage_color(float("nan")) == "#bdbdbd"
    assert damage_color(0.0) == DAMAGE_CLASSES[0][1]
    assert damage_color(0.5) == DAMAGE_CLASSES[2][1]
    assert damage_color(1.0) == DAMAGE_CLASSES[-1][1]


def test_map_sheet_draws_villages_backdrop_and_cells():
    heavy = SheetFeature(box(30.00, 10.00, 30.004, 10.004), "Heavy", 0.95, ["9 of 10 damaged"])
    light = SheetFeature(box(30.006, 10.00, 30.010, 10.004), "Light", 0.05)
    requested = []

    def backdrop(z, x, y):
        requested.append(z)
        return Image.new("RGB", (256, 256), (0, 0, 255))

    img = render_map_sheet([heavy, light], title="Sheet", points=[(30.008, 10.002)],
                           cells=[((30.0005, 10.0005, 30.001, 10.001), "#00ff00")],
                           backdrop=backdrop, size=(1000, 700))
    assert img.size == (1000, 700) and img.mode == "RGB"
    assert requested and len(set(requested)) == 1  # one zoom level for the whole backdrop

    # the heavily damaged village is tinted towards dark red, the light one towards yellow,
    # both over the blue backdrop; the damaged cell is green
    a = np.asarray(img).astype(int)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    assert ((r > 120) & (g < 80) & (b < 140)).sum() > 1000
    assert ((r > 120) & (g > 120) & (b < 200)).sum() > 1000
    assert ((b > 200) & (r < 60) & (g < 60)).sum() > 1000
    assert ((g > 150) & (r < 100) & (b < 150)).sum() > 20
    assert img.getpixel((0, 0)) == (255, 255, 255)  # page margin stays white


def test_map_sheet_without_villages_and_formats():
    img = render_map_sheet([], title="Nothing yet")
    assert img.size == (1754, 1240)
    png = map_sheet_bytes(img, "png")
    with Image.open(io.BytesIO(png)) as back:
        assert back.format == "PNG" and back.info["dpi"] == pytest.approx((150, 150), abs=1)
    pdf = map_sheet_bytes(img, "pdf")
    assert pdf.startswith(b"%PDF") and b"/Count 1" in pdf
    with pytest.raises(ValueError, match="png or pdf"):
        map_sheet_bytes(img, "svg")


def test_researcher_helpers_on_results():
    from datetime import datetime

    from labeler.dashboard.results import ProjectResults, TileOut, confident_tiles, qc_sample

    def tile(i, conf, source="crowd", gold=None):
        return TileOut(i, 18, i, 0, (0, 0, 1, 1), "retired", "yes", conf, {}, 3, 1.0, {},
                       source, "yes", conf, gold, None, None)

    tiles = [tile(1, 0.99), tile(2, 0.5), tile(3, 0.95), tile(4, 1.0, source="expert"),
             tile(5, 0.97, gold="yes")]
    res = ProjectResults({"slug": "p", "name": "p", "type": "find", "id": 1}, "mv", {},
                         ("yes", "no"), tiles, [], [], [], datetime(2026, 1, 1), "0")
    assert [t.tile_id for t in confident_tiles(res, 0.9)] == [1, 3]
    assert [t.tile_id for t in confident_tiles(res, 0.9, crowd_only=False)] == [4, 1, 5, 3]
    sample = qc_sample(res, 1, seed=1)
    assert len(sample) == 1 and sample == qc_sample(res, 1, seed=1)
    assert len(qc_sample(res, 10)) == 2
