"""``crowdsight demo`` comes up on a free port and serves all three pages with the printed URLs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

START_TIMEOUT_S = 240  # a bound so a hang fails the test; not a performance threshold


# 512 px (256 m): a 256 px scene is almost all edge tiles, which the manifest loader now skips
# as nearly empty (min coverage 0.5), leaving only the gold/tutorial tiles and nothing to label.
def _run_demo(data_dir: Path, *extra: str) -> tuple[subprocess.Popen, list[str], list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROWDSIGHT_")}
    cmd = [sys.executable, "-m", "crowdsight", "demo", "--data-dir", str(data_dir),
           "--size", "512", "--simulate", "4", "--port", "0", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    out: list[str] = []
    err: list[str] = []

    def pump(stream, sink):  # type: ignore[no-untyped-def]
        for line in stream:
            sink.append(line.rstrip("\n"))

    proc.pumps = []  # type: ignore[attr-defined]
    for stream, sink in ((proc.stdout, out), (proc.stderr, err)):
        t = threading.Thread(target=pump, args=(stream, sink), daemon=True)
        t.start()
        proc.pumps.append(t)  # type: ignore[attr-defined]
    return proc, out, err


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for t in getattr(proc, "pumps", []):
        t.join(timeout=10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@pytest.mark.slow
def test_demo_comes_up_and_serves_all_three_pages(tmp_path):
    proc, out, err = _run_demo(tmp_path / "data")
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(out) < 3 and time.monotonic() < deadline:
            assert proc.poll() is None, "demo exited early:\n" + "\n".join(err)
            time.sleep(0.2)
        assert len(out) >= 3, "no URLs printed:\n" + "\n".join(err)
        urls = dict(line.split(":", 1) for line in out[:3])
        volunteer = urls["volunteer page"].strip()
        analyst = urls["analyst dashboard"].strip()
        researcher = urls["researcher pages"].strip()
        assert re.match(r"http://localhost:\d+/$", volunteer)
        token = re.search(r"token=([\w-]+)", researcher).group(1)
        assert token in analyst
        with httpx.Client(timeout=30) as c:
            for url in (volunteer, analyst, researcher):
                r = c.get(url.split("#")[0])
                assert r.status_code == 200 and "<html" in r.text.lower(), url
            base = volunteer.rstrip("/")
            auth = {"Authorization": f"Bearer {token}"}
            view = c.get(f"{base}/api/projects/demo/researcher", headers=auth).json()
            assert view["status"] == "live" and view["type"] == "compare"
            assert view["progress"]["tiles"] > 0 and view["progress"]["labels"] > 0
            gold = c.get(f"{base}/api/projects/demo/researcher/tiles?which=gold",
                         headers=auth).json()["tiles"]
            assert gold and all(t["gold_explanation"] for t in gold)
            # the volunteer side works: a session and a task from the demo project
            s = c.post(f"{base}/api/session", json={})
            assert s.status_code == 201
            projects = c.get(f"{base}/api/projects").json()["projects"]
            assert [p["slug"] for p in projects] == ["demo"]
            summary = c.get(f"{base}/api/analyst/projects/demo", headers=auth)
            assert summary.status_code == 200
        assert any("setup took" in line for line in err)
        # rich bars on stderr (their final state, as stderr is a pipe), no plain counter lines
        assert any(re.match(r"tiles\s.*\b(\d+)/\1\b", line) for line in err), err
        assert not any(line.startswith("[demo] scene:") for line in err)
    finally:
        _stop(proc)

    # idempotent: a second run reuses the data directory (no new volunteers, same tiles)
    again = subprocess.run(
        [sys.executable, "-m", "crowdsight", "demo", "--data-dir", str(tmp_path / "data"),
         "--size", "512", "--simulate", "4", "--no-serve"],
        capture_output=True, text=True, timeout=START_TIMEOUT_S,
        env={k: v for k, v in os.environ.items() if not k.startswith("CROWDSIGHT_")})
    assert again.returncode == 0, again.stderr
    assert token in again.stdout
    assert "simulated volunteers added" not in again.stderr


def test_setup_demo_gold_follows_the_scene_truth_and_is_idempotent(tmp_path):
    """In process: gold/tutorial answers agree with the truth points inside each tile's
    bounds; simulated volunteers label through the labeler; a second run changes nothing."""
    import json

    import sqlalchemy as sa

    from labeler.dashboard.researcher_demo import setup_demo
    from labeler.db import make_engine
    from labeler.testing import make_settings

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'demo.db'}")
    first = setup_demo(settings, size=384, seed=4, simulate_n=5)
    assert first.created and first.tiles > 0 and first.gold + first.tutorial > 0
    assert first.simulated_volunteers == 5 and first.labels > 0

    huts = json.loads((first.scene_dir / "truth.geojson").read_text())["features"]
    rank = {"intact": 1, "damaged": 2, "destroyed": 3}
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            gold = conn.execute(sa.text(
                "SELECT west, south, east, north, gold_answer, gold_explanation FROM tiles "
                "WHERE gold_answer IS NOT NULL")).all()
            labels = conn.execute(sa.text(
                "SELECT count(*), count(DISTINCT volunteer_id) FROM labels")).one()
        assert gold
        for w, s, e, n, answer, explanation in gold:
            inside = [h["properties"]["state"] for h in huts
                      if w <= h["geometry"]["coordinates"][0] < e
                      and s < h["geometry"]["coordinates"][1] <= n]
            expected = max(inside, key=rank.get) if inside else "none"
            assert answer == expected, (answer, inside)
            assert explanation
        assert labels[0] == first.labels and labels[1] == 5

        again = setup_demo(settings, size=384, seed=4, simulate_n=5)
        assert not again.created and again.simulated_volunteers == 0 and again.labels == 0
        assert again.token == first.token and again.tiles == first.tiles
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM labels")).scalar_one() == labels[0]
    finally:
        engine.dispose()


def test_demo_with_the_default_relative_data_dir(tmp_path):
    # the README's `./dev demo` runs without --data-dir: ./crowdsight-data, a relative path
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROWDSIGHT_")}
    r = subprocess.run([sys.executable, "-m", "crowdsight", "demo", "--size", "512", "--no-serve"],
                       cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=START_TIMEOUT_S)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "crowdsight-data" / "tiles" / "demo" / "manifest.json").is_file()
    assert not (tmp_path / "crowdsight-data" / "tiles" / "crowdsight-data").exists()
