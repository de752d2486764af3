"""The vote table every method works on: compact integer arrays plus the id lookups.

A :class:`Votes` holds one row per answer as three parallel arrays (``task`` int32,
``worker`` int32, ``label`` int8/int16) and the tables that map those indices back to the
original identifiers. Observed *labels* are the answers volunteers could give; *classes* are
the possible true states of a tile. Classes come first in ``labels``; the remaining labels are
**response-only** answers such as ``maybe`` that are evidence but never a tile's true state
(see ``docs/consensus.md``, "Maybe and bad imagery").

Builders factorise arbitrary ids with :func:`numpy.unique` (sorted, so the indices do not depend
on row order); no pandas anywhere.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from .errors import VotesError

#: MapSwipe's ``result`` codes in its results exports.
MAPSWIPE_ANSWERS: dict[str, str] = {"0": "no", "1": "yes", "2": "maybe", "3": "bad_imagery"}
#: Answers that are evidence only, never a tile's true state (default for every builder).
RESPONSE_ONLY: tuple[str, ...] = ("maybe",)

_XYZ_RE = re.compile(r"^\s*(\d{1,2})[-/_](\d+)[-/_](\d+)\s*$")


def natural_key(value: str) -> tuple:
    """Sort key putting ``"2"`` before ``"10"`` and numbers before words."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def parse_xyz(task_ids: Sequence[str]) -> np.ndarray | None:
    """Parse ``z-x-y`` (or ``z/x/y``, ``z_x_y``) task ids into an (n, 3) int64 array.

    Returns None unless *every* id parses and lies on its zoom's grid.
    """
    out = np.empty((len(task_ids), 3), dtype=np.int64)
    for i, tid in enumerate(task_ids):
        m = _XYZ_RE.match(str(tid))
        if m is None:
            return None
        z, x, y = (int(g) for g in m.groups())
        if z > 28 or x >= (1 << z) or y >= (1 << z):
            return None
        out[i] = (z, x, y)
    return out if len(task_ids) else None


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, inv = np.unique(values, return_inverse=True)
    return uniq, inv.reshape(-1)


def _index_dtype(n: int) -> np.dtype:
    return np.dtype(np.int8) if n <= 127 else np.dtype(np.int16)


