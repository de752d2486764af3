"""Rich progress bars on stderr for CLI commands (results stay on stdout).

Library functions report ``progress`` through plain callbacks; commands adapt those callbacks to
:class:`Bars`, one bar per key (a stage, a layer...). On a terminal the bars are live; when stderr
is piped, rich prints their final state once when the context exits.
"""

from __future__ import annotations

import time
from typing import Any


class Bars:
    """``with Bars() as bars: bars.update("tiles", done, total)``; silent when ``quiet``.

    ``unit`` is shown after the counts (e.g. "tiles"); ``rate=True`` adds "<n> <unit>/s"
    measured from the first update of each bar that has a total.
    """

    def __init__(self, *, quiet: bool = False, unit: str = "", rate: bool = False,
                 label_width: int = 12) -> None:
        self.quiet, self.unit, self.rate, self.width = quiet, unit, rate, label_width
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}
        self.started: dict[str, float] = {}

    def __enter__(self) -> "Bars":
        if self.quiet:
            return self
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn)

        columns: list[Any] = [TextColumn(f"{{task.description:<{self.width}}}"), BarColumn(),
                              MofNCompleteColumn()]
        if self.unit:
            columns.append(TextColumn(self.unit))
        if self.rate:
            columns.append(TextColumn("{task.fields[rate]}"))
        columns.append(TimeElapsedColumn())
        self.progress = Progress(*columns, console=Console(stderr=True), transient=False)
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)  # type: ignore[arg-type]
            self.progress = None

    def update(self, key: str, done: int, total: int | None,
               description: str | None = None) -> None:
        """Set bar ``key`` to ``done`` of ``total`` (``None``/0: unknown yet, only relabel)."""
        if self.progress is None:
            return
        label = (description or key)[:self.width]
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(label, total=None, rate="")
        fields: dict[str, Any] = {"description": label}
        if total and total > 0:
            fields.update(completed=done, total=total)
            if self.rate:
                t0 = self.started.setdefault(key, time.perf_counter())
                dt = max(1e-6, time.perf_counter() - t0)
                fields["rate"] = f"{done / dt:,.0f} {self.unit}/s".replace(" /s", "/s") \
                    if done else ""
        self.progress.update(self.tasks[key], **fields)

    def finish(self, key: str) -> None:
        """Show bar ``key`` as complete (a stage that ended without a final report)."""
        if self.progress is None or key not in self.tasks:
            return
        task = next(t for t in self.progress.tasks if t.id == self.tasks[key])
        total = task.total if task.total else max(1, int(task.completed))
        self.progress.update(self.tasks[key], completed=total, total=total)

    def keys(self) -> list[str]:
        return list(self.tasks)
