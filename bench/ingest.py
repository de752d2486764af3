"""Benchmark: crowdsight ingest vs gdal2tiles.py, the encode-only bound, and peak memory.

Not a test. Run from the repository root:

    .venv/bin/python bench/ingest.py                  # PNG and WebP, plus the large image
    .venv/bin/python bench/ingest.py --formats png --large-size 0   # quick

What it does, in one invocation on this machine:

1. Joplin "before" (4 GeoTIFFs, ../shared/data/imagery/joplin_tornado/pre): runs
   ``crowdsight ingest`` and ``gdal2tiles.py --xyz --processes=N -r bilinear`` (on a VRT made
   with gdalbuildvrt in a temp dir: fine for the baseline) for the same zoom range and tile
   format, each as a child process; prints wall time, tiles/s, their ratio and peak memory.
2. The encode-only lower bound: Pillow encoding the same tiles (the very arrays the ingest
   handed to its encoder, captured in one run; same settings) in N processes, warmed up
   before timing, with no reading, warping or writing. The ingest is timed two ways against it: in a fresh CLI process (its own
   ``ingest()`` time, without interpreter start-up but with GDAL's and PROJ's first use and
   every buffer's first touch), and warm, in one long-lived process that has ingested before
   (:class:`WarmIngester`), which is how the bound itself is timed. A run of either lasts
   well under a second and this machine's speed drifts by +-25 % from one second to the
   next, so one pair of runs says little: the ingest is run ``--repeat`` times (default 5),
   each followed by an encode-only run, and the ratios reported are the medians of the
   pairs' ratios (every pair is printed too). Tiles are written under ``--workdir`` (default:
   the system's temp dir); the bench prints what creating a small file costs there (see
   :func:`file_creation_us`) and deletes nothing before it ends.
3. Peak memory of ``crowdsight ingest`` on a large generated image (default 20000 x 20000
   RGB, written to a temp dir with windowed writes, deleted afterwards).

Each command runs under a small helper process (``--_measure``): the wall time is taken by the
helper around the command itself, so the helper's own interpreter start-up is charged to
neither tool. Peak memory is reported two ways: the largest single process
(``getrusage(RUSAGE_CHILDREN)`` in the helper) and the whole process tree (sum of VmRSS over
/proc, sampled every 20 ms, helper included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CROWDSIGHT_SHARED_DIR", ROOT.parent / "shared")) / "data"
PY = sys.executable
CROWDSIGHT = [PY, "-m", "crowdsight"]


# --- measuring child processes ---------------------------------------------------------
def _tree_rss_kb(pid: int) -> int:
    """Sum of VmRSS of ``pid`` and all its descendants (Linux /proc, no psutil)."""
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd`` under a small helper; return wall seconds and peak memory (MB).

    The wall time is the command's own (measured by the helper around it); the helper's
    start-up (~0.05 s, plain Python without numpy) is excluded for every tool alike.
    """
    helper = [PY, str(Path(__file__).resolve()), "--_measure", "--", *cmd]
    proc = subprocess.Popen(helper, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True)
    peak_tree = 0
    while proc.poll() is None:
        peak_tree = max(peak_tree, _tree_rss_kb(proc.pid))
        time.sleep(0.02)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    info = json.loads(out.strip().splitlines()[-1])
    return {"wall": info["wall"], "peak_tree_mb": peak_tree / 1024, "cpu": info["cpu"],
            "peak_single_mb": info["maxrss_kb"] / 1024, "stdout": info["stdout"]}


def _measure_main(cmd: list[str]) -> None:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         check=False)
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"wall": wall, "maxrss_kb": ru.ru_maxrss, "cpu": ru.ru_utime + ru.ru_stime,
                      "stdout": res.stdout[-4000:]}))
    sys.exit(res.returncode)


# --- pieces ----------------------------------------------------------------------------
def count_tiles(root: Path, ext: str) -> tuple[int, float]:
    """(number of tiles, mean KB per tile) under an XYZ folder."""
    sizes = [p.stat().st_size for p in root.rglob(f"*.{ext}") if p.parent.parent.name.isdigit()]
    return len(sizes), (sum(sizes) / len(sizes) / 1024 if sizes else 0.0)


