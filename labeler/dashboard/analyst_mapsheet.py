"""A printable map sheet of a project's villages (PNG, or PDF through Pillow).

Pure rendering: plain features in (shapely geometries in lon/lat WGS84 plus their figures), a
``PIL.Image`` out. The optional ``backdrop`` callable returns the imagery tile ``(z, x, y)`` as a
``PIL.Image`` (or ``None`` where there is none), so this module knows nothing about the tile
store or the database.

Layout (A4 landscape by default): title band, the map (imagery backdrop, village outlines filled
by damage share, numbered markers, structure points, scale bar, north arrow), a legend and a
numbered table of villages on the right, and a footer that stamps date, method and software
version so a printed sheet can be traced back to its export.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import IO, Callable, Sequence

import mercantile
from PIL import Image, ImageDraw, ImageFont
from shapely.geometry.base import BaseGeometry

__all__ = ["SheetFeature", "render_map_sheet", "save_map_sheet", "DAMAGE_CLASSES", "damage_color"]

R = 6378137.0
HALF = math.pi * R
# (upper bound of the damage share, fill colour, legend label) — ColorBrewer YlOrRd, 5 classes
DAMAGE_CLASSES: tuple[tuple[float, str, str], ...] = (
    (0.2, "#ffffb2", "0-20 %"),
    (0.4, "#fecc5c", "20-40 %"),
    (0.6, "#fd8d3c", "40-60 %"),
    (0.8, "#f03b20", "60-80 %"),
    (1.01, "#bd0026", "80-100 %"),
)
NO_DATA = "#bdbdbd"
MAX_BACKDROP_TILES = 144

Backdrop = Callable[[int, int, int], "Image.Image | None"]


@dataclass(frozen=True)
class SheetFeature:
    """One village (or any polygon) on the sheet."""

    geometry: BaseGeometry
    label: str
    value: float | None = None  # damage share 0..1 -> fill colour; None -> grey
    lines: Sequence[str] = field(default_factory=tuple)  # figures shown in the side table


def damage_color(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return NO_DATA
    for upper, color, _ in DAMAGE_CLASSES:
        if value < upper:
            return color
    return DAMAGE_CLASSES[-1][1]


def _merc(lon: float, lat: float) -> tuple[float, float]:
    lat = max(min(lat, 85.05112878), -85.05112878)
    x = R * math.radians(lon)
    y = R * math.log(math.tan(math.pi / 4 + math.radians(lat) / 2))
    return x, y


def _lat(y: float) -> float:
    return math.degrees(2 * math.atan(math.exp(y / R)) - math.pi / 2)


def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    names = ("DejaVuSans-Bold.ttf", "LiberationSans-Bold.ttf") if bold else (
        "DejaVuSans.ttf", "LiberationSans-Regular.ttf")
    for name in names:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _rgb(hex_color: str, alpha: int = 255) -> tuple[int, int, int, int]:
    h = hex_color.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16), alpha


class _View:
    """Maps Web-Mercator metres into the map frame's pixels."""

    def __init__(self, bounds: tuple[float, float, float, float], frame: tuple[int, int, int, int]):
        fx0, fy0, fx1, fy1 = frame
        minx, miny, maxx, maxy = bounds
        w, h = max(maxx - minx, 1.0), max(maxy - miny, 1.0)
        self.scale = min((fx1 - fx0) / w, (fy1 - fy0) / h)  # px per metre
        cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
        self.ox = (fx0 + fx1) / 2 - cx * self.scale
        self.oy = (fy0 + fy1) / 2 + cy * self.scale
        self.frame = frame

    def px(self, x: float, y: float) -> tuple[float, float]:
        return self.ox + x * self.scale, self.oy - y * self.scale

    def lonlat(self, lon: float, lat: float) -> tuple[float, float]:
        return self.px(*_merc(lon, lat))

    def merc_at(self, px: float, py: float) -> tuple[float, float]:
        return (px - self.ox) / self.scale, (self.oy - py) / self.scale


def _polygons(geom: BaseGeometry):
    if geom.is_empty:
        return []
    if geom.geom_type == "Polygon":
        return [geom]
    if hasattr(geom, "geoms"):
        return [p for g in geom.geoms for p in _polygons(g)]
    return []


