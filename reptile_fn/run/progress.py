"""Progress of the training loop: a bar with an ETA on a terminal, plain periodic lines otherwise.

The loop's callbacks (``on_step(iteration)``, ``on_log(iteration, record)`` after each metrics record,
``close()``) are ``Bar``, ``Lines`` or ``NoProgress``. Every other long phase reports through
``reptile_fn.progress.task``.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from reptile_fn.progress import LINE_EVERY, duration

class NoProgress:
    def on_log(self, iteration: int, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


class Lines:
    """Progress as log lines (off a terminal, or rank 0 of a multi-process run, whose output mlx.launch forwards),
    at most one per ``every`` seconds, with the time so far and the ETA."""

    def __init__(self, log: Callable[[str], None], total: int, start: int = 0, every: float = 0.0):
        self.log, self.total, self.start, self.every = log, total, start, every
        self.t0 = self.last = time.perf_counter()

    def on_log(self, iteration: int, record: dict) -> None:
        now = time.perf_counter()
        if now - self.last < self.every and iteration < self.total:
            return
        self.last = now
        info = " ".join(f"{k}={v:.3g}" for k, v in record.items() if k != "iteration")
        done = iteration - self.start
        eta = (now - self.t0) / done * (self.total - iteration) if done > 0 else float("nan")
        self.log(f"meta-iteration {iteration}/{self.total} {info} ({duration(now - self.t0)}, eta {duration(eta)})")

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

    def on_step(self, iteration: int) -> None:
        self.p.update(self.task, completed=iteration)  # cheap: rich redraws at its own rate

    def on_log(self, iteration: int, record: dict) -> None:
        info = " ".join(f"{k}={v:.3g}" for k, v in record.items() if k in ("support_loss", "adapted_loss"))
        self.p.update(self.task, completed=iteration, info=info)

    def close(self) -> None:
        self.p.stop()


def progress(enabled: bool, start: int, total: int, log: Callable[[str], None] = print):
    """The training loop's progress: a ``Bar`` on a terminal, ``Lines`` every 30 s off one, nothing if not enabled."""
    if not enabled:
        return NoProgress()
    return Bar(start, total) if sys.stderr.isatty() else Lines(log, total, start, every=LINE_EVERY)