@dataclass(frozen=True, eq=False)
class Votes:
    """Answers as compact parallel arrays.

    Attributes:
        task, worker: int32 indices into ``task_ids`` / ``worker_ids``.
        label: int8/int16 index into ``labels``; ``label < n_classes`` means a class.
        task_ids, worker_ids: original identifiers (numpy arrays, sorted).
        labels: observed answer names; ``labels[:n_classes] == classes``.
        classes: possible true states of a tile.
        tile_xyz: optional (n_tasks, 3) int64 ``z, x, y`` per task (enables the spatial model).
        gold_task, gold_class: optional known answers (task index -> class index).
        time: optional per-vote timestamp (float64), used by the replay simulator.
    """

    task: np.ndarray
    worker: np.ndarray
    label: np.ndarray
    task_ids: np.ndarray
    worker_ids: np.ndarray
    labels: tuple[str, ...]
    classes: tuple[str, ...]
    tile_xyz: np.ndarray | None = None
    gold_task: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    gold_class: np.ndarray = field(default_factory=lambda: np.empty(0, np.int16))
    time: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.task.shape[0]
        if self.worker.shape[0] != n or self.label.shape[0] != n:
            raise VotesError("task, worker and label arrays must have the same length")
        if tuple(self.labels[: len(self.classes)]) != tuple(self.classes):
            raise VotesError("labels must start with the classes (response-only labels last)")
        if len(self.classes) < 1:
            raise VotesError("at least one class is needed")
        if n:
            if self.task.min() < 0 or self.task.max() >= len(self.task_ids):
                raise VotesError("task index out of range")
            if self.worker.min() < 0 or self.worker.max() >= len(self.worker_ids):
                raise VotesError("worker index out of range")
            if self.label.min() < 0 or self.label.max() >= len(self.labels):
                raise VotesError("label index out of range")
        if self.tile_xyz is not None and self.tile_xyz.shape != (len(self.task_ids), 3):
            raise VotesError("tile_xyz must have shape (n_tasks, 3)")
        if self.time is not None and self.time.shape[0] != n:
            raise VotesError("time must have one value per vote")

    # sizes ---------------------------------------------------------------
    @property
    def n_votes(self) -> int:
        return int(self.task.shape[0])

    @property
    def n_tasks(self) -> int:
        return len(self.task_ids)

    @property
    def n_workers(self) -> int:
        return len(self.worker_ids)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_labels(self) -> int:
        return len(self.labels)

    def gold_dict(self) -> dict:
        """Gold answers as ``{task_id: class name}``."""
        ids = self.task_ids.tolist()
        return {ids[t]: self.classes[c]
                for t, c in zip(self.gold_task.tolist(), self.gold_class.tolist())}

    def label_counts(self) -> np.ndarray:
        """(n_tasks, n_labels) int64 counts of each observed answer per task."""
        T, L = self.n_tasks, self.n_labels
        flat = self.task.astype(np.int64) * L + self.label
        return np.bincount(flat, minlength=T * L).reshape(T, L)

    def subset(self, mask: np.ndarray) -> "Votes":
        """The votes selected by a boolean mask (ids, classes and gold are kept)."""
        return Votes(self.task[mask], self.worker[mask], self.label[mask], self.task_ids,
                     self.worker_ids, self.labels, self.classes, self.tile_xyz, self.gold_task,
                     self.gold_class, None if self.time is None else self.time[mask])

    def with_gold(self, gold: Mapping) -> "Votes":
        """A copy with gold answers ``{task_id: class}`` (tasks without votes are ignored)."""
        gt, gc = _gold_arrays(gold, self.task_ids, self.classes)
        return Votes(self.task, self.worker, self.label, self.task_ids, self.worker_ids,
                     self.labels, self.classes, self.tile_xyz, gt, gc, self.time)

    # builders ------------------------------------------------------------
    @classmethod
    def from_indices(cls, task: np.ndarray, worker: np.ndarray, label: np.ndarray, *,
                     n_tasks: int | None = None, n_workers: int | None = None,
                     classes: Sequence[str] | int = 2, labels: Sequence[str] | None = None,
                     tile_xyz: np.ndarray | None = None, time: np.ndarray | None = None
                     ) -> "Votes":
        """Fast path for data that is already integer-coded (simulations, the database).

        ``classes`` is a list of names or a count (names become ``"0" .. "K-1"``). ``labels``
        defaults to the classes; extra labels are response-only.
        """
        task = np.asarray(task)
        worker = np.asarray(worker)
        label = np.asarray(label)
        if isinstance(classes, int):
            classes = tuple(str(i) for i in range(classes))
        classes = tuple(str(c) for c in classes)
        labels = tuple(labels) if labels is not None else classes
        nt = int(n_tasks if n_tasks is not None else (task.max() + 1 if task.size else 0))
        nw = int(n_workers if n_workers is not None else (worker.max() + 1 if worker.size else 0))
        return cls(task.astype(np.int32, copy=False), worker.astype(np.int32, copy=False),
                   label.astype(_index_dtype(len(labels)), copy=False),
                   np.arange(nt), np.arange(nw), labels, classes, tile_xyz,
                   time=None if time is None else np.asarray(time, dtype=np.float64))

    @classmethod
    def from_arrays(cls, task: Iterable, worker: Iterable, label: Iterable, *,
                    classes: Sequence[str] | None = None,
                    response_only: Sequence[str] = RESPONSE_ONLY,
                    tile_xyz: np.ndarray | None | bool = True,
                    gold: Mapping | None = None, time: Iterable | None = None) -> "Votes":
        """Build from arbitrary ids (strings or numbers), one entry per answer.

        Args:
            classes: the true classes in the order you want them; default: every observed
                label that is not response-only, naturally sorted (``"2"`` before ``"10"``).
                Labels that are neither classes nor response-only are an error.
            response_only: labels that are evidence but never a true state (``maybe``).
            tile_xyz: an (n_tasks, 3) array aligned with the sorted unique task ids, or True
                to parse task ids of the form ``z-x-y`` when they all have it, or None.
            gold: ``{task_id: class}`` known answers (seed skills, clamp those tiles).
            time: per-answer timestamps (numbers) for the replay simulator.
        """
        t_raw = np.asarray(list(task) if not isinstance(task, np.ndarray) else task)
        w_raw = np.asarray(list(worker) if not isinstance(worker, np.ndarray) else worker)
        l_raw = np.asarray(list(label) if not isinstance(label, np.ndarray) else label).astype(str)
        if not (t_raw.shape[0] == w_raw.shape[0] == l_raw.shape[0]):
            raise VotesError("task, worker and label must have the same length")
        task_ids, t_idx = _factorize(t_raw)
        worker_ids, w_idx = _factorize(w_raw)
        seen, l_idx = _factorize(l_raw)
        seen_list = [str(s) for s in seen.tolist()]
        ro = [r for r in response_only]
        if classes is None:
            classes = sorted((s for s in seen_list if s not in ro), key=natural_key)
            if not classes:
                raise VotesError("no votes name a class (only response-only answers such as "
                                 "'maybe'); pass classes=[...] explicitly")
        classes = tuple(str(c) for c in classes)
        if len(set(classes)) != len(classes):
            raise VotesError(f"duplicate class names in {classes}")
        extra = [s for s in seen_list if s not in classes]
        unknown = [s for s in extra if s not in ro]
        if unknown:
            raise VotesError(f"labels {unknown[:5]} are neither classes {list(classes)} nor "
                             f"response-only {ro}; pass classes=[...] or response_only=[...]")
        labels = classes + tuple(r for r in ro if r in extra)
        remap = np.array([labels.index(s) for s in seen_list], dtype=np.int64)
        lab = remap[l_idx] if len(seen_list) else l_idx
        xyz: np.ndarray | None
        if tile_xyz is True:
            xyz = parse_xyz([str(t) for t in task_ids.tolist()])
        elif tile_xyz is False or tile_xyz is None:
            xyz = None
        else:
            xyz = np.asarray(tile_xyz, dtype=np.int64)
        tm = None if time is None else np.asarray(list(time) if not isinstance(time, np.ndarray)
                                                  else time, dtype=np.float64)
        v = cls(t_idx.astype(np.int32), w_idx.astype(np.int32),
                lab.astype(_index_dtype(len(labels))), task_ids, worker_ids, labels, classes,
                xyz, time=tm)
        return v.with_gold(gold) if gold else v

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, object]], **kwargs) -> "Votes":
        """Build from dict rows with keys ``task, worker, label`` (or MapSwipe's
        ``task_id, user_id, result``); an optional ``time``/``timestamp`` key is kept."""
        rows = list(rows)
        if not rows:
            raise VotesError("no votes given")
        cols = _detect_columns(list(rows[0].keys()))
        return cls._from_columns(rows, cols, **kwargs)

    @classmethod
    def _from_columns(cls, rows: list, cols: dict, **kwargs) -> "Votes":
        tk, wk, lk, timek = cols["task"], cols["worker"], cols["label"], cols.get("time")
        try:
            task = [str(r[tk]) for r in rows]
            worker = [str(r[wk]) for r in rows]
            label = [str(r[lk]).strip() for r in rows]
        except KeyError as exc:
            raise VotesError(f"a row has no {exc.args[0]!r} value") from exc
        if cols.get("mapswipe"):
            try:
                label = [MAPSWIPE_ANSWERS[v] for v in label]
            except KeyError as exc:
                raise VotesError(f"MapSwipe result {exc.args[0]!r} is not one of 0 (no), 1 (yes),"
                                 " 2 (maybe), 3 (bad imagery)") from exc
            kwargs.setdefault("classes", ("no", "yes", "bad_imagery"))
        time = None
        if timek is not None:
            try:
                time = [_parse_time(r[timek]) for r in rows]
            except (KeyError, ValueError) as exc:
                raise VotesError(f"cannot read column {timek!r} as a time: {exc}") from exc
        return cls.from_arrays(task, worker, label, time=time, **kwargs)


