"""Resumable, idempotent ingests: skip finished work only when sources and options match."""

from __future__ import annotations

import pytest

from ingest import ingest


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in root.glob("p/image/*/*/*.*")}


@pytest.fixture
def src(make_tif, pattern_fn):
    return make_tif(pattern_fn(700, 700, 3))


def test_rerun_skips_everything_and_changes_nothing(tmp_path, src):
    store = tmp_path / "s"
    first = ingest({"image": [src]}, store, "p", jobs=1, block=2)
    before = {p: p.stat().st_mtime_ns for p in store.glob("p/image/*/*/*.jpg")}
    again = ingest({"image": [src]}, store, "p", jobs=1, block=2)
    st = again["ingest_stats"]
    assert st["tiles_written"] == 0
    assert st["tiles_skipped_existing"] == first["layers"]["image"]["tile_count"]
    assert st["blocks_resumed"] > 0
    assert {p: p.stat().st_mtime_ns for p in store.glob("p/image/*/*/*.jpg")} == before
    assert again["tasks"] == first["tasks"]


def test_deleted_tiles_are_restored(tmp_path, src):
    store = tmp_path / "s"
    m = ingest({"image": [src]}, store, "p", jobs=1, block=2)
    want = _files(store)
    z = m["task_zoom"]
    victims = sorted(store.glob(f"p/image/{z}/*/*.jpg"))[::3] + \
        sorted(store.glob(f"p/image/{m['min_zoom']}/*/*.jpg"))
    for v in victims:
        v.unlink()
    again = ingest({"image": [src]}, store, "p", jobs=1, block=2)
    assert _files(store) == want
    assert 0 < again["ingest_stats"]["tiles_written"] < m["layers"]["image"]["tile_count"]


def test_interrupted_ingest_completes_on_rerun(tmp_path, src):
    clean = ingest({"image": [src]}, tmp_path / "clean", "p", jobs=1, block=2)
    store = tmp_path / "s"
    calls = []

    def stop_after_two_blocks(done, total, stage):
        if total and done:
            calls.append(done)
            if len(calls) == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest({"image": [src]}, store, "p", jobs=1, block=2, progress=stop_after_two_blocks)
    assert not (store / "p" / "manifest.json").exists()
    partial = _files(store)
    assert 0 < len(partial) < clean["layers"]["image"]["tile_count"]
    done = ingest({"image": [src]}, store, "p", jobs=1, block=2)
    assert done["ingest_stats"]["blocks_resumed"] == 2
    assert _files(store) == _files(tmp_path / "clean")
    assert done["tasks"] == clean["tasks"]


def test_changed_options_rerender_and_prune(tmp_path, src):
    store = tmp_path / "s"
    m = ingest({"image": [src]}, store, "p", jobs=1, block=2)
    n = m["layers"]["image"]["tile_count"]
    q = ingest({"image": [src]}, store, "p", jobs=1, block=2, quality=40)
    assert q["ingest_stats"]["tiles_written"] == n
    assert q["ingest_stats"]["tiles_skipped_existing"] == 0
    png = ingest({"image": [src]}, store, "p", jobs=1, block=2, fmt="png")
    assert png["ingest_stats"]["tiles_written"] == n
    assert not list(store.glob("p/image/*/*/*.jpg"))  # old format pruned
    assert len(list(store.glob("p/image/*/*/*.png"))) == n
    lower = ingest({"image": [src]}, store, "p", jobs=1, block=2, fmt="png",
                   min_zoom=m["task_zoom"] - 1)
    assert {int(z) for z in lower["layers"]["image"]["tile_counts"]} == \
        {m["task_zoom"], m["task_zoom"] - 1}
    assert sorted(int(p.name) for p in (store / "p" / "image").iterdir()
                  if p.name.isdigit()) == [m["task_zoom"] - 1, m["task_zoom"]]


def test_changed_source_rerenders(tmp_path, make_tif, pattern_fn):
    store = tmp_path / "s"
    path = make_tif(pattern_fn(300, 300, 3), name="a.tif")
    m = ingest({"image": [path]}, store, "p", jobs=1)
    make_tif(pattern_fn(300, 300, 3)[::-1].copy(), name="a.tif")  # same name, new pixels
    m2 = ingest({"image": [path]}, store, "p", jobs=1)
    assert m2["layers"]["image"]["sources"][0]["sha256"] != \
        m["layers"]["image"]["sources"][0]["sha256"]
    assert m2["ingest_stats"]["tiles_skipped_existing"] == 0
    assert m2["ingest_stats"]["tiles_written"] == m2["layers"]["image"]["tile_count"]


def test_stale_temp_files_are_cleaned(tmp_path, src):
    store = tmp_path / "s"
    m = ingest({"image": [src]}, store, "p", jobs=1)
    t = m["tasks"][0]
    stale = store / "p" / "image" / str(t["z"]) / str(t["x"]) / f".{t['y']}.jpg.abc.tmp"
    stale.write_bytes(b"half a tile")
    ingest({"image": [src]}, store, "p", jobs=1)
    assert not stale.exists()


def test_unchanged_sources_are_not_rehashed(tmp_path, src, monkeypatch):
    import ingest.sources as sources

    calls = []
    real = sources.sha256_file
    monkeypatch.setattr(sources, "sha256_file", lambda p: calls.append(p) or real(p))
    store = tmp_path / "s"
    m1 = ingest({"image": [src]}, store, "p", jobs=1)
    assert len(calls) == 1
    m2 = ingest({"image": [src]}, store, "p", jobs=1)
    assert len(calls) == 1  # served from {store}/p/.crowdsight/sha256-cache.json
    assert m1["layers"]["image"]["sources"] == m2["layers"]["image"]["sources"]
    import os
    os.utime(src, ns=(1, 1))  # touched: hashed again
    ingest({"image": [src]}, store, "p", jobs=1)
    assert len(calls) == 2


def test_interrupt_with_a_pool_leaves_no_workers_and_resumes(tmp_path, src):
    import multiprocessing

    def stop(done, total, stage):
        if total and done:
            raise KeyboardInterrupt

    store = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        ingest({"image": [src]}, store, "p", jobs=2, block=2, progress=stop)
    assert multiprocessing.active_children() == []
    done = ingest({"image": [src]}, store, "p", jobs=2, block=2)
    assert done["ingest_stats"]["blocks_resumed"] >= 1
    assert done["layers"]["image"]["tile_count"] == len(list(store.glob("p/image/*/*/*.jpg")))
