"""TileStore: validated addresses (no traversal), atomic writes, listing."""

from __future__ import annotations

import os
import threading
import time

import pytest

from tiles.errors import InvalidTileError, StoreError, TileNotFoundError
from tiles.store import TileStore, atomic_write


def test_write_read_exists_iter(tmp_path):
    s = TileStore(tmp_path)
    p = s.write("proj", "before", 18, 5, 7, "jpg", b"abc")
    assert p == tmp_path / "proj" / "before" / "18" / "5" / "7.jpg"
    assert s.path_for("proj", "before", 18, 5, 7, "jpg") == p
    assert s.exists("proj", "before", 18, 5, 7, "jpg")
    assert not s.exists("proj", "before", 18, 5, 8, "jpg")
    assert s.read("proj", "before", 18, 5, 7, "jpg") == b"abc"
    (p.parent / ".7.jpg.x.tmp").write_bytes(b"partial")
    assert list(s.iter_tiles("proj", "before")) == [(18, 5, 7, "jpg")]
    with pytest.raises(TileNotFoundError):
        s.read("proj", "before", 18, 5, 8, "jpg")
    with pytest.raises(TileNotFoundError):
        s.read_manifest("proj")


@pytest.mark.parametrize("project,layer,z,x,y,ext", [
    ("..", "before", 1, 0, 0, "jpg"),
    ("proj", "../../etc", 1, 0, 0, "jpg"),
    ("proj", "before", 1, 0, 0, "jpg/../../x"),
    ("Proj", "before", 1, 0, 0, "jpg"),
    ("proj", "before", 1, 2, 0, "jpg"),
    ("proj", "before", 1, 0, 0, "exe"),
    ("proj/x", "before", 1, 0, 0, "png"),
    ("proj", "", 1, 0, 0, "png"),
])
def test_traversal_and_bad_addresses_rejected(tmp_path, project, layer, z, x, y, ext):
    s = TileStore(tmp_path)
    with pytest.raises(InvalidTileError):
        s.read(project, layer, z, x, y, ext)
    with pytest.raises(InvalidTileError):
        s.path_for(project, layer, z, x, y, ext)


def test_atomic_write_never_exposes_partial_file(tmp_path):
    """A reader polling the path sees either nothing or a complete tile, never a prefix."""
    target = tmp_path / "t.png"
    payloads = [bytes([i]) * 200_000 for i in range(1, 30)]
    seen: list[bytes] = []
    stop = threading.Event()
    reading = threading.Event()

    def reader():
        while not stop.is_set():
            reading.set()
            try:
                seen.append(target.read_bytes())
            except FileNotFoundError:
                pass

    t = threading.Thread(target=reader)
    t.start()
    # (under load the writes could all be done before the reader thread first runs)
    assert reading.wait(10), "reader thread did not start"
    for p in payloads:
        atomic_write(target, p)
        time.sleep(0)  # let the reader in between writes
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:  # at least the last tile is read
        time.sleep(0.001)
    stop.set()
    t.join()
    assert seen, "reader never ran"
    assert all(s in payloads for s in seen)
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_failed_write_leaves_no_temp(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write(tmp_path / "x.jpg", b"123")
    assert os.listdir(tmp_path) == []
    s = TileStore(tmp_path)
    with pytest.raises(StoreError, match="No space left"):
        s.write("p", "l", 0, 0, 0, "jpg", b"1")


def test_check_writable(tmp_path):
    s = TileStore(tmp_path / "store")
    assert s.check_writable("proj").is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(StoreError, match="not writable"):
        TileStore(blocker).check_writable("proj")


def test_layer_writer_writes_like_the_store(tmp_path):
    s = TileStore(tmp_path)
    w = s.layer_writer("p", "l", "png")
    assert not w.exists(3, 1, 2)
    w.write(3, 1, 2, b"abc")
    assert w.exists(3, 1, 2) and s.read("p", "l", 3, 1, 2, "png") == b"abc"
    w.write(3, 1, 2, b"new")  # replaced atomically
    assert s.read("p", "l", 3, 1, 2, "png") == b"new"
    assert [f for f in os.listdir(tmp_path / "p" / "l" / "3" / "1")] == ["2.png"]
    with pytest.raises(InvalidTileError):
        w.write(3, 8, 0, b"x")  # x out of range at z3
    with pytest.raises(InvalidTileError):
        s.layer_writer("p", "../x", "png")
    (tmp_path / "p" / "l" / "4").write_text("a file where a folder should be")
    with pytest.raises(StoreError, match="cannot write tile"):
        w.write(4, 0, 0, b"x")
