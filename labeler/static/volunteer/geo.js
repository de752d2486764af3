// Web-Mercator math for points marked on a tile.
//
// A tile's image is linear in Web-Mercator metres, not in latitude: x maps linearly to
// longitude, but y maps linearly to the Mercator ordinate ln(tan(pi/4 + lat/2)).
// Bounds are [west, south, east, north] in degrees (as the API returns them).

const D2R = Math.PI / 180;
const R2D = 180 / Math.PI;
const MAX_LAT = 85.0511287798066;

/** Mercator ordinate (unitless, radius 1) of a latitude in degrees. */
export function mercatorY(lat) {
  const clamped = Math.max(-MAX_LAT, Math.min(MAX_LAT, lat));
  return Math.log(Math.tan(Math.PI / 4 + (clamped * D2R) / 2));
}

/** Latitude in degrees of a Mercator ordinate. */
export function latitudeOf(y) {
  return (2 * Math.atan(Math.exp(y)) - Math.PI / 2) * R2D;
}

/** Round to 7 decimals (~1 cm), as RFC 7946 data conventionally is. */
export function round7(v) {
  return Math.round(v * 1e7) / 1e7;
}

const clamp01 = (v) => Math.max(0, Math.min(1, v));

/**
 * Position inside the tile as fractions (fx from the west edge, fy from the north edge,
 * both 0..1) -> [lon, lat] rounded to 7 decimals. Fractions are clamped into the tile.
 */
export function fractionToLonLat(bounds, fx, fy) {
  const [w, s, e, n] = bounds;
  const yn = mercatorY(n);
  const ys = mercatorY(s);
  const lon = w + clamp01(fx) * (e - w);
  const lat = latitudeOf(yn + clamp01(fy) * (ys - yn));
  // Rounding can never leave the (7-decimal) bounds, but float noise could: clamp.
  return [
    Math.min(Math.max(round7(lon), Math.min(w, e)), Math.max(w, e)),
    Math.min(Math.max(round7(lat), s), n),
  ];
}

/** [lon, lat] -> fractions [fx, fy] inside the tile (inverse of fractionToLonLat). */
export function lonLatToFraction(bounds, lon, lat) {
  const [w, s, e, n] = bounds;
  const yn = mercatorY(n);
  const ys = mercatorY(s);
  return [(lon - w) / (e - w), (mercatorY(lat) - yn) / (ys - yn)];
}
