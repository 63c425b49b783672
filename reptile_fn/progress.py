"""Progress of long phases (evaluation, pretraining, decoding a data set): a bar with an ETA on a terminal,
a line with the time so far and the ETA every 30 s otherwise, on stderr.

Any module may report through ``task(label, total)``; nothing is printed unless ``enable()`` was called (the CLI
does), so a library call stays quiet.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator

LINE_EVERY = 30.0  # seconds between progress lines off a terminal
_enabled = {"on": False}


def enable(on: bool = True) -> None:
    """Report long phases on stderr (the CLI turns this on)."""
    _enabled["on"] = on


def duration(seconds: float) -> str:
    """A time span a reader takes in at a glance: 42 s, 17 min, 31.1 h (? when not known yet)."""
    if seconds != seconds:  # NaN: nothing done yet
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def note(message: str) -> None:
    """One line on stderr for the user of a command (nothing from a library call, as ``task``)."""
    if _enabled["on"]:
        print(message, file=sys.stderr, flush=True)


class Task:
    """One long phase of ``total`` units: ``advance(n)`` as they are done."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.done, self.t0 = label, max(int(total), 1), 0, time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            self.bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("eta"), TimeRemainingColumn())
            self.id = self.bar.add_task(label, total=self.total)
            self.bar.start()
        self.last = self.t0

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(self.id, completed=self.done)
            return
        now = time.perf_counter()
        if now - self.last >= LINE_EVERY or self.done >= self.total:
            self.last = now
            elapsed = now - self.t0
            eta = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
            print(f"{self.label}: {self.done}/{self.total} ({duration(elapsed)}, eta {duration(eta)})", file=sys.stderr,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class _Quiet:
    def advance(self, n: int = 1) -> None:
        pass


@contextlib.contextmanager
def task(label: str, total: int) -> Iterator[Task | _Quiet]:
    """A ``Task`` while the block runs if reporting is enabled, else an object that ignores ``advance``."""
    if not _enabled["on"]:
        yield _Quiet()
        return
    t = Task(label, total)
    try:
        yield t
    finally:
        t.close()