def _parse_time(value: object) -> float:
    s = str(value).strip()
    try:
        return float(s)
    except ValueError:
        from datetime import datetime, timezone
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()


def _detect_columns(header: Sequence[str]) -> dict:
    h = [c.strip() for c in header]
    low = {c.lower(): c for c in h}
    time = next((low[k] for k in ("time", "timestamp", "created_at", "start_time") if k in low),
                None)
    if {"task_id", "user_id", "result"} <= set(low):
        return {"task": low["task_id"], "worker": low["user_id"], "label": low["result"],
                "time": time, "mapswipe": True}
    if {"task", "worker", "label"} <= set(low):
        return {"task": low["task"], "worker": low["worker"], "label": low["label"],
                "time": time, "mapswipe": False}
    raise VotesError(f"CSV header {h} has neither task,worker,label nor MapSwipe's "
                     "task_id,user_id,result columns")


def read_votes_csv(source: str | Path | io.TextIOBase, **kwargs) -> Votes:
    """Read votes from a CSV file: generic ``task,worker,label`` (other columns ignored) or a
    MapSwipe results export (``task_id,user_id,result``; 0 no / 1 yes / 2 maybe / 3 bad
    imagery; task ids ``z-x-y`` give the tile grid). A ``time``/``timestamp`` column is kept.

    Keyword arguments go to :meth:`Votes.from_arrays` (``classes``, ``gold``, ...).
    """
    if isinstance(source, (str, Path)):
        try:
            fh = open(source, newline="", encoding="utf-8-sig")
        except OSError as exc:
            raise VotesError(f"cannot open votes file {source}: {exc.strerror}") from exc
        with fh:
            return _read(fh, **kwargs)
    return _read(source, **kwargs)


