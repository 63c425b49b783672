"""SIGTERM (and SIGHUP) as an interrupt: a scheduler's or `kill`'s stop, or a closed terminal, is handled like
Ctrl-C, so what is done is kept (a training run saves its checkpoint; any other command stops with one ``error:``
line)."""

from __future__ import annotations

import contextlib
import signal


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP) while a ``sigterm_as_interrupt`` block runs; the process then exits with 128 + the
    signal's number (143, 129), as the signal's default would."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__()
        self.name, self.status = signal.Signals(signum).name, 128 + int(signum)


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


def _stops() -> list:
    """The signals handled as a stop: SIGTERM, and SIGHUP unless it is ignored (``nohup`` runs must ignore it)."""
    hup = getattr(signal, "SIGHUP", None)  # not on Windows
    return [signal.SIGTERM, *([hup] if hup is not None and signal.getsignal(hup) == signal.SIG_DFL else [])]


def sigterm_as_interrupt():
    """SIGTERM, and SIGHUP where it would kill the process, raise ``Terminated`` while the block runs (main thread
    only): a terminal closed under a training run without nohup saves its checkpoint, as `kill` does."""
    def handler(signum, frame):
        LAST_STOP[:] = [Terminated(signum)]  # for whoever gets only its effect (typer turns it into exit status 130)
        raise LAST_STOP[0]

    return _handling({s: handler for s in _stops()})


LAST_STOP: list = []  # the last Terminated raised by sigterm_as_interrupt's handler (the CLI clears it at its start)


def shielded():
    """SIGINT and the stop signals are ignored while the block runs: the save a first stop asked for finishes whole (a
    second Ctrl-C used to land inside it and leave the checkpoint and the adapter files at different iterations)."""
    hup = getattr(signal, "SIGHUP", None)
    return _handling({signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN,
                      **({hup: signal.SIG_IGN} if hup is not None else {})})
