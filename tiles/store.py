"""The on-disk tile store: ``{root}/{project}/{layer}/{z}/{x}/{y}.{ext}``.

Every write is atomic (a temporary file in the same directory, then ``os.replace``), so a
reader never sees a half-written tile. Every address is validated before it touches the file
system, so a URL such as ``/tiles/../../etc/passwd`` can never escape the store.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

from tiles.encode import FORMATS
from tiles.errors import InvalidTileError, StoreError, TileNotFoundError
from tiles.grid import check_tile

PROJECT_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
LAYER_RE = re.compile(r"[a-z0-9_-]{1,32}")
MANIFEST = "manifest.json"
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def check_project(project: str) -> str:
    if not isinstance(project, str) or not PROJECT_RE.fullmatch(project):
        raise InvalidTileError(
            f"project {project!r}: use 1-63 lowercase letters, digits or '-', "
            "starting with a letter or digit")
    return project


def check_layer(layer: str) -> str:
    if not isinstance(layer, str) or not LAYER_RE.fullmatch(layer):
        raise InvalidTileError(f"layer {layer!r}: use 1-32 lowercase letters, digits, '_' or '-'")
    return layer


def check_ext(ext: str) -> str:
    if ext not in FORMATS:
        raise InvalidTileError(f"tile extension {ext!r}: expected one of {', '.join(FORMATS)}")
    return ext


_tmp_counter = itertools.count()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary sibling and ``os.replace`` (mode 0644).

    The temporary name is ``.{name}.{pid}-{n}.tmp``, created with ``O_EXCL`` (unique per
    process without ``tempfile``'s random names and extra ``chmod``); no fsync.
    """
    directory, name = os.path.split(os.fspath(path))
    _atomic_write_in(directory, name, data)


def _atomic_write_in(directory: str, name: str, data: bytes) -> None:
    """:func:`atomic_write` of ``directory/name`` (plain strings: no ``Path`` objects)."""
    path = os.path.join(directory, name)
    while True:
        tmp = os.path.join(directory, f".{name}.{os.getpid()}-{next(_tmp_counter)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o644)
            break
        except FileExistsError:  # left over by a crashed process with the same pid
            continue
    try:
        try:
            os.fchmod(fd, 0o644)  # whatever the umask, as tiles are served to others
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write(Path(path), (json.dumps(obj, indent=1) + "\n").encode())


class TileStore:
    """A folder of XYZ tiles, one sub-folder per project and layer."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._made: set[str] = set()  # tile folders known to exist

    def __repr__(self) -> str:
        return f"TileStore({str(self.root)!r})"

    # paths ----------------------------------------------------------------
    def project_dir(self, project: str) -> Path:
        return self.root / check_project(project)

    def layer_dir(self, project: str, layer: str) -> Path:
        return self.project_dir(project) / check_layer(layer)

    def manifest_path(self, project: str) -> Path:
        return self.project_dir(project) / MANIFEST

    def path_for(self, project: str, layer: str, z: int, x: int, y: int, ext: str) -> Path:
        """Validated path of one tile; raises :class:`InvalidTileError` for a bad address."""
        check_tile(z, x, y)
        return self.layer_dir(project, layer) / str(z) / str(x) / f"{y}.{check_ext(ext)}"

    # reading --------------------------------------------------------------
    def exists(self, project: str, layer: str, z: int, x: int, y: int, ext: str) -> bool:
        return self.path_for(project, layer, z, x, y, ext).is_file()

    def read(self, project: str, layer: str, z: int, x: int, y: int, ext: str) -> bytes:
        """The tile's bytes; :class:`TileNotFoundError` when absent."""
        path = self.path_for(project, layer, z, x, y, ext)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise TileNotFoundError(f"no tile {project}/{layer}/{z}/{x}/{y}.{ext}") from None

    def read_manifest(self, project: str) -> dict:
        path = self.manifest_path(project)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise TileNotFoundError(f"no manifest for project {project!r} at {path}") from None

    def iter_tiles(self, project: str, layer: str) -> Iterator[tuple[int, int, int, str]]:
        """Every tile of a layer as ``(z, x, y, ext)`` (hidden/temporary files ignored)."""
        base = self.layer_dir(project, layer)
        if not base.is_dir():
            return
        for zdir in base.iterdir():
            if not zdir.name.isdigit() or not zdir.is_dir():
                continue
            for xdir in zdir.iterdir():
                if not xdir.name.isdigit() or not xdir.is_dir():
                    continue
                for f in xdir.iterdir():
                    stem, dot, ext = f.name.partition(".")
                    if dot and stem.isdigit() and ext in FORMATS:
                        yield int(zdir.name), int(xdir.name), int(stem), ext

    # writing --------------------------------------------------------------
    def write(self, project: str, layer: str, z: int, x: int, y: int, ext: str,
              data: bytes) -> Path:
        """Atomically write one tile; returns its path."""
        path = self.path_for(project, layer, z, x, y, ext)
        _write_tile(self._made, str(path.parent), path.name, data, self.root)
        return path

    def layer_writer(self, project: str, layer: str, ext: str) -> "LayerWriter":
        """A :class:`LayerWriter` for many tiles of one layer and format (checks the names
        once, then builds plain string paths)."""
        return LayerWriter(str(self.layer_dir(project, layer)), check_ext(ext))

    def check_writable(self, project: str) -> Path:
        """Create the project folder and prove we can write in it (raises StoreError)."""
        pdir = self.project_dir(project)
        try:
            pdir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=pdir)
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            raise StoreError(f"tile store {pdir} is not writable ({exc.strerror or exc}); "
                             "choose another --store or fix its permissions") from exc
        return pdir


class LayerWriter:
    """Writes and checks the tiles of one layer and format, like :meth:`TileStore.write` and
    :meth:`TileStore.exists` (same validation, same atomic writes, same errors), without
    building and re-validating a ``Path`` per tile."""

    def __init__(self, base: str, ext: str) -> None:
        self.base, self.ext = base, ext
        self._made: set[str] = set()

    def exists(self, z: int, x: int, y: int) -> bool:
        check_tile(z, x, y)
        return os.path.isfile(f"{self.base}/{z}/{x}/{y}.{self.ext}")

    def write(self, z: int, x: int, y: int, data: bytes) -> None:
        check_tile(z, x, y)
        _write_tile(self._made, f"{self.base}/{z}/{x}", f"{y}.{self.ext}", data, self.base)


def _write_tile(made: set[str], directory: str, name: str, data: bytes, root: object) -> None:
    """Atomically write ``directory/name``, creating ``directory`` unless ``made`` says it
    exists; an OS error comes out as :class:`StoreError` naming ``root``."""
    try:
        if directory not in made:
            os.makedirs(directory, exist_ok=True)
            made.add(directory)
        _atomic_write_in(directory, name, data)
    except OSError as exc:
        raise StoreError(f"cannot write tile {os.path.join(directory, name)}: "
                         f"{exc.strerror or exc}; check that {root} is writable and has free "
                         "space") from exc
