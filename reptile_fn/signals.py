"""SIGTERM as an interrupt: a scheduler's or `kill`'s stop is handled like Ctrl-C, so what is done is kept
(a training run saves its checkpoint; any other command stops with one ``error:`` line)."""

from __future__ import annotations

import contextlib
import signal


class Terminated(KeyboardInterrupt):
    """SIGTERM while a ``sigterm_as_interrupt`` block runs; the process then exits with 143, as SIGTERM's default."""


@contextlib.contextmanager
def _handling(handlers: dict):
    """``handlers`` (signal -> handler) while the block runs, the previous ones after it; outside the main thread,
    where signals cannot be set, nothing changes."""
    try:
        previous = {s: signal.signal(s, h) for s, h in handlers.items()}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def sigterm_as_interrupt():
    """SIGTERM raises ``Terminated`` while the block runs (main thread only)."""
    def handler(signum, frame):
        raise Terminated()

    return _handling({signal.SIGTERM: handler})


def shielded():
    """SIGINT and SIGTERM are ignored while the block runs: the save a first stop asked for finishes whole (a
    second Ctrl-C used to land inside it and leave the checkpoint and the adapter files at different iterations)."""
    return _handling({signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN})
