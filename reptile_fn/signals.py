"""SIGTERM as an interrupt: a scheduler's or `kill`'s stop is handled like Ctrl-C, so what is done is kept
(a training run saves its checkpoint; any other command stops with one ``error:`` line)."""

from __future__ import annotations

import contextlib
import signal


class Terminated(KeyboardInterrupt):
    """SIGTERM while a ``sigterm_as_interrupt`` block runs; the process then exits with 143, as SIGTERM's default."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises ``Terminated`` while the block runs (main thread only; elsewhere signals cannot be set)."""
    def handler(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def shielded():
    """SIGINT and SIGTERM are ignored while the block runs: the save a first stop asked for finishes whole (a
    second Ctrl-C used to land inside it and leave the checkpoint and the adapter files at different iterations)."""
    try:
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
