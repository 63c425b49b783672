"""Progress of a long loop: a bar with an ETA on a terminal, plain periodic lines otherwise.

A progress object is a callback of ``run.loop.train``: ``on_log(iteration, record)`` after each
metrics record, ``close()`` at the end.
"""

from __future__ import annotations

import time
from typing import Callable


class NoProgress:
    def on_log(self, iteration: int, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


class Lines:
    """Progress as log lines (off a terminal, or rank 0 of a multi-process run, whose output mlx.launch forwards)."""

    def __init__(self, log: Callable[[str], None], total: int):
        self.log, self.total, self.t0 = log, total, time.perf_counter()

    def on_log(self, iteration: int, record: dict) -> None:
        info = " ".join(f"{k}={v:.3g}" for k, v in record.items() if k != "iteration")
        self.log(f"meta-iteration {iteration}/{self.total} {info} ({time.perf_counter() - self.t0:.0f} s)")

    def close(self) -> None:
        pass


class Bar:
    """A rich progress bar: iterations done of the total, the latest support losses, elapsed time and ETA."""

    def __init__(self, start: int, total: int, label: str = "meta-train"):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.p = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                          TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
        self.task = self.p.add_task(label, total=total, completed=start, info="")
        self.p.start()

    def on_log(self, iteration: int, record: dict) -> None:
        info = " ".join(f"{k}={v:.3g}" for k, v in record.items() if k in ("support_loss", "adapted_loss"))
        self.p.update(self.task, completed=iteration, info=info)

    def close(self) -> None:
        self.p.stop()


def progress(enabled: bool, start: int, total: int):
    """A ``Bar`` when enabled, else nothing."""
    return Bar(start, total) if enabled else NoProgress()
