"""crowdsight ingest / tiles pmtiles through click's CliRunner."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from pmtiles.reader import MmapSource, Reader

from crowdsight.cli import main
from ingest import generate_scene


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return generate_scene(tmp_path_factory.mktemp("scene"), size=256, seed=2)


def test_before_after_with_pmtiles(tmp_path, scene):
    store = tmp_path / "store"
    res = CliRunner().invoke(main, ["ingest", "--project", "darfur", "--before", str(scene.before),
                                    "--after", str(scene.after), "--store", str(store),
                                    "--jobs", "1", "--pmtiles"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("darfur: ") and "with all layers" in lines[0]
    assert "tiles/s" in lines[0] and str(store / "darfur" / "manifest.json") in lines[0]
    m = json.loads((store / "darfur" / "manifest.json").read_text())
    assert set(m["layers"]) == {"before", "after"}
    for layer in ("before", "after"):
        pm = store / "darfur" / f"{layer}.pmtiles"
        with open(pm, "rb") as f:
            r = Reader(MmapSource(f))
            t = m["tasks"][0]
            if layer in t["layers"]:
                assert r.get(t["z"], t["x"], t["y"]) == \
                    (store / "darfur" / layer / str(t["z"]) / str(t["x"]) /
                     f"{t['y']}.jpg").read_bytes()


def test_positional_files_glob_and_env_store(tmp_path, scene, monkeypatch):
    monkeypatch.setenv("CROWDSIGHT_TILE_STORE", str(tmp_path / "envstore"))
    pattern = str(scene.before.parent / "bef*.tif")
    res = CliRunner().invoke(main, ["ingest", "--project", "one", "--quiet", "--format", "png",
                                    "--zoom", "18", "--min-zoom", "17", pattern])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "envstore" / "one" / "manifest.json").read_text())
    assert list(m["layers"]) == ["image"] and m["task_zoom"] == 18 and m["min_zoom"] == 17
    assert m["layers"]["image"]["ext"] == "png"


def test_named_layers_and_bands(tmp_path, scene):
    res = CliRunner().invoke(main, ["ingest", "--project", "named", "--quiet", "--store",
                                    str(tmp_path), "--layer", f"rgb={scene.before}",
                                    "--layer", f"post={scene.after}", "--bands", "3,2,1"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "named" / "manifest.json").read_text())
    assert set(m["layers"]) == {"rgb", "post"} and m["layers"]["rgb"]["bands"] == [3, 2, 1]


@pytest.mark.parametrize("args,msg", [
    (["--before", "a.tif", "b.tif", "--after", "c.tif"], "extra file arguments"),
    (["--before", "a.tif"], "go together"),
    ([], "no input"),
    (["--layer", "noequals"], "NAME=FILE"),
    (["--bands", "r,g,b", "x.tif"], "band numbers"),
    (["--before", "/nonexistent/*.tif", "--after", "x.tif"], "no files match"),
])
def test_usage_errors(tmp_path, args, msg):
    res = CliRunner().invoke(main, ["ingest", "--project", "p", "--store", str(tmp_path)] + args)
    assert res.exit_code == 2
    assert msg in res.output


def test_tiles_pmtiles_command(tmp_path, scene):
    r = CliRunner()
    assert r.invoke(main, ["ingest", "--project", "p", "--quiet", "--store", str(tmp_path),
                           "--jobs", "1", str(scene.before)]).exit_code == 0
    out = tmp_path / "x.pmtiles"
    res = r.invoke(main, ["tiles", "pmtiles", "--project", "p", "--layer", "image", "--store",
                          str(tmp_path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "jpg tiles" in res.stdout and out.stat().st_size > 0
    res = r.invoke(main, ["tiles", "pmtiles", "--project", "p", "--layer", "nope", "--store",
                          str(tmp_path), "--out", str(out)])
    assert res.exit_code == 1 and "no tiles" in res.output


def test_progress_on_stderr_summary_on_stdout(tmp_path, scene):
    res = CliRunner().invoke(main, ["ingest", "--project", "p", "--store", str(tmp_path),
                                    "--jobs", "1", str(scene.before)])
    assert res.exit_code == 0
    assert "tiles/s" in res.stderr          # the rich bar
    assert res.stdout.count("\n") == 1      # only the summary