class EncodeBound:
    """The encode-only lower bound: encode the same tiles again with the same settings; no
    I/O, no warping.

    The tiles are the very arrays the ingest handed to the encoder (captured by
    :meth:`WarmIngester.capture`), not the written tiles decoded again: a lossy tile
    decoded and re-encoded is smoother than the pixels the ingest encoded, and libwebp
    encodes it ~2-3 % faster (measured on the Joplin tiles, 28 Nov), which would flatter the
    bound. They are loaded *before* the worker processes are forked, so the workers inherit
    them and receive only indices: pickling 256 KB arrays through a pipe would make the
    parallel figure no faster than one process (it measured the pipe, not Pillow). Workers
    are warmed up (Pillow plugins loaded) before timing. The pool stays up so that
    :meth:`parallel` can be timed again between ingest runs (see ``--repeat``).
    """

    def __init__(self, tiles: list[tuple], ext: str, quality: int | None, jobs: int) -> None:
        import multiprocessing

        self.tiles = len(tiles)
        self.jobs = jobs
        _ENC[:] = [(a, ext, quality, opaque) for a, opaque in tiles]
        _encode_one(0)  # load the Pillow plugin once, as a long-running ingest would
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(self.tiles):
            _encode_one(i)
        self.single, self.cpu = time.perf_counter() - t0, time.process_time() - c0
        self._pool = multiprocessing.get_context("fork").Pool(jobs)
        _ENC.clear()  # the forked workers have their copy
        self._pool.map(_encode_one, [0] * jobs, chunksize=1)  # warm up the workers

    def parallel(self) -> float:
        """Wall seconds to encode every tile once in ``jobs`` processes."""
        t0 = time.perf_counter()
        self._pool.map(_encode_one, range(self.tiles), chunksize=4)
        return time.perf_counter() - t0

    def close(self) -> None:
        self._pool.close()
        self._pool.join()


_ENC: list = []  # (array, ext, quality, opaque) per tile; filled before forking the pool


