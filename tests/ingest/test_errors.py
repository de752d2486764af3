"""Bad input: a clear error naming the file, and nothing half-registered."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from ingest import ingest
from ingest.errors import (BandError, IngestError, NoGeoreferenceError, NoOverlapError,
                           NotARasterError, OptionError, RasterTooLargeError, ReadError,
                           SourceNotFoundError, StoreNotWritableError, UnsupportedDriverError)


def test_not_a_raster(tmp_path):
    f = tmp_path / "notes.tif"
    f.write_text("these are field notes, not imagery")
    with pytest.raises(NotARasterError, match="notes.tif: is not a raster") as ei:
        ingest({"image": [f]}, tmp_path / "s", "p", jobs=1)
    assert ei.value.path == str(f)
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(NotARasterError, match="empty"):
        ingest({"image": [empty]}, tmp_path / "s", "p", jobs=1)


def test_missing_file(tmp_path):
    with pytest.raises(SourceNotFoundError, match="nope.tif: no such file"):
        ingest({"image": [tmp_path / "nope.tif"]}, tmp_path / "s", "p", jobs=1)
    with pytest.raises(SourceNotFoundError, match="not a regular file"):
        ingest({"image": [tmp_path]}, tmp_path / "s", "p", jobs=1)


def test_no_georeference(tmp_path, make_tif, pattern_fn):
    src = make_tif(pattern_fn(64, 64, 3), georef=False)
    with pytest.raises(NoGeoreferenceError, match="no georeferencing"):
        ingest({"image": [src]}, tmp_path / "s", "p", jobs=1)


@pytest.mark.parametrize("sidecars", ["tfw+prj", "tfw", "aux.xml", "statistics.aux.xml"])
def test_georeferencing_only_in_sidecars_is_refused_with_advice(tmp_path, make_tif,
                                                                  pattern_fn, sidecars):
    """A TIFF georeferenced by sidecars (a world file in capitals, as Windows tools write it,
    with or without a .prj; a PAM .aux.xml) in a folder with a space: the sources are read
    without sidecars, so the error names them and gives the gdal_translate command that
    embeds them, with quoted full paths. The advice works (GDAL's CreateCopy reads the
    world file / .aux.xml as gdal_translate does; -a_srs's CRS is set afterwards). An
    .aux.xml of statistics only is no georeferencing: the usual advice."""
    import shlex

    import rasterio
    import rasterio.shutil
    from affine import Affine
    from rasterio.crs import CRS

    folder = tmp_path / "my scans"
    folder.mkdir()
    src = make_tif(pattern_fn(64, 64, 3), georef=False, name="my scans/scan.tif")
    wkt = CRS.from_epsg(32635).to_wkt()
    tf = Affine(0.5, 0, 735000, 0, -0.5, 1483000)
    if sidecars.startswith("tfw"):
        (folder / "scan.TFW").write_text("0.5\n0\n0\n-0.5\n735000.25\n1483000.25\n")
    if sidecars == "tfw+prj":
        (folder / "scan.prj").write_text(CRS.from_epsg(32635).to_wkt(version="WKT1_ESRI"))
    if sidecars == "aux.xml":
        (folder / "scan.tif.aux.xml").write_text(
            f"<PAMDataset><SRS>{wkt.replace('<', '&lt;')}</SRS><GeoTransform>"
            f"{', '.join(map(str, tf.to_gdal()))}</GeoTransform></PAMDataset>")
    if sidecars == "statistics.aux.xml":
        (folder / "scan.tif.aux.xml").write_text(
            '<PAMDataset><PAMRasterBand band="1"><Metadata><MDI key="STATISTICS_MEAN">'
            "12</MDI></Metadata></PAMRasterBand></PAMDataset>")
    with pytest.raises(NoGeoreferenceError, match="no georeferencing") as ei:
        ingest({"image": [src]}, tmp_path / "s", "p", jobs=1)
    message = str(ei.value)
    if sidecars == "statistics.aux.xml":
        assert "sidecar" not in message and "gdal_translate -a_srs -a_ullr" in message
        return
    names = {"tfw+prj": "scan.TFW, scan.prj", "tfw": "scan.TFW", "aux.xml": "scan.tif.aux.xml"}
    assert f"does not read sidecar files such as {names[sidecars]}: embed them" in message
    command = message.split("`")[1]
    fixed = folder / "scan-georef.tif"
    srs = ["-a_srs", str(folder / "scan.prj")] if sidecars == "tfw+prj" else []
    assert shlex.split(command) == ["gdal_translate", *srs, str(src), str(fixed)]
    assert message.endswith("plus `-a_srs EPSG:<code>` for the CRS") == (sidecars == "tfw")
    with rasterio.Env():  # as gdal_translate: sidecars read
        rasterio.shutil.copy(src, fixed, driver="GTiff")
    with rasterio.open(fixed, "r+") as ds:
        assert not ds.transform.is_identity and (ds.crs is None) == (sidecars != "aux.xml")
        if ds.crs is None:
            ds.crs = CRS.from_wkt(wkt)  # -a_srs
    m = ingest({"image": [fixed]}, tmp_path / "s", "p", jobs=1)
    assert m["task_count"] > 0


def test_vrt_and_other_drivers_refused(tmp_path, make_tif):
    src = make_tif()
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="10" rasterYSize="10"><VRTRasterBand band="1">'
                   f'<SimpleSource><SourceFilename>{src}</SourceFilename></SimpleSource>'
                   f'</VRTRasterBand></VRTDataset>')
    with pytest.raises(UnsupportedDriverError, match="VRT"):
        ingest({"image": [vrt]}, tmp_path / "s", "p", jobs=1)
    disguised = tmp_path / "mosaic.tif"
    disguised.write_text(vrt.read_text())
    with pytest.raises(UnsupportedDriverError, match="VRT"):
        ingest({"image": [disguised]}, tmp_path / "s", "p", jobs=1)
    from PIL import Image
    png = tmp_path / "photo.tif"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, "PNG")
    with pytest.raises(UnsupportedDriverError, match="PNG image, not a GeoTIFF"):
        ingest({"image": [png]}, tmp_path / "s", "p", jobs=1)
    for bad in [f"/vsicurl/https://example.org/{src.name}", "https://example.org/a.tif",
                f"/vsizip/{tmp_path}/a.zip/a.tif"]:
        with pytest.raises(UnsupportedDriverError, match="not accepted"):
            ingest({"image": [bad]}, tmp_path / "s", "p", jobs=1)


@pytest.mark.parametrize("jobs", [1, 2])
def test_too_large(tmp_path, make_tif, pattern_fn, monkeypatch, jobs):
    """Refused before any file is hashed (a huge file is not read in full to be refused)."""
    from ingest import sources

    hashed: list = []
    real = sources.sha256_file
    monkeypatch.setattr(sources, "sha256_file", lambda p: hashed.append(p) or real(p))
    small, big = make_tif(pattern_fn(64, 64, 3)), make_tif()
    with pytest.raises(RasterTooLargeError, match=r"256 x 256 x 3 bands = 196,608 values"):
        ingest({"before": [small], "after": [big]}, tmp_path / "s", "p", jobs=jobs,
               max_pixels=100_000)
    assert hashed == []


def test_bad_bands(tmp_path, make_tif):
    src = make_tif()
    with pytest.raises(BandError, match="has 3 band"):
        ingest({"image": [src]}, tmp_path / "s", "p", jobs=1, bands=[4, 2, 1])
    with pytest.raises(BandError, match="1 band"):
        ingest({"image": [src]}, tmp_path / "s", "p", jobs=1, bands=[1, 2])


def test_no_overlap(tmp_path, make_tif):
    darfur = make_tif()
    bali = make_tif(crs="EPSG:32750", center_lonlat=(115.2, -8.6))
    with pytest.raises(NoOverlapError, match="'before'.*'after'.*do not overlap"):
        ingest({"before": [darfur], "after": [bali]}, tmp_path / "s", "p", jobs=1)
    aoi = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}
    with pytest.raises(NoOverlapError, match="area of interest"):
        ingest({"image": [darfur]}, tmp_path / "s", "p", jobs=1, aoi=aoi)
    assert not (tmp_path / "s").exists()  # nothing created


def test_bad_options(tmp_path, make_tif):
    src = make_tif()
    for kwargs, msg in [({"tile_size": 300}, "256 or 512"), ({"fmt": "gif"}, "--format"),
                        ({"zoom": 10, "min_zoom": 12}, "above the task zoom"),
                        ({"aoi": {"type": "Point", "coordinates": [0, 0]}}, "Polygon")]:
        with pytest.raises(OptionError, match=msg):
            ingest({"image": [src]}, tmp_path / "s", "p", jobs=1, **kwargs)
    with pytest.raises(OptionError, match="project"):
        ingest({"image": [src]}, tmp_path / "s", "Bad Name", jobs=1)
    with pytest.raises(OptionError, match="layer"):
        ingest({"Before!": [src]}, tmp_path / "s", "p", jobs=1)


def _truncated(tmp_path, make_tif, pattern_fn):
    src = make_tif(pattern_fn(512, 512, 3), name="cut.tif", tiled=False)
    raw = src.read_bytes()
    src.write_bytes(raw[: len(raw) // 2])
    return src


@pytest.mark.parametrize("jobs", [1, 2])
def test_truncated_file_fails_without_touching_manifest(tmp_path, make_tif, pattern_fn, jobs):
    good = make_tif()
    store = tmp_path / "s"
    ingest({"image": [good]}, store, "p", jobs=1)
    manifest = (store / "p" / "manifest.json").read_bytes()
    cut = _truncated(tmp_path, make_tif, pattern_fn)
    with pytest.raises(ReadError, match="cut.tif") as ei:
        ingest({"image": [cut]}, store, "p", jobs=jobs)
    assert ei.value.path == str(cut)
    assert (store / "p" / "manifest.json").read_bytes() == manifest
    with pytest.raises(ReadError):
        ingest({"image": [cut]}, tmp_path / "fresh", "p", jobs=1)
    assert not (tmp_path / "fresh" / "p" / "manifest.json").exists()


def test_unwritable_store(tmp_path, make_tif):
    blocker = tmp_path / "store"
    blocker.write_text("a file where the store should be")
    with pytest.raises(StoreNotWritableError, match="not writable"):
        ingest({"image": [make_tif()]}, blocker, "p", jobs=1)


def test_errors_share_one_root():
    for cls in (NotARasterError, NoGeoreferenceError, UnsupportedDriverError,
                RasterTooLargeError, NoOverlapError, ReadError, StoreNotWritableError,
                SourceNotFoundError, BandError, OptionError):
        assert issubclass(cls, IngestError)
    import pickle
    e = pickle.loads(pickle.dumps(ReadError("x.tif: broken", "x.tif")))
    assert e.path == "x.tif" and str(e) == "x.tif: broken"


@pytest.mark.parametrize("case", ["not_raster", "vrt", "too_large", "truncated", "no_overlap",
                                  "store"])
def test_cli_errors_are_one_line_and_nonzero(tmp_path, make_tif, pattern_fn, case):
    from crowdsight.cli import main

    store = tmp_path / "store"
    args = ["ingest", "--project", "p", "--quiet", "--jobs", "1"]
    if case == "not_raster":
        f = tmp_path / "x.tif"
        f.write_text("hello")
        args += ["--store", str(store), str(f)]
    elif case == "vrt":
        f = tmp_path / "x.vrt"
        f.write_text("<VRTDataset/>")
        args += ["--store", str(store), str(f)]
    elif case == "too_large":
        args += ["--store", str(store), "--max-pixels", "10", str(make_tif())]
    elif case == "truncated":
        args += ["--store", str(store), str(_truncated(tmp_path, make_tif, pattern_fn))]
    elif case == "no_overlap":
        args += ["--store", str(store), "--before", str(make_tif()), "--after",
                 str(make_tif(crs="EPSG:32750", center_lonlat=(115.2, -8.6)))]
    else:
        store.write_text("file")
        args += ["--store", str(store), str(make_tif())]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "store" / "p" / "manifest.json").exists() if case != "store" else True


def test_pair_with_no_common_tile_inside_aoi(tmp_path, make_tif, pattern_fn):
    from rasterio.warp import transform_bounds

    left = make_tif(pattern_fn(512, 512, 3))
    right = make_tif(pattern_fn(512, 512, 3), center_lonlat=(24.3015, 13.4))  # ~160 m east
    with __import__("rasterio").open(left) as a, __import__("rasterio").open(right) as b:
        lw, ls, le, ln = transform_bounds(a.crs, "EPSG:4326", *a.bounds)
        rw, rs, re_, rn = transform_bounds(b.crs, "EPSG:4326", *b.bounds)
    assert rw < le  # the footprints overlap...
    d = 2e-5

    def square(x, y):
        return [[[x - d, y - d], [x + d, y - d], [x + d, y + d], [x - d, y + d], [x - d, y - d]]]

    mid = (ls + ln) / 2
    aoi = {"type": "MultiPolygon",   # ...but the AOI only keeps a bit of each that is not shared
           "coordinates": [square(lw + 5 * d, mid), square(re_ - 5 * d, mid)]}
    with pytest.raises(NoOverlapError, match="share no z19 tile inside the area of interest"):
        ingest({"before": [left], "after": [right]}, tmp_path / "s", "p", jobs=1, aoi=aoi)


def test_concurrent_ingest_of_same_project_is_refused(tmp_path, make_tif):
    import fcntl
    import os

    from ingest.errors import BusyError

    src = make_tif()
    lock = tmp_path / "s" / "p" / ".crowdsight" / "ingest.lock"
    lock.parent.mkdir(parents=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a running ingest holds it
        with pytest.raises(BusyError, match="another ingest of project 'p'"):
            ingest({"image": [src]}, tmp_path / "s", "p", jobs=1)
    finally:
        os.close(fd)
    assert ingest({"image": [src]}, tmp_path / "s", "p", jobs=1)["task_count"] > 0


@pytest.mark.parametrize("case", ["nothing", "crs_only", "gcps_only"])
def test_no_georeference_is_clean_under_warnings_as_errors(tmp_path, make_tif, pattern_fn, case):
    """rasterio's NotGeoreferencedWarning must never escape open_raster (the project runs with
    warnings as errors): the user gets NoGeoreferenceError with its advice instead."""
    import warnings

    import rasterio
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS

    from ingest.sources import open_raster

    from rasterio.errors import NotGeoreferencedWarning

    src = make_tif(pattern_fn(64, 64, 3), georef=False)
    with warnings.catch_warnings():  # making the fixture warns too
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(src, "r+") as ds:
            if case == "crs_only":  # a CRS but the identity geotransform
                ds.crs = CRS.from_epsg(32635)
            elif case == "gcps_only":
                gcps = [GroundControlPoint(row=r, col=c, x=24.3 + c * 1e-5, y=13.4 - r * 1e-5)
                        for r, c in ((0, 0), (0, 63), (63, 0), (63, 63))]
                ds.gcps = (gcps, CRS.from_epsg(4326))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as pyproject's filterwarnings, made explicit
        with pytest.raises(NoGeoreferenceError, match="no georeferencing") as ei:
            open_raster(src, 10**9)
        if case == "gcps_only":
            assert "gdalwarp" in str(ei.value)
        with pytest.raises(NoGeoreferenceError):
            ingest({"image": [src]}, tmp_path / "s", "p", jobs=1)


def test_worker_errors_leave_without_their_chained_exceptions(monkeypatch):
    """What a worker raises crosses the process boundary without __cause__/__context__ (a
    rasterio error there cannot be unpickled once dask's tblib support is installed)."""
    from ingest import render

    def failing(job):
        try:
            raise RuntimeError("GDAL said no")
        except RuntimeError as exc:
            raise ReadError("x.tif: read failed", "x.tif") from exc

    monkeypatch.setattr(render, "render_block", failing)
    with pytest.raises(ReadError, match="x.tif: read failed") as ei:
        render.render_block_in_worker(None)
    assert ei.value.__cause__ is None and ei.value.__context__ is None
    assert ei.value.path == "x.tif"


def test_truncated_file_in_a_pool_after_dask_was_imported(tmp_path, make_tif, pattern_fn,
                                                          run_script):
    """Importing distributed installs tblib's exception pickling for every class; a pool
    worker's ReadError (caused by a rasterio error) then used to kill the pool's result
    thread, and the ingest hung. Run in a subprocess (the patch is process-wide)."""
    pytest.importorskip("distributed")
    cut = _truncated(tmp_path, make_tif, pattern_fn)
    code = (
        "import sys, rasterio, ingest.pipeline as p, ingest.errors as e\n"
        "import distributed  # noqa: F401  (installs tblib pickling for existing classes)\n"
        "if __name__ == '__main__':\n"
        "    try:\n"
        f"        p.ingest({{'image': [{str(cut)!r}]}}, {str(tmp_path / 's')!r}, 'p', jobs=2,\n"
        "                 block=2)\n"
        "    except e.ReadError as exc:\n"
        "        print('ReadError', exc.path)\n"
    )
    out = run_script(code)
    assert out.stdout.strip() == f"ReadError {cut}", out.stderr[-2000:]