def _draw_backdrop(img: Image.Image, view: _View, backdrop: Backdrop) -> bool:
    fx0, fy0, fx1, fy1 = view.frame
    mpp = 1.0 / view.scale
    z = int(math.ceil(math.log2(2 * HALF / (256 * mpp))))
    west, north = view.merc_at(fx0, fy0)
    east, south = view.merc_at(fx1, fy1)
    lon0, lat1 = mercantile.lnglat(west, north)
    lon1, lat0 = mercantile.lnglat(east, south)
    drawn = False
    for zoom in range(min(z, 22), max(z - 6, 0) - 1, -1):
        tiles = list(mercantile.tiles(lon0, lat0, lon1, lat1, zooms=[zoom]))
        if len(tiles) > MAX_BACKDROP_TILES:
            continue
        for t in tiles:
            tile = backdrop(t.z, t.x, t.y)
            if tile is None:
                continue
            b = mercantile.xy_bounds(t)
            x0, y0 = view.px(b.left, b.top)
            x1, y1 = view.px(b.right, b.bottom)
            w, h = int(round(x1)) - int(round(x0)), int(round(y1)) - int(round(y0))
            if w <= 0 or h <= 0:
                continue
            piece = tile.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
            img.paste(piece, (int(round(x0)), int(round(y0))))
            drawn = True
        if drawn:
            return True
    return False


def _scale_bar(draw: ImageDraw.ImageDraw, view: _View, lat: float, font) -> None:
    fx0, fy0, fx1, fy1 = view.frame
    # ground metres per pixel at this latitude
    gpp = math.cos(math.radians(lat)) / view.scale
    target = (fx1 - fx0) * 0.2 * gpp
    mag = 10 ** math.floor(math.log10(max(target, 1e-6)))
    length_m = max(m * mag for m in (1, 2, 5) if m * mag <= target) if target >= mag else mag
    length_px = length_m / gpp
    x0, y0 = fx0 + 20, fy1 - 28
    draw.rectangle([x0 - 8, y0 - 22, x0 + length_px + 60, y0 + 14], fill=(255, 255, 255, 215))
    draw.rectangle([x0, y0, x0 + length_px / 2, y0 + 6], fill=(30, 30, 30, 255))
    draw.rectangle([x0 + length_px / 2, y0, x0 + length_px, y0 + 6], fill=(255, 255, 255, 255),
                   outline=(30, 30, 30, 255))
    text = f"{length_m / 1000:g} km" if length_m >= 1000 else f"{length_m:g} m"
    draw.text((x0, y0 - 19), "0", fill=(30, 30, 30, 255), font=font)
    draw.text((x0 + length_px + 6, y0 - 6), text, fill=(30, 30, 30, 255), font=font)


def _north_arrow(draw: ImageDraw.ImageDraw, view: _View, font) -> None:
    fx0, fy0, fx1, fy1 = view.frame
    cx, top = fx1 - 34, fy0 + 16
    draw.ellipse([cx - 20, top - 4, cx + 20, top + 56], fill=(255, 255, 255, 215))
    draw.polygon([(cx, top + 4), (cx - 10, top + 38), (cx, top + 30)], fill=(30, 30, 30, 255))
    draw.polygon([(cx, top + 4), (cx + 10, top + 38), (cx, top + 30)], fill=(140, 140, 140, 255))
    draw.text((cx, top + 46), "N", fill=(30, 30, 30, 255), font=font, anchor="mm")