class WarmIngester:
    """``ingest()`` in one long-lived child process, timed from its second run on: the
    ingest measured the way the encode-only bound is (its workers are warmed up before
    timing: Pillow's plugin loaded, their memory in use), as a worker process that has
    ingested before (the service, a dask worker) runs it. A fresh CLI process also pays
    one-off costs inside ``ingest()``: GDAL's driver registration, each thread's first
    GDAL/PROJ open (~10-20 ms), first-touch page faults of every buffer.

    Each run writes a fresh store (nothing is cached across runs but what a process keeps:
    loaded libraries, per-thread GDAL/PROJ state, the allocator's memory).
    """

    def __init__(self, files: list[Path], ext: str, quality: int | None, zmin: int, zmax: int,
                 jobs: int) -> None:
        spec = {"files": [str(f) for f in files], "ext": ext, "quality": quality,
                "zmin": zmin, "zmax": zmax, "jobs": jobs}
        self._proc = subprocess.Popen(
            [PY, str(Path(__file__).resolve()), "--_warm-ingest", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)

    def run(self, store: Path) -> float:
        """Seconds of one ``ingest()`` into ``store`` (as the manifest's ``ingest_stats``)."""
        return self._ask({"store": str(store)})["seconds"]

    def capture(self, store: Path) -> tuple[float, list[tuple]]:
        """One ``ingest()`` into ``store`` that keeps a copy of every array it hands to the
        tile encoder: its seconds (copies included) and ``[(array, opaque flag), ...]``."""
        import pickle

        dump = store.with_suffix(".pickle")
        seconds = self._ask({"store": str(store), "capture": str(dump)})["seconds"]
        with open(dump, "rb") as f:
            return seconds, pickle.load(f)

    def _ask(self, request: dict) -> dict:
        assert self._proc.stdin and self._proc.stdout
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        out = self._proc.stdout.readline()
        if not out:
            raise SystemExit(f"the warm ingest process failed (exit {self._proc.wait()})")
        return json.loads(out)

    def close(self) -> None:
        if self._proc.stdin:
            self._proc.stdin.close()
        self._proc.wait()


def _warm_main(spec_json: str) -> None:
    """Child of :class:`WarmIngester`: one ingest per JSON line read from stdin, ``{"store":
    path}``, plus ``"capture": dump path`` to keep the encoder's arrays (see
    :meth:`WarmIngester.capture`)."""
    sys.path.insert(0, str(ROOT))
    import pickle

    import numpy as np

    from ingest import render
    from ingest.pipeline import ingest

    spec = json.loads(spec_json)
    real = render.encode
    for line in sys.stdin:
        request = json.loads(line)
        captured: list[tuple] = []
        if "capture" in request:
            def spy(array, fmt, quality=None, *, opaque=None, out=captured):
                out.append((np.ascontiguousarray(array), opaque))
                return real(array, fmt, quality, opaque=opaque)

            render.encode = spy
        try:
            # the capture run uses threads, whose encoder calls the spy sees (a pool's workers
            # would encode in other processes); every mode writes the same tiles
            m = ingest({"before": [Path(f) for f in spec["files"]]}, Path(request["store"]),
                       "bench", zoom=spec["zmax"], min_zoom=spec["zmin"], fmt=spec["ext"],
                       quality=spec["quality"], jobs=spec["jobs"],
                       workers="threads" if "capture" in request else "auto")
        finally:
            render.encode = real
        if "capture" in request:
            with open(request["capture"], "wb") as f:
                pickle.dump(captured, f, protocol=pickle.HIGHEST_PROTOCOL)
        print(json.dumps({"seconds": m["ingest_stats"]["seconds"],
                          "tiles": m["layers"]["before"]["tile_count"]}), flush=True)


def byte_compile() -> int:
    """Write the ``__pycache__`` bytecode of crowdsight's own packages, as installing a wheel
    does (pip compiles what it installs); the number of modules compiled.

    The project is installed editable, so its modules are compiled on import, and where
    ``PYTHONDONTWRITEBYTECODE`` is set (these machines, CI) never saved: every CLI run would
    compile the ingest's modules again (~0.1 s), a cost no installed tool pays; gdal2tiles'
    modules come precompiled with Debian's package. Python reads existing ``.pyc`` files
    whatever that variable says.
    """
    import compileall
    import io
    from contextlib import redirect_stdout

    count = 0
    for pkg in ("crowdsight", "tiles", "ingest", "consensus", "labeler"):
        d = ROOT / pkg
        if d.is_dir():
            with redirect_stdout(io.StringIO()):
                compileall.compile_dir(str(d), quiet=2)
            count += sum(1 for _ in d.rglob("*.py"))
    return count


def file_creation_us(directory: Path, n: int = 200) -> float:
    """CPU microseconds to create one small file in a new folder under ``directory``.

    Tiles are small files: creating one costs ~10-50 us on most disks. On an ext4 without a
    journal (this VM's root file system) the kernel does not reuse an inode deleted in the
    last 5 s, or up to 5 minutes while its inode table block is not written back
    (``recently_deleted`` in ``fs/ext4/ialloc.c``): every create walks past all of them
    again, so after a few thousand deletions a create cost 0.2-0.7 ms of CPU here (perf, 28
    Nov), ~0.1 s for the ~180 tiles of a run. The figure is printed so that such a disk is
    seen, not mistaken for a slow ingest; the bench deletes nothing until it ends (an earlier
    invocation's clean-up still counts for 5 minutes).
    """
    d = Path(tempfile.mkdtemp(dir=directory, prefix="calib-"))
    c0 = time.process_time()
    for i in range(n):
        with open(d / f"{i}.webp", "wb") as f:
            f.write(b"x" * 5000)
    return (time.process_time() - c0) / n * 1e6


def _encode_one(i: int) -> int:
    from tiles.encode import encode

    a, ext, quality, opaque = _ENC[i]
    return len(encode(a, ext, quality, opaque=opaque))


def make_large(path: Path, size: int) -> None:
    """A size x size RGB uint8 GeoTIFF written window by window (never whole in memory)."""
    import numpy as np
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    base = rng.integers(60, 200, (3, 512, 512), dtype=np.uint8)
    rows = 512
    tf = Affine(0.5, 0, 700000.0, 0, -0.5, 1500000.0)  # UTM 35N, ~13.5 N 24.8 E
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3,
                       dtype="uint8", crs="EPSG:32635", transform=tf, tiled=True,
                       blockxsize=512, blockysize=512, BIGTIFF="YES") as dst:
        for r0 in range(0, size, rows):
            h = min(rows, size - r0)
            strip = np.tile(base, (1, 1, size // 512 + 1))[:, :h, :size]
            strip = (strip + np.uint8((r0 // rows) % 50)).astype(np.uint8)
            dst.write(strip, window=Window(0, r0, size, h))


def fmt_row(name: str, r: dict, tiles: int) -> str:
    return (f"  {name:<44} {r['wall']:7.2f} s  {tiles / r['wall']:8.1f} tiles/s  "
            f"cpu {r['cpu']:6.2f} s  peak RSS: tree {r['peak_tree_mb']:4.0f} MB, "
            f"largest process {r['peak_single_mb']:4.0f} MB")


# --- main ------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--formats", default="png,webp",
                    help="tile formats to compare (gdal2tiles supports png and webp)")
    ap.add_argument("--jobs", type=int, default=2, help="processes for both tools")
    ap.add_argument("--zooms", default="14-18", help="zoom range (Joplin native is 18)")
    ap.add_argument("--repeat", type=int, default=5,
                    help="ingest / encode-only pairs per format, run alternately; the "
                         "ratio reported is the median of the pairs' ratios")
    ap.add_argument("--workdir", default=None,
                    help="where the tiles are written (default: the system's temp dir)")
    ap.add_argument("--large-size", type=int, default=20000,
                    help="edge of the generated large image (0 skips that part)")
    args = ap.parse_args()
    pre = SHARED / "imagery" / "joplin_tornado" / "pre"
    files = sorted(pre.glob("*.tif"))
    if not files:
        raise SystemExit(f"shared data not found in {pre} (set CROWDSIGHT_SHARED_DIR)")
    zmin, zmax = (int(v) for v in args.zooms.split("-"))
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"jobs={args.jobs}; Joplin before = {len(files)} x 1024^2 RGB; zooms {zmin}-{zmax}")
    compiled = byte_compile()
    if compiled:
        print(f"byte-compiled {compiled} crowdsight modules (see byte_compile)")
    tmp = Path(tempfile.mkdtemp(prefix="crowdsight-bench-", dir=args.workdir))
    print(f"work dir {tmp}: creating a small file costs {file_creation_us(tmp):.0f} us of CPU "
          "(see file_creation_us)")
    try:
        vrt = tmp / "before.vrt"
        subprocess.run(["gdalbuildvrt", "-q", str(vrt), *map(str, files)], check=True)
        for ext in args.formats.split(","):
            quality = 75 if ext == "webp" else None
            print(f"\n[{ext}] same zooms, same format, bilinear resampling")
            g2t_out = tmp / f"g2t-{ext}"
            g2t_cmd = ["gdal2tiles.py", "--xyz", f"--processes={args.jobs}", "-z",
                       f"{zmin}-{zmax}", "-r", "bilinear", "-w", "none", "-q",
                       f"--tiledriver={ext.upper()}", str(vrt), str(g2t_out)]
            g2t = measure(g2t_cmd)
            g2t_tiles, g2t_kb = count_tiles(g2t_out, ext)
            cs_store = tmp / f"cs-{ext}"
            cs_cmd = CROWDSIGHT + ["ingest", "--project", "bench", "--layer",
                                   "before=" + ",".join(map(str, files)), "--store",
                                   str(cs_store), "--zoom", str(zmax), "--min-zoom", str(zmin),
                                   "--format", ext, "--jobs", str(args.jobs), "--quiet"]
            if quality:
                cs_cmd += ["--quality", str(quality)]
            cs = measure(cs_cmd)
            manifest = json.loads((cs_store / "bench" / "manifest.json").read_text())
            cs_tiles = manifest["layers"]["before"]["tile_count"]
            _, cs_kb = count_tiles(cs_store / "bench" / "before", ext)
            warm = WarmIngester(files, ext, quality, zmin, zmax, args.jobs)
            enc = None
            try:
                # the child's first run (not warm) captures the tiles for the bound
                first_warm, captured = warm.capture(tmp / f"warm-{ext}-0")
                if len(captured) != cs_tiles:
                    raise SystemExit(f"captured {len(captured)} tiles, the ingest wrote "
                                     f"{cs_tiles}")
                enc = EncodeBound(captured, ext, quality, args.jobs)
                del captured
                # Alternate ingest and encode-only runs, so that all see the same moments of
                # this (shared, noisy) machine. Every ingest writes a fresh store and none is
                # deleted before the end (see file_creation_us).
                runs = [(cs, manifest["ingest_stats"]["seconds"],
                         warm.run(tmp / f"warm-{ext}-1"), enc.parallel())]
                for r in range(1, args.repeat):
                    cs_cmd[cs_cmd.index("--store") + 1] = str(tmp / f"cs-{ext}-{r}")
                    again = measure(cs_cmd)
                    m = json.loads((tmp / f"cs-{ext}-{r}" / "bench" / "manifest.json")
                                   .read_text())
                    runs.append((again, m["ingest_stats"]["seconds"],
                                 warm.run(tmp / f"warm-{ext}-{r + 1}"), enc.parallel()))
            finally:
                if enc is not None:
                    enc.close()
                warm.close()
            med = statistics.median
            cli_wall = med([r[0]["wall"] for r in runs])
            inproc = med([r[1] for r in runs])
            warm_s = med([r[2] for r in runs])
            par = med([r[3] for r in runs])
            ratios = [r[1] / r[3] for r in runs]
            warm_ratios = [r[2] / r[3] for r in runs]
            cli_ratios = [r[0]["wall"] / r[3] for r in runs]
            print(fmt_row(f"gdal2tiles.py ({g2t_tiles} tiles, {g2t_kb:.0f} KB avg)", g2t,
                          g2t_tiles))
            print(fmt_row(f"crowdsight ingest ({cs_tiles} tiles, {cs_kb:.0f} KB avg)", cs,
                          cs_tiles) + ("  (first run)" if len(runs) > 1 else ""))
            if len(runs) > 1:
                print(f"  {f'crowdsight ingest, median of {len(runs)} runs':<44} "
                      f"{cli_wall:7.2f} s  {cs_tiles / cli_wall:8.1f} tiles/s")
            print(f"  {'crowdsight ingest() in-process, fresh process':<44} {inproc:7.2f} s  "
                  f"{cs_tiles / inproc:8.1f} tiles/s  (same runs, without interpreter start-up)")
            print(f"  {'crowdsight ingest() in-process, warm process':<44} {warm_s:7.2f} s  "
                  f"{cs_tiles / warm_s:8.1f} tiles/s  (one process that has ingested before; "
                  f"its first run {first_warm:.2f} s)")
            print(f"  {'encode-only, 1 process':<44} {enc.single:7.2f} s  "
                  f"{enc.tiles / enc.single:8.1f} tiles/s  cpu {enc.cpu:6.2f} s")
            print(f"  {f'encode-only, {args.jobs} processes':<44} {par:7.2f} s  "
                  f"{enc.tiles / par:8.1f} tiles/s")
            print(f"  {len(runs)} alternating runs (in-process s, fresh / warm, over "
                  "encode-only s = ratios): "
                  + ", ".join(f"{r[1]:.2f}/{r[2]:.2f} over {r[3]:.2f} = {q:.2f}/{w:.2f}"
                              for r, q, w in zip(runs, ratios, warm_ratios)))
            thr = (cs_tiles / cli_wall) / (g2t_tiles / g2t["wall"])
            thr_cpu = (g2t["cpu"] / g2t_tiles) / (cs["cpu"] / cs_tiles)
            print(f"  => throughput vs gdal2tiles: {thr:.2f}x (goal >= 3x)")
            print(f"  => wall time vs encode-only ({args.jobs} processes, warmed up), median of "
                  f"the runs' ratios (goal <= 1.5x): warm in-process {med(warm_ratios):.2f}x "
                  f"(range {min(warm_ratios):.2f}-{max(warm_ratios):.2f}); fresh process "
                  f"{med(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}); CLI incl. "
                  f"interpreter start-up {med(cli_ratios):.2f}x")
            print(f"     by CPU time (less sensitive to other load on the machine): "
                  f"{thr_cpu:.2f}x less CPU per tile than gdal2tiles; "
                  f"{(cs['cpu'] / cs_tiles) / (enc.cpu / enc.tiles):.2f}x the encode-only "
                  "CPU per tile (CLI, incl. interpreter start-up)")
        if args.large_size:
            n = args.large_size
            big = tmp / "large.tif"
            t0 = time.perf_counter()
            make_large(big, n)
            print(f"\n[large] generated {n} x {n} RGB ({big.stat().st_size / 2**30:.2f} GiB) "
                  f"in {time.perf_counter() - t0:.1f} s with windowed writes")
            store = tmp / "cs-large"
            cmd = CROWDSIGHT + ["ingest", "--project", "large", "--store", str(store), "--jobs",
                                str(args.jobs), "--quiet", str(big)]
            r = measure(cmd)
            m = json.loads((store / "large" / "manifest.json").read_text())
            tiles = m["layers"]["image"]["tile_count"]
            print(fmt_row(f"crowdsight ingest ({tiles} tiles, z{m['min_zoom']}-{m['task_zoom']})",
                          r, tiles))
            print(f"  => peak memory (tree) {r['peak_tree_mb']:.0f} MB for a "
                  f"{n * n * 3 / 2**20:.0f} MB image (goal < 500 MB)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--_measure":
        _measure_main(sys.argv[3:])
    elif len(sys.argv) > 2 and sys.argv[1] == "--_warm-ingest":
        _warm_main(sys.argv[2])
    else:
        main()