def _read(fh, **kwargs) -> Votes:
    reader = csv.DictReader(fh)
    if reader.fieldnames is None:
        raise VotesError("the votes CSV is empty (no header)")
    cols = _detect_columns(reader.fieldnames)
    rows = list(reader)
    if not rows:
        raise VotesError("the votes CSV has a header but no rows")
    return Votes._from_columns(rows, cols, **kwargs)


def read_truth_csv(source: str | Path, *, mapswipe: bool = False) -> dict[str, str]:
    """Read ``task,label`` (ground truth or gold) into ``{task_id: label}``; with
    ``mapswipe=True`` codes 0-3 become no/yes/maybe/bad_imagery."""
    try:
        fh = open(source, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise VotesError(f"cannot open truth file {source}: {exc.strerror}") from exc
    with fh:
        reader = csv.DictReader(fh)
        names = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        tk = names.get("task") or names.get("task_id")
        lk = names.get("label") or names.get("result") or names.get("answer")
        if tk is None or lk is None:
            raise VotesError(f"{source}: expected columns task,label")
        out = {}
        for r in reader:
            lab = r[lk].strip()
            out[str(r[tk])] = MAPSWIPE_ANSWERS.get(lab, lab) if mapswipe else lab
        return out


def _gold_arrays(gold: Mapping, task_ids: np.ndarray, classes: Sequence[str]
                 ) -> tuple[np.ndarray, np.ndarray]:
    if not gold:
        return np.empty(0, np.int32), np.empty(0, np.int16)
    keys = np.asarray([k for k in gold.keys()])
    if task_ids.dtype.kind in "US" or keys.dtype.kind in "US":
        keys = keys.astype(str)
        ids = task_ids.astype(str)
    else:
        ids = task_ids
    pos = np.searchsorted(ids, keys)
    pos_c = np.minimum(pos, max(len(ids) - 1, 0))
    found = (pos < len(ids)) & (ids[pos_c] == keys) if len(ids) else np.zeros(len(keys), bool)
    cls_index = {c: i for i, c in enumerate(classes)}
    vals = []
    for k, v in gold.items():
        if str(v) not in cls_index:
            raise VotesError(f"gold answer {v!r} for task {k!r} is not a class {list(classes)}")
        vals.append(cls_index[str(v)])
    vals_a = np.asarray(vals, dtype=np.int16)
    return pos_c[found].astype(np.int32), vals_a[found]


def truth_array(truth: Mapping, votes: Votes) -> np.ndarray:
    """Per-task true class index (-1 where unknown or not a class) aligned with ``votes``."""
    out = np.full(votes.n_tasks, -1, dtype=np.int64)
    gt, gc = _gold_arrays({k: v for k, v in truth.items() if str(v) in votes.classes},
                          votes.task_ids, votes.classes)
    out[gt] = gc
    return out
