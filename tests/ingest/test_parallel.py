"""Local parallel ingests: helper threads (default) and forked worker processes give the
same tiles as an in-process run; errors, interrupts and dead workers end the run cleanly."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

import ingest.pipeline as pipeline
import ingest.render as render
from ingest import ingest
from ingest.errors import OptionError, StoreNotWritableError


def _tiles(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in root.glob("p/*/*/*/*.*")}


@pytest.fixture
def mosaic(two_file_mosaic, pattern_fn):
    """Two side-by-side files: blocks read one or both, so a tile may need two warps."""
    left, right, _ = two_file_mosaic(pattern_fn(256, 512, 3))
    return [left, right]


@pytest.mark.parametrize("workers", ["threads", "processes"])
@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_parallel_runs_give_byte_identical_tiles(tmp_path, mosaic, workers, fmt):
    one = ingest({"image": mosaic}, tmp_path / "one", "p", fmt=fmt, jobs=1, block=2, zoom=19)
    two = ingest({"image": mosaic}, tmp_path / "two", "p", fmt=fmt, jobs=2, block=2, zoom=19,
                 workers=workers)
    a, b = _tiles(tmp_path / "one"), _tiles(tmp_path / "two")
    assert len(a) > 8 and a == b
    assert one["tasks"] == two["tasks"]
    assert one["layers"]["image"]["tile_counts"] == two["layers"]["image"]["tile_counts"]


def test_small_runs_use_threads_longer_runs_processes(tmp_path, mosaic, monkeypatch):
    used = []
    monkeypatch.setattr(pipeline, "_run_threads",
                        lambda jobs, n, *hook: used.append(("t", len(jobs))) or iter(()))
    monkeypatch.setattr(pipeline, "_run_processes",
                        lambda jobs, n, *shared: used.append(("p", len(jobs))) or iter(()))
    for block in (8, 1):  # the runners are stubs: no tile is rendered
        ingest({"image": mosaic}, tmp_path / str(block), "p", jobs=2, block=block, zoom=19,
               min_zoom=19)
    (kind_few, n_few), (kind_many, n_many) = used
    assert n_few <= 2 * pipeline.THREADS_UP_TO_BLOCKS_PER_JOB and kind_few == "t"
    assert n_many > 2 * pipeline.THREADS_UP_TO_BLOCKS_PER_JOB and kind_many == "p"


def test_threads_share_the_tiles_of_a_block(tmp_path, make_tif, pattern_fn, monkeypatch):
    """One big block and two threads: both threads encode tiles of it (the tail of a run is
    balanced tile by tile, not block by block)."""
    src = make_tif(pattern_fn(600, 600, 3))
    who: dict[str, int] = {}
    real = render.BlockWork.write_tile

    def spy(self, task):
        name = threading.current_thread().name
        who[name] = who.get(name, 0) + 1
        threading.Event().wait(0.002)  # leave the other thread time to take a tile
        return real(self, task)

    monkeypatch.setattr(render.BlockWork, "write_tile", spy)
    m = ingest({"image": [src]}, tmp_path, "p", fmt="png", jobs=2, block=8)
    assert 0 < sum(who.values()) <= m["ingest_stats"]["tiles_written"]
    assert len(who) == 2, who


def test_error_in_a_helper_thread_stops_the_run(tmp_path, mosaic, monkeypatch):
    real = render.BlockWork.write_tile
    before = threading.active_count()

    def failing(self, task):
        if threading.current_thread() is not threading.main_thread():
            raise StoreNotWritableError("disk full (test)")
        return real(self, task)

    monkeypatch.setattr(render.BlockWork, "write_tile", failing)
    with pytest.raises(StoreNotWritableError, match="disk full"):
        ingest({"image": mosaic}, tmp_path, "p", fmt="png", jobs=2, block=1, zoom=19,
               workers="threads")
    assert threading.active_count() == before
    assert not (tmp_path / "p" / "manifest.json").exists()


def test_interrupt_with_threads_joins_them_and_resumes(tmp_path, mosaic):
    before = threading.active_count()

    def stop(done, total, stage):
        if total and done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest({"image": mosaic}, tmp_path, "p", jobs=2, block=1, zoom=19, progress=stop,
               workers="threads")
    assert threading.active_count() == before
    done = ingest({"image": mosaic}, tmp_path, "p", jobs=2, block=1, zoom=19, workers="threads")
    assert done["ingest_stats"]["blocks_resumed"] >= 1


def _in_a_subprocess(run_script, tmp_path, mosaic, body: str) -> str:
    """Run ``body`` in a fresh interpreter (single-threaded, so workers are forked and inherit
    its monkeypatching; pytest-xdist's own threads would make the pool use a forkserver)."""
    code = (
        "import os, sys\n"
        "import time\n"
        "import ingest.pipeline as p, ingest.errors as e\n"
        "real = p.render_block\n"
        "def slow(job):  # so that the worker surely claims a block too\n"
        "    time.sleep(0.05)\n"
        "    return real(job)\n"
        "p.render_block = slow\n"
        f"{body}\n"
        "if __name__ == '__main__':\n"
        "    try:\n"
        f"        p.ingest({{'image': {[str(m) for m in mosaic]!r}}}, {str(tmp_path / 's')!r},"
        " 'p', jobs=2, block=1, zoom=19, workers='processes')\n"
        "        print('no error')\n"
        "    except e.IngestError as exc:\n"
        "        print(type(exc).__name__, exc)\n"
    )
    out = run_script(code)
    return out.stdout.strip() + out.stderr[-2000:]


def test_a_worker_process_that_dies_fails_the_ingest(tmp_path, mosaic, run_script):
    """Without the liveness check the parent would wait for the lost block forever."""
    out = _in_a_subprocess(run_script, tmp_path, mosaic,
                           "p.render_block_in_worker = lambda job: os._exit(3)")
    assert out.startswith("IngestError") and "ended early" in out, out
    assert not (tmp_path / "s" / "p" / "manifest.json").exists()


def test_error_in_a_worker_process_is_raised_in_the_parent(tmp_path, mosaic, run_script):
    out = _in_a_subprocess(run_script, tmp_path, mosaic,
                           "def failing(job):\n"
                           "    raise e.StoreNotWritableError('no space (test)')\n"
                           "p.render_block_in_worker = failing")
    assert out.startswith("StoreNotWritableError no space (test)"), out


def test_source_files_are_closed_after_the_ingest(tmp_path, mosaic):
    ingest({"image": mosaic}, tmp_path, "p", jobs=2, block=1, zoom=19)
    ingest({"image": mosaic}, tmp_path / "b", "p", jobs=1, block=1, zoom=19)
    targets = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
    assert not targets & {str(p) for p in mosaic}


def test_open_sources_reuses_and_closes_datasets(make_tif):
    from ingest.sources import describe

    info = describe(make_tif(), 10**9)
    with render.open_sources():
        a, close_a = render._open_source(info)
        b, close_b = render._open_source(info)
        assert a is b and not close_a and not close_b
    assert a.closed
    c, close_c = render._open_source(info)  # outside: opened for one use
    assert close_c
    c.close()


def test_shared_sources_lend_one_thread_at_a_time(make_tif):
    from ingest.sources import describe

    with render.SharedSources(limit=1) as shared:
        info = describe(make_tif(), 10**9, keep=shared.keep)
        other = make_tif()
        assert not shared.keep(str(other), object())  # full: the caller closes its own
        ds = shared.borrow(info.path)
        assert ds is not None and not ds.closed
        assert shared.borrow(info.path) is None  # lent out: a second thread opens its own
        with render.open_sources(shared), render._source_dataset(info) as own:
            assert own is not ds
        shared.give_back(info.path)
        assert shared.borrow(info.path) is ds
        shared.give_back(info.path)
        with render.open_sources(shared):
            with render._source_dataset(info) as lent:
                assert lent is ds
            assert shared.borrow(info.path) is ds  # given back after the read
        shared.give_back(info.path)
    assert ds.closed and shared.borrow(info.path) is None


def test_shared_sources_close_a_lent_dataset_when_it_is_given_back(make_tif):
    """A thread still reading when the pool closes (an interrupt while joining the helpers)
    keeps its dataset open until it gives it back; giving back raises nothing."""
    from ingest.sources import describe

    shared = render.SharedSources()
    lent_info = describe(make_tif(), 10**9, keep=shared.keep)
    idle_info = describe(make_tif(), 10**9, keep=shared.keep)
    lent, idle = shared.borrow(lent_info.path), shared.borrow(idle_info.path)
    shared.give_back(idle_info.path)
    shared.close()
    assert idle.closed and not lent.closed
    assert lent.read(1, window=((0, 1), (0, 1))).shape == (1, 1)
    shared.give_back(lent_info.path)
    assert lent.closed and shared.borrow(lent_info.path) is None


@pytest.mark.parametrize("run", ["fresh", "resumed"])
def test_render_threads_never_open_a_source_or_touch_proj(tmp_path, mosaic, monkeypatch, run):
    """The helper threads of a threaded run read the datasets the description opened and get
    every coordinate transformation planned by the ingesting thread: a thread's first PROJ
    use holds the GIL for 10-20 ms (see SharedSources). A helper opens a file of its own
    only when the shared dataset is lent to another thread at that moment: a race (the
    threads may or may not read one file at once), so the test counts the misses. The
    ingesting thread plans its second block only once a helper has read a block. A resumed
    run (all but one block to render again) plans the blocks it renders in the same way."""
    import threading

    import rasterio.warp

    if run == "resumed":
        ingest({"image": mosaic}, tmp_path, "p", jobs=1, block=2, zoom=19)
        records = sorted(render.block_dir(tmp_path, "p", "image").glob("*.json"))
        assert len(records) >= 4
        for record in records[1:]:
            record.unlink()
    calls = []

    def on_main() -> bool:
        return threading.current_thread() is threading.main_thread()

    for owner, name in ((render.rasterio, "open"), (render, "warp_transform"),
                        (rasterio.warp, "transform")):
        real = getattr(owner, name)

        def spy(*a, __real=real, __name=name, **k):
            calls.append((__name, on_main()))
            return __real(*a, **k)

        monkeypatch.setattr(owner, name, spy)
    real_borrow, real_plan = render.SharedSources.borrow, pipeline.plan_block
    helper_read, planned = threading.Event(), []

    def borrow(self, path):
        ds = real_borrow(self, path)
        calls.append(("lent" if ds is not None else "missed", on_main()))
        if not on_main():
            helper_read.set()
        return ds

    def plan_block(*a, **k):  # the second plan waits until a helper has read a block
        planned.append(1)
        if len(planned) == 2:
            helper_read.wait(60)
        return real_plan(*a, **k)

    monkeypatch.setattr(render.SharedSources, "borrow", borrow)
    monkeypatch.setattr(pipeline, "plan_block", plan_block)
    m = ingest({"image": mosaic}, tmp_path, "p", jobs=2, block=2, zoom=19, workers="threads")
    assert m["layers"]["image"]["tile_count"] > 4
    helper = [name for name, main in calls if not main]
    assert len(planned) > 2 and "lent" in helper, calls  # a helper read a shared dataset
    assert not {"transform", "warp_transform"} & set(helper), calls
    assert helper.count("open") <= helper.count("missed"), calls


def test_all_valid_sources_skip_the_mask_read(tmp_path, make_tif, monkeypatch):
    """GDAL reports one list of mask flags per band: an all-valid file needs no mask read."""
    import rasterio.io

    def no_mask(*a, **k):
        raise AssertionError("dataset_mask read for an all-valid file")

    monkeypatch.setattr(rasterio.io.DatasetReader, "dataset_mask", no_mask)
    m = ingest({"image": [make_tif()]}, tmp_path, "p", fmt="png", jobs=1)
    assert m["task_count"] > 0


def test_block_records_store_the_top_raw_and_old_png_tops_still_resume(tmp_path, make_tif,
                                                                       pattern_fn):
    from PIL import Image

    src = make_tif(pattern_fn(700, 700, 3))
    store = tmp_path / "s"
    first = ingest({"image": [src]}, store, "p", fmt="png", jobs=1, block=2)
    blocks = store / "p" / ".crowdsight" / "image" / "blocks"
    tops = sorted(blocks.glob("*.npy"))
    assert tops and not list(blocks.glob("*.png"))
    # a record from before this format: the top as PNG
    top = np.load(tops[0])
    tops[0].unlink()
    Image.fromarray(top).save(tops[0].with_suffix(".png"))
    rec = tops[0].with_suffix(".json")
    body = json.loads(rec.read_text())
    body["top"] = tops[0].with_suffix(".png").name
    rec.write_text(json.dumps(body))
    again = ingest({"image": [src]}, store, "p", fmt="png", jobs=1, block=2)
    assert again["ingest_stats"]["tiles_written"] == 0
    assert again["ingest_stats"]["blocks_resumed"] == len(list(blocks.glob("*.json")))
    assert again["tasks"] == first["tasks"]


def test_an_unknown_workers_choice_is_refused(tmp_path, mosaic):
    with pytest.raises(OptionError, match="workers='fibres'"):
        ingest({"image": mosaic}, tmp_path, "p", jobs=2, workers="fibres")


def test_threads_build_the_pyramid_above_the_blocks_before_their_last_tiles(tmp_path, mosaic,
                                                                             monkeypatch):
    """With threads, a block's top tile reaches the pyramid as soon as the block is rendered,
    so the tiles above the blocks are written while the last block's tiles still encode (not
    in a serial tail after them); each block's record still comes after all of its tiles."""
    from tiles.store import TileStore

    events: list[tuple[str, object]] = []  # (what, which block's record: None above them)
    real_write, real_save, real_store = (render.BlockWork.write_tile, render._save_record,
                                         TileStore.write)

    def slow_tile(self, task):
        threading.Event().wait(0.01)  # the last block's tiles take a while
        real_write(self, task)
        events.append(("tile", self.record))

    def above(self, *args, **kwargs):  # the pyramid above the blocks writes through here
        real_store(self, *args, **kwargs)
        events.append(("above", None))

    monkeypatch.setattr(render.BlockWork, "write_tile", slow_tile)
    monkeypatch.setattr(render, "_save_record", lambda record, res: events.append(
        ("record", record)) or real_save(record, res))
    monkeypatch.setattr(TileStore, "write", above)
    ingest({"image": mosaic}, tmp_path, "p", jobs=2, block=2, zoom=19, workers="threads")
    kinds = [k for k, _ in events]
    assert "above" in kinds, kinds
    last_tile = max(i for i, k in enumerate(kinds) if k == "tile")
    assert kinds.index("above") < last_tile, kinds
    # (the pyramid above may finish after the last record: it is built on this thread while
    # a helper thread may write a block's last tile and its record)
    records = {b: i for i, (k, b) in enumerate(events) if k == "record"}
    tiles_of = {b for k, b in events if k == "tile"}
    assert tiles_of and tiles_of <= set(records), (tiles_of, records)
    for i, (k, b) in enumerate(events):
        if k == "tile":
            assert i < records[b], (b, kinds)
