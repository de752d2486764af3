"""--scheduler: the same block function on a dask.distributed cluster."""

from __future__ import annotations

import pytest

from ingest import ingest

distributed = pytest.importorskip("distributed")


def test_local_cluster_matches_in_process(tmp_path, make_tif, pattern_fn):
    src = make_tif(pattern_fn(600, 600, 3))
    local = ingest({"image": [src]}, tmp_path / "a", "p", fmt="png", jobs=1, block=2)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        remote = ingest({"image": [src]}, tmp_path / "b", "p", fmt="png", block=2,
                        scheduler=cluster.scheduler_address)
    assert remote["ingest_stats"]["scheduler"] == cluster.scheduler_address
    assert remote["tasks"] == local["tasks"]
    fa = sorted((tmp_path / "a").glob("p/image/*/*/*.png"))
    fb = sorted((tmp_path / "b").glob("p/image/*/*/*.png"))
    assert [p.relative_to(tmp_path / "a") for p in fa] == [p.relative_to(tmp_path / "b")
                                                          for p in fb]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(fa, fb))


def test_unreachable_scheduler_is_a_clear_error(tmp_path, make_tif):
    from ingest.errors import OptionError

    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(OptionError, match="cannot connect"):
            ingest({"image": [make_tif()]}, tmp_path, "p", scheduler="tcp://127.0.0.1:9")