def render_map_sheet(
    villages: Sequence[SheetFeature],
    *,
    title: str,
    subtitle: str = "",
    footer: str = "",
    points: Sequence[tuple[float, float]] = (),
    cells: Sequence[tuple[tuple[float, float, float, float], str]] = (),
    cells_label: str = "damaged tile (crowd consensus)",
    backdrop: Backdrop | None = None,
    size: tuple[int, int] = (1754, 1240),
) -> Image.Image:
    """Render the sheet (A4 landscape at 150 dpi by default) and return an RGB image.

    ``cells`` are tiles to outline, as ``((west, south, east, north), "#rrggbb")``.
    """
    W, H = size
    u = W / 1754  # unit scale so every size keeps its proportions
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img, "RGBA")
    f_title, f_sub = _font(int(34 * u), bold=True), _font(int(18 * u))
    f_small, f_bold = _font(int(15 * u)), _font(int(16 * u), bold=True)

    margin = int(40 * u)
    header_h = int(96 * u)
    footer_h = int(40 * u)
    side_w = int(470 * u)
    frame = (margin, margin + header_h, W - margin - side_w - int(24 * u), H - margin - footer_h)
    fx0, fy0, fx1, fy1 = frame

    draw.text((margin, margin), title, fill=(20, 20, 20), font=f_title)
    if subtitle:
        draw.text((margin, margin + int(48 * u)), subtitle, fill=(80, 80, 80), font=f_sub)

    # extent of everything drawn, in Web-Mercator metres, with 8 % padding
    xs: list[float] = []
    ys: list[float] = []
    for v in villages:
        if v.geometry.is_empty:
            continue
        b = v.geometry.bounds
        for lon, lat in ((b[0], b[1]), (b[2], b[3])):
            x, y = _merc(lon, lat)
            xs.append(x)
            ys.append(y)
    for lon, lat in points:
        x, y = _merc(lon, lat)
        xs.append(x)
        ys.append(y)

    map_img = Image.new("RGB", size, (242, 240, 236))
    if xs:
        minx, maxx, miny, maxy = min(xs), max(xs), min(ys), max(ys)
        pad = max(maxx - minx, maxy - miny, 200.0) * 0.08
        view = _View((minx - pad, miny - pad, maxx + pad, maxy + pad), frame)
        has_backdrop = backdrop is not None and _draw_backdrop(map_img, view, backdrop)
        img.paste(map_img.crop(frame), frame[:2])
        overlay = Image.new("RGBA", size, (0, 0, 0, 0))
        od = ImageDraw.Draw(overlay, "RGBA")  # blend what is drawn on top
        fill_alpha = 90 if has_backdrop else 170
        for v in villages:
            color = damage_color(v.value)
            for poly in _polygons(v.geometry):
                ring = [view.lonlat(lon, lat) for lon, lat in poly.exterior.coords]
                if len(ring) < 3:
                    continue
                # draw on the polygon's bounding box only (a full-page mask per village is slow)
                xs_ = [p[0] for p in ring]
                ys_ = [p[1] for p in ring]
                bx0, by0 = max(int(min(xs_)) - 1, 0), max(int(min(ys_)) - 1, 0)
                bx1, by1 = min(int(max(xs_)) + 2, W), min(int(max(ys_)) + 2, H)
                if bx1 <= bx0 or by1 <= by0:
                    continue
                mask = Image.new("L", (bx1 - bx0, by1 - by0), 0)
                md = ImageDraw.Draw(mask)
                md.polygon([(x - bx0, y - by0) for x, y in ring], fill=fill_alpha)
                for hole in poly.interiors:  # holes stay clear
                    md.polygon([(x - bx0, y - by0) for x, y in
                                (view.lonlat(lon, lat) for lon, lat in hole.coords)], fill=0)
                layer = Image.new("RGBA", mask.size, _rgb(color, 0))
                layer.putalpha(mask)
                overlay.alpha_composite(layer, (bx0, by0))
        od = ImageDraw.Draw(overlay, "RGBA")
        for (w, so, e, n), color in cells:
            x0, y0 = view.lonlat(w, n)
            x1, y1 = view.lonlat(e, so)
            od.rectangle([x0, y0, x1, y1], fill=_rgb(color, 60),
                         outline=_rgb(color, 230), width=max(1, int(2 * u)))
        r = max(2, int(3 * u))
        for lon, lat in points:
            x, y = view.lonlat(lon, lat)
            od.ellipse([x - r, y - r, x + r, y + r], fill=(20, 20, 20, 200),
                       outline=(255, 255, 255, 230))
        for v in villages:
            for poly in _polygons(v.geometry):
                ring = [view.lonlat(lon, lat) for lon, lat in poly.exterior.coords]
                if len(ring) >= 2:
                    od.line(ring, fill=(20, 20, 20, 255), width=max(2, int(3 * u)), joint="curve")
                    od.line(ring, fill=_rgb(damage_color(v.value)), width=max(1, int(1.5 * u)))
        # crop overlay to frame so nothing leaks outside the map
        mask = Image.new("L", size, 0)
        ImageDraw.Draw(mask).rectangle(frame, fill=255)
        img.paste(overlay, (0, 0), Image.composite(overlay, Image.new("RGBA", size), mask))
        draw = ImageDraw.Draw(img, "RGBA")
        for i, v in enumerate(villages, start=1):
            if v.geometry.is_empty:
                continue
            p = v.geometry.representative_point()
            x, y = view.lonlat(p.x, p.y)
            if not (fx0 <= x <= fx1 and fy0 <= y <= fy1):
                continue
            rr = int(15 * u)
            draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=(255, 255, 255, 235),
                         outline=(20, 20, 20, 255), width=max(1, int(2 * u)))
            draw.text((x, y), str(i), fill=(20, 20, 20), font=f_bold, anchor="mm")
        center_lat = _lat(view.merc_at(0, (fy0 + fy1) / 2)[1])
        _scale_bar(draw, view, center_lat, f_small)
        _north_arrow(draw, view, f_bold)
    else:
        img.paste(map_img.crop(frame), frame[:2])
        draw.text(((fx0 + fx1) / 2, (fy0 + fy1) / 2), "No villages yet", fill=(90, 90, 90),
                  font=f_sub, anchor="mm")
    draw.rectangle(frame, outline=(60, 60, 60), width=max(1, int(2 * u)))

    # side column: legend + numbered village table
    sx = W - margin - side_w
    y = fy0
    draw.text((sx, y), "Damage (share of tiles / structures damaged)", fill=(20, 20, 20),
              font=f_bold)
    y += int(30 * u)
    sw = int(26 * u)
    for _, color, label in DAMAGE_CLASSES:
        draw.rectangle([sx, y, sx + sw, y + int(18 * u)], fill=color, outline=(60, 60, 60))
        draw.text((sx + sw + int(10 * u), y), label, fill=(40, 40, 40), font=f_small)
        y += int(24 * u)
    draw.rectangle([sx, y, sx + sw, y + int(18 * u)], fill=NO_DATA, outline=(60, 60, 60))
    draw.text((sx + sw + int(10 * u), y), "no data", fill=(40, 40, 40), font=f_small)
    y += int(24 * u)
    if cells:
        colors = list(dict.fromkeys(c for _, c in cells))
        for k, c in enumerate(colors[:3]):
            right = sx + sw - (len(colors[:3]) - 1 - k) * 6 * u
            draw.rectangle([sx + k * 6 * u, y + k * 3 * u, right, y + int(18 * u)], outline=c,
                           width=max(1, int(2 * u)))
        draw.text((sx + sw + int(10 * u), y), cells_label, fill=(40, 40, 40), font=f_small)
        y += int(24 * u)
    if points:
        rr = int(4 * u)
        cy = y + int(9 * u)
        draw.ellipse([sx + sw / 2 - rr, cy - rr, sx + sw / 2 + rr, cy + rr], fill=(20, 20, 20))
        draw.text((sx + sw + int(10 * u), y), "damaged structure (crowd consensus)",
                  fill=(40, 40, 40), font=f_small)
        y += int(24 * u)
    y += int(16 * u)
    draw.text((sx, y), f"Villages ({len(villages)})", fill=(20, 20, 20), font=f_bold)
    y += int(28 * u)
    line_h = int(20 * u)
    for i, v in enumerate(villages, start=1):
        need = line_h * (1 + len(v.lines)) + int(8 * u)
        if y + need > fy1:
            draw.text((sx, y), f"... and {len(villages) - i + 1} more (see the CSV export)",
                      fill=(90, 90, 90), font=f_small)
            break
        draw.rectangle([sx, y + int(2 * u), sx + int(12 * u), y + int(16 * u)],
                       fill=damage_color(v.value), outline=(60, 60, 60))
        draw.text((sx + int(20 * u), y), f"{i}. {v.label}", fill=(20, 20, 20), font=f_bold)
        y += line_h
        for line in v.lines:
            draw.text((sx + int(20 * u), y), line, fill=(60, 60, 60), font=f_small)
            y += line_h
        y += int(8 * u)

    if footer:
        draw.text((margin, H - margin - int(22 * u)), footer, fill=(90, 90, 90), font=f_small)
    return img


def save_map_sheet(img: Image.Image, fp: str | IO[bytes], fmt: str, *, dpi: int = 150) -> None:
    """Write the sheet as ``png`` or ``pdf`` (Pillow's PDF writer; one page)."""
    fmt = fmt.lower()
    if fmt == "png":
        img.save(fp, format="PNG", optimize=True, dpi=(dpi, dpi))
    elif fmt == "pdf":
        img.convert("RGB").save(fp, format="PDF", resolution=float(dpi))
    else:
        raise ValueError(f"map sheet format must be png or pdf, not {fmt!r}")


def map_sheet_bytes(img: Image.Image, fmt: str, *, dpi: int = 150) -> bytes:
    buf = io.BytesIO()
    save_map_sheet(img, buf, fmt, dpi=dpi)
    return buf.getvalue()
